"""Every recipe runs end to end on tiny data (icefall's yesno / SpeechBrain's --debug idea).

The recipes are shell scripts that only call the CLI; these tests run all their stages with tiny
model configs to prove the wiring: stage order, inputs, .done markers, resume, report.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import yaml

ROOT = Path(__file__).resolve().parents[1]
TINY_MODEL = {"kind": "conformer", "d_model": 32, "num_layers": 1, "nhead": 2, "d_ffn": 64, "kernel_size": 7,
              "frontend_channels": 8, "dropout": 0.0}
TINY_STREAMING = {**TINY_MODEL, "streaming": True, "chunk_size": 4, "left_chunks": 2}


def tiny_confs(src: Path, dst: Path, epochs: int = 1) -> Path:
    """Copies of a recipe's configs with tiny models and one short epoch (units/data keys kept)."""
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.glob("*.yaml"):
        conf = yaml.safe_load(f.read_text())
        conf["model"] = TINY_MODEL if f.stem == "teacher" else TINY_STREAMING
        conf["units"] = {**conf.get("units", {}), "kind": "char"}
        conf["units"].pop("bpe_vocab_size", None)
        conf["batch"] = {"max_frames": 6000, "num_workers": 0}
        conf["optim"] = {"lr": 1e-3, "warmup_steps": 2}
        conf["train"] = {"max_epochs": epochs, "checkpoint_every_steps": 50, "final": "average"}
        conf["specaug"] = None
        (dst / f.name).write_text(yaml.safe_dump(conf))
    return dst


