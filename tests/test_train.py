"""Training: a tiny teacher learns, --resume after SIGKILL is exact, the KD path learns, DDP on Ray Train.

One clean synthetic corpus (two espeak-ng voices, no noise, short sentences) is made per module in
a few seconds; the teacher trained on it is shared by the KD test.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from asr_kd.config import validate_config
from asr_kd.evaluate import evaluate
from asr_kd.models.model_dir import load_model_dir
from asr_kd.train.config import TrainConfig
from asr_kd.train.loop import train
from asr_kd.train.metrics import read_progress

PROFILE = {
    "name": "clean-test",
    "sizes": {"train_labeled": 240, "train_unlabeled": 240, "dev": 30, "test": 10},
    "voices": {"labeled": 2, "unlabeled_new": 0, "unlabeled_accent": 0, "test_seen": 1, "test_new": 0,
               "test_unlabeled_accent": 0, "test_unseen_accent": 1},
    "train_families": ["en-us"], "unlabeled_only_families": [], "unseen_families": ["en-gb"],
    "max_words": 6, "augment": {"noise_prob": 0.0, "reverb_prob": 0.0},
}
TINY_TEACHER = {"kind": "conformer", "d_model": 64, "num_layers": 2, "nhead": 2, "d_ffn": 128, "kernel_size": 7,
                "frontend_channels": 8, "dropout": 0.0}
TINY_STUDENT = {"kind": "conformer", "streaming": True, "d_model": 64, "num_layers": 2, "nhead": 2, "d_ffn": 128,
                "kernel_size": 7, "frontend_channels": 8, "chunk_size": 8, "left_chunks": 4, "dropout": 0.0}


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "asr_kd.cli", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=900)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("train")
    (root / "profile.yaml").write_text(yaml.safe_dump(PROFILE))
    proc = run_cli("prepare", "synth", "--profile", str(root / "profile.yaml"), "--out", str(root / "data"), "--jobs", "2")
    assert proc.returncode == 0, proc.stderr[-2000:]
    return root / "data"


def config(corpus: Path, **sections) -> TrainConfig:
    data = {
        "model": TINY_TEACHER,
        "specaug": None,
        "data": {"train": [str(corpus / "train_labeled")], "dev": str(corpus / "dev")},
        "batch": {"max_frames": 4000, "num_workers": 0},
        "optim": {"lr": 3e-3, "warmup_steps": 30},
        "train": {"max_epochs": 25, "checkpoint_every_steps": 1000, "log_every_steps": 10},
    }
    for key, value in sections.items():
        data[key] = {**(data.get(key) or {}), **value} if isinstance(value, dict) and key != "model" else value
    return validate_config(data, TrainConfig, source="test")


def untrained_copy(model_dir: Path, out: Path, seed: int = 0) -> Path:
    """The same model dir with freshly initialized weights (the 'untrained self')."""
    from asr_kd.models import build_model
    from asr_kd.models.model_dir import save_model_dir

    loaded = load_model_dir(model_dir)
    torch.manual_seed(seed)
    fresh = build_model(loaded.model_config, loaded.tokenizer.vocab_size)
    save_model_dir(out, fresh, loaded.model_config, loaded.tokenizer, loaded.cmvn, loaded.fbank_config)
    return out


@pytest.fixture(scope="module")
def teacher(corpus, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("teacher") / "teacher"
    result = train(config(corpus), out, progress=False)
    assert result.steps > 0
    return out


def test_teacher_learns_far_below_its_untrained_self(teacher, corpus, tmp_path):
    trained = evaluate(str(teacher), str(corpus / "dev"), str(tmp_path / "eval_trained"), progress=False)
    fresh = evaluate(str(untrained_copy(teacher, tmp_path / "fresh")), str(corpus / "dev"), str(tmp_path / "eval_fresh"),
                     progress=False)
    assert fresh["wer"] >= 95.0
    assert trained["wer"] <= fresh["wer"] - 20.0, (trained["wer"], fresh["wer"])
    assert trained["cer"] <= 50.0
    for name in ("model.yaml", "tokens.txt", "cmvn.json", "model.pt", "fingerprint.txt", "config.yaml", "env.json",
                 "metrics.csv", "training_curve.png"):
        assert (teacher / name).is_file(), name
    assert (tmp_path / "eval_trained" / "hyp.trn").read_text().count("(") == 30


def test_kd_path_alone_learns_from_soft_targets(teacher, corpus, tmp_path):
    """A streaming student trained ONLY on the teacher's soft targets (no transcripts at all)."""
    from asr_kd.label.pipeline import LabelOptions, label_local

    from asr_kd.data.datadir import combine_data_dirs, read_data_dir, write_data_dir

    # all training audio, transcripts dropped: the student sees only the teacher's soft targets
    audio_only = combine_data_dirs([read_data_dir(corpus / "train_labeled"), read_data_dir(corpus / "train_unlabeled")])
    audio_only.text = None
    write_data_dir(audio_only, tmp_path / "audio_only")
    store = tmp_path / "store"
    label_local([str(teacher)], str(tmp_path / "audio_only"), str(store), LabelOptions(top_k=4, progress=False))
    cfg = config(corpus, model=TINY_STUDENT,
                 data={"train": [], "unlabeled": [str(tmp_path / "audio_only")], "dev": str(corpus / "dev")},
                 units={"from_model": str(teacher)},
                 kd={"store": str(store), "ctc_weight": 0.0, "target_delay": 0})
    student = tmp_path / "student"
    train(cfg, student, progress=False)
    kd = evaluate(str(student), str(corpus / "dev"), str(tmp_path / "eval_kd"), progress=False)
    fresh = evaluate(str(untrained_copy(student, tmp_path / "fresh")), str(corpus / "dev"), str(tmp_path / "eval_fresh"),
                     progress=False)
    # seeded run: kd 80.8 % WER / 40.3 % CER vs untrained 100 % / 98 % (teacher: ~72 % / ~36 %)
    assert kd["cer"] <= fresh["cer"] - 40.0, (kd["cer"], fresh["cer"])
    assert kd["wer"] <= fresh["wer"] - 15.0, (kd["wer"], fresh["wer"])


def _weights(model_dir: Path) -> dict[str, torch.Tensor]:
    latest = (model_dir / "checkpoints" / "latest").read_text().strip()
    return torch.load(model_dir / "checkpoints" / latest, weights_only=True)["model"]


def test_resume_after_sigkill_reaches_the_same_weights(corpus, tmp_path):
    """Kill -9 after step 5 (checkpoint at step 4), resume, and compare with an uninterrupted run.

    Tolerance: exact equality. Same data order (plan from seed+epoch), RNG states (dropout and
    SpecAugment) and optimizer/scheduler state are restored, and CPU kernels are deterministic.
    """
    conf = tmp_path / "c.yaml"
    cfg = config(corpus, train={"max_epochs": 3, "max_steps": 9, "checkpoint_every_steps": 2, "log_every_steps": 1},
                 specaug={"freq_masks": 2, "time_masks": 2}, model={**TINY_TEACHER, "dropout": 0.1})
    conf.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    full = run_cli("train", "--config", str(conf), "--out", str(tmp_path / "full"), "--no-progress")
    assert full.returncode == 0, full.stderr[-2000:]
    killed = run_cli("train", "--config", str(conf), "--out", str(tmp_path / "resumed"), "--no-progress",
                     env={"ASR_KD_TEST_KILL_AFTER_STEP": "5"})
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert not (tmp_path / "resumed" / "model.pt").exists()
    again = run_cli("train", "--config", str(conf), "--out", str(tmp_path / "resumed"), "--no-progress")
    assert again.returncode == 2 and "--resume" in again.stderr  # refuses to overwrite checkpoints silently
    resumed = run_cli("train", "--config", str(conf), "--out", str(tmp_path / "resumed"), "--resume", "--no-progress")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed from step-00000004.pt" in resumed.stderr
    a, b = _weights(tmp_path / "full"), _weights(tmp_path / "resumed")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert load_model_dir(tmp_path / "full").fingerprint == load_model_dir(tmp_path / "resumed").fingerprint


def test_two_ray_train_workers_write_the_same_results_format(corpus, tmp_path, ray_cluster):
    from asr_kd.train.distributed import train_distributed

    cfg = config(corpus, train={"max_epochs": 2, "checkpoint_every_steps": 5, "log_every_steps": 2})
    out = tmp_path / "ddp"
    train_distributed(cfg, str(out), workers=2, progress=False)
    for name in ("model.pt", "fingerprint.txt", "metrics.csv", "config.yaml", "training_curve.png"):
        assert (out / name).is_file(), name
    assert (out / "checkpoints" / "latest").exists()
    env = __import__("json").loads((out / "env.json").read_text())
    assert env["world_size"] == 2
    # the driver's progress bar follows rank 0's progress.json: it must end at the last step
    progress = read_progress(out)
    assert progress["step"] == progress["total_steps"] > 0
    assert progress["dev_epoch"] == 2 and 0 <= progress["dev_wer"]
    assert progress["summary"].startswith(f"trained {out}: ") and progress["summary"].endswith("2 workers")
    single = train(cfg, tmp_path / "single", progress=False)
    rows = (out / "metrics.csv").read_text().splitlines()
    steps = [int(r.split(",")[2]) for r in rows[1:] if r.startswith("train")]
    # batch.max_frames is per optimizer step: each worker takes half-size batches, so two workers make
    # about as many steps as one (batches are cut from a different length grid, hence the tolerance)
    assert abs(max(steps) - single.steps) <= max(2, single.steps // 5)
    load_model_dir(out)


def test_progress_watcher_shows_each_dev_score_once(tmp_path, capsys):
    from asr_kd.train.metrics import ProgressWatcher, write_progress

    write_progress(tmp_path, step=0, total_steps=20, epoch=1)
    with ProgressWatcher(tmp_path, desc="train x", interval_s=0.02):
        for step in range(1, 21):
            write_progress(tmp_path, step=step, loss=1.0 / step, epoch=1 + step // 10)
            if step % 10 == 0:
                write_progress(tmp_path, dev_epoch=step // 10, dev_step=step, dev_wer=50.0 - step, dev_cer=20.0)
                time.sleep(0.3)  # many polls: the line must still be printed once
            time.sleep(0.01)
        time.sleep(0.1)
    captured = capsys.readouterr()
    err = captured.out + captured.err  # dev lines go through tqdm.write (stdout), the bar to stderr
    assert err.count("epoch 1: step 10, dev WER 40.00% CER 20.00%") == 1
    assert err.count("epoch 2: step 20, dev WER 30.00% CER 20.00%") == 1
    assert "20/20" in err