def run(script: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PATH": f"{Path(os.sys.executable).parent}:{os.environ['PATH']}"}
    return subprocess.run(["bash", str(ROOT / script), *args], capture_output=True, text=True, env=env, timeout=1200, cwd=cwd)


def test_synth_recipe_runs_every_stage_on_the_tiny_profile(tmp_path):
    confs = tiny_confs(ROOT / "recipes" / "synth" / "conf", tmp_path / "conf")
    # --nj 2: the demo's layout — the teacher on 2 Ray Train workers, labeling on 2 actors, the two
    # students side by side
    args = ["--profile", "tiny", "--data", str(tmp_path / "data"), "--exp", str(tmp_path / "exp"), "--conf", str(confs),
            "--nj", "2"]
    proc = run("recipes/synth/run.sh", *args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    exp = tmp_path / "exp"
    results = json.loads((exp / "results.json").read_text())
    assert set(results) == {"teacher", "baseline", "kd"}
    for name, r in results.items():
        assert r["test_wer"] is not None and r["params"] > 0, name
    assert results["kd"]["latency_ms"] == pytest.approx(4 * 40 + 15)
    assert (exp / "report.md").read_text().startswith("# Results")
    assert set(results["kd"]["test_wer_by_condition"]) <= {"seen_voice", "new_voice", "unlabeled_accent", "unseen_accent"}
    assert results["kd"]["test_wer_by_condition"], "the synthetic test set labels its speakers"
    for stage in ("prepare", "teacher", "eval_teacher", "label", "baseline", "kd", "eval"):
        assert (exp / ".done" / stage).exists(), stage
    commands = (exp / "commands.log").read_text()
    assert "asr-kd label" in commands and "asr-kd train" in commands
    assert "--workers 2" in commands and "2 workers" in proc.stdout  # the DDP driver prints the summary
    assert "trained " in (exp / "baseline.log").read_text()  # the baseline trained beside the KD student
    # a rerun skips every finished stage
    again = run("recipes/synth/run.sh", *args, "--stop-stage", "6", cwd=tmp_path)
    assert again.returncode == 0 and again.stderr.count("skipping") == 7

    # the noisy-student round continues the finished run: round-2 teacher, its store, its student
    r2 = run("recipes/synth/run.sh", *args, "--rounds", "2", cwd=tmp_path)
    assert r2.returncode == 0, r2.stdout[-3000:] + r2.stderr[-3000:]
    assert r2.stderr.count("skipping") == 7  # stages 0-6 were done
    for stage in ("teacher_r2", "label_r2", "kd_r2"):
        assert (exp / ".done" / stage).exists(), stage
    results = json.loads((exp / "results.json").read_text())
    assert set(results) == {"teacher", "baseline", "kd", "teacher_r2", "kd_r2"}
    teacher_r2 = yaml.safe_load((exp / "teacher_r2" / "config.yaml").read_text())
    assert teacher_r2["kd"]["store"] == str(exp / "targets") and teacher_r2["specaug"] is not None
    assert json.loads((exp / "targets_r2" / "meta.json").read_text())["teacher_fingerprints"] == [
        (exp / "teacher_r2" / "fingerprint.txt").read_text().strip()]

    # the ablation script trains and scores its variants against the run's teacher and store
    abl = run("recipes/synth/ablation.sh", "--data", str(tmp_path / "data"), "--exp", str(exp), "--conf", str(confs),
              "--only", "kd_ref kd_last", cwd=tmp_path)
    assert abl.returncode == 0, abl.stdout[-3000:] + abl.stderr[-3000:]
    table = (exp / "ablation" / "ablation.md").read_text()
    assert "| kd_ref |" in table and "| kd_last |" in table and "train.final=last" in table
    # the reference row is the recipe's own KD student, scored by run.sh, not a retrained copy
    assert (exp / "ablation" / "kd_ref").resolve() == (exp / "kd").resolve()
    assert "% rel. |" in table.split("| kd_last |")[1].splitlines()[0]


def test_synth_recipe_stage_checks_its_inputs(tmp_path):
    proc = run("recipes/synth/run.sh", "--stage", "1", "--stop-stage", "1", "--data", str(tmp_path / "nodata"),
               "--exp", str(tmp_path / "exp"), cwd=tmp_path)
    assert proc.returncode == 1 and "is missing — run the earlier stage first" in proc.stderr
    bad = run("recipes/synth/run.sh", "--stgae", "1", cwd=tmp_path)
    assert bad.returncode == 2 and "unknown option --stgae" in bad.stderr


def _librispeech_tree(root: Path) -> Path:
    """A tiny LibriSpeech/ tree with every subset the recipe uses (espeak-ng speech as flac)."""
    sets = ["train-clean-100", "train-clean-360", "train-other-500", "dev-clean", "dev-other", "test-clean", "test-other"]
    sentences = ["TURN ON THE LIGHTS", "PLAY SOME MUSIC", "WHAT TIME IS IT", "CALL MY MOTHER", "OPEN THE DOOR",
                 "SET A TIMER"]
    tmp = root / "tmp.wav"
    for s_i, subset in enumerate(sets):
        for spk in (19 + s_i * 10, 20 + s_i * 10):
            chap = 100 + s_i
            d = root / "LibriSpeech" / subset / str(spk) / str(chap)
            d.mkdir(parents=True)
            lines = []
            for i, text in enumerate(sentences[: 3 if subset.startswith("train") else 2]):
                utt = f"{spk}-{chap}-{i:04d}"
                subprocess.run(["espeak-ng", "-w", str(tmp), text.lower()], check=True)
                wave, sr = sf.read(tmp, dtype="float32")
                n = int(len(wave) * 16000 / sr)
                wave16 = np.interp(np.linspace(0, len(wave) - 1, n), np.arange(len(wave)), wave).astype(np.float32)
                sf.write(d / f"{utt}.flac", wave16, 16000, subtype="PCM_16")
                lines.append(f"{utt} {text}")
            (d / f"{spk}-{chap}.trans.txt").write_text("\n".join(lines) + "\n")
    tmp.unlink()
    return root


def test_librispeech_recipe_wiring_on_a_tiny_tree(tmp_path):
    corpus = _librispeech_tree(tmp_path / "corpus")
    confs = tiny_confs(ROOT / "recipes" / "librispeech" / "conf", tmp_path / "conf")
    proc = run("recipes/librispeech/run.sh", "--corpus-dir", str(corpus), "--data", str(tmp_path / "data"),
               "--exp", str(tmp_path / "exp"), "--conf", str(confs), "--nj", "1", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = tmp_path / "data"
    assert not (data / "train_clean_360" / "text").exists() and (data / "train_clean_360" / "text.ref").exists()
    results = json.loads((tmp_path / "exp" / "results.json").read_text())
    assert set(results) == {"teacher", "baseline", "kd"}
    store_index = (tmp_path / "exp" / "targets" / "index.tsv").read_text().splitlines()
    assert len(store_index) == 3 * 2 * 3  # every utterance of the three training subsets, labeled once
    # the teacher trained on train-clean-100 speed-perturbed 3 ways (Kaldi's sp ids), the students did not
    sp = sorted((data / "train_clean_100_sp" / "utt2spk").read_text().split()[::2])
    base = sorted((data / "train_clean_100" / "utt2spk").read_text().split()[::2])
    assert sp == sorted(f"sp{f}-{u}" for f in ("0.9", "1.0", "1.1") for u in base)
    teacher_conf = (tmp_path / "exp" / "teacher" / "config.yaml").read_text()
    assert "train_clean_100_sp" in teacher_conf and "train_clean_100_sp" not in (tmp_path / "exp" / "kd" / "config.yaml").read_text()
    # --workers / --actors not passed: the stages derive them from the cluster's GPUs (none here: the CPU
    # defaults) and say so before they start
    commands = (tmp_path / "exp" / "commands.log").read_text()
    assert "--workers" not in commands and "--actors" not in commands
    assert "label: layout 2 teacher actor(s) on CPU, device cpu, dtype float32 (--actors not given and the Ray " \
           "cluster has no GPU: the CPU default)" in proc.stderr, proc.stderr[-3000:]
    assert "train: layout 1 process on CPU, device cpu, dtype float32 (--workers not given, no GPU here)" in proc.stderr
