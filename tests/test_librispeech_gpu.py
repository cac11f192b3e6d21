"""The LibriSpeech recipe on GPUs (issue 17): actors and workers derived from the Ray cluster's GPUs, and
``recipes/librispeech/gpu_smoke.sh``. This machine has no GPU: the cluster tests start a local Ray with
*logical* GPUs, check that labeling and training lay themselves out one actor / one worker per GPU, and
that the run then stops with the "CUDA cannot be used" error of ``asr_kd.devices`` instead of running on
the CPU. A GPU machine runs ``recipes/librispeech/gpu_smoke.sh`` for the real thing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml

from asr_kd.devices import per_gpu
from factories import ROOT, cli_env, make_data, make_teacher, tiny_train_config

NO_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour when CUDA is unusable")


def _config(tmp_path, device="auto"):
    from asr_kd.config import load_config
    from asr_kd.train.config import TrainConfig

    data = make_data(tmp_path / "lab", 3, with_text=True)
    return load_config(tiny_train_config(tmp_path / "conf.yaml", [str(data)]), TrainConfig, [f"train.device={device}"])


def test_one_actor_and_one_worker_per_gpu_of_the_cluster_cpu_defaults_without_gpus(tmp_path):
    """Mutation caught: deriving from the CPU count, or ignoring --actors/--workers when given."""
    from asr_kd.errors import AsrKdError
    from asr_kd.label.layout import actor_layout
    from asr_kd.label.pipeline import LabelOptions
    from asr_kd.train.distributed import CPU_WORKERS, worker_layout

    assert per_gpu(None, 4, 2, "--actors") == (4, "one per 1 GPU of the Ray cluster's 4 GPU(s); --actors not given")
    assert per_gpu(3, 4, 2, "--actors")[0] == 3 and per_gpu(None, 0, 2, "--actors")[0] == 2
    # labeling: one actor per GPU with num_gpus=1; the CPU default without GPUs; fractional GPUs share
    assert actor_layout(LabelOptions(), 2)[:2] == (2, 1.0)
    assert actor_layout(LabelOptions(), 0, 2.0)[:2] == (2, 0.0)  # no GPU: one actor per cluster CPU
    assert actor_layout(LabelOptions(num_gpus_per_actor=0.5), 2)[:2] == (4, 0.5)
    assert actor_layout(LabelOptions(actors=1), 8)[:2] == (1, 1.0)
    with pytest.raises(AsrKdError, match=r"8 actor\(s\) x 1 GPU need 8 GPU\(s\) but the Ray cluster has 2"):
        actor_layout(LabelOptions(actors=8), 2)  # was an actor pool waiting for GPUs that do not exist
    # training: one DDP worker per GPU; one CPU worker without GPUs or with train.device=cpu
    config = _config(tmp_path)
    assert worker_layout(config, None, 2)[:2] == (2, True)
    assert worker_layout(config, None, 0)[:2] == (CPU_WORKERS, False) == (1, False)
    assert worker_layout(config, 3, 0)[:2] == (3, False)
    cpu = _config(tmp_path / "cpu", device="cpu")
    assert worker_layout(cpu, None, 2)[:2] == (1, False)


def test_train_without_workers_on_a_machine_with_gpus_goes_to_ddp_one_worker_per_gpu(tmp_path, monkeypatch):
    """Without --workers and without a Ray to join, the count comes from the GPUs a local Ray would
    register; 2 or more -> train_distributed with the count left to the cluster, else one process.
    (Mutation caught: --workers defaulting to 1 -> one process on a 2-GPU machine.)"""
    import argparse

    import ray

    import asr_kd.devices as devices
    import asr_kd.train.cli as train_cli
    import asr_kd.train.distributed as distributed

    # the session's shared Ray may be up (other tests): the CLI would ask it; this test is about the
    # machine without a running Ray, so that branch is hidden here (never a skip: CI=true fails skips)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    calls = []
    monkeypatch.setattr(distributed, "train_distributed", lambda config, out, workers, **kw: calls.append(workers))
    monkeypatch.setattr(devices, "nvidia_gpus", lambda root="/": ["NVIDIA H100"] * 2)
    monkeypatch.setattr(devices, "local_ray_gpus", lambda: 2)
    data = make_data(tmp_path / "lab", 3, with_text=True)
    conf = tiny_train_config(tmp_path / "conf.yaml", [str(data)])
    args = argparse.Namespace(config=str(conf), out=str(tmp_path / "m"), resume=False, workers=None, address=None,
                              no_progress=True, overrides=["train.device=auto"])
    assert train_cli.run(args) == 0 and calls == [None]  # derived from the cluster in train_distributed
    assert train_cli.local_cluster_gpus(_config(tmp_path / "c2", device="cpu")) == 0  # cpu asked for: no GPUs
    monkeypatch.setattr(devices, "nvidia_gpus", lambda root="/": [])
    monkeypatch.setattr(devices, "local_ray_gpus", lambda: pytest.fail("Ray asked although no GPU is present"))
    assert train_cli.local_cluster_gpus(_config(tmp_path / "c3")) == 0


# A local Ray with 2 logical GPUs (this machine has none), then the two CLI stages without --workers /
# --actors, in one process: the CLI uses the Ray this process is connected to.
_CLUSTER_RUN = textwrap.dedent("""
    import os, sys
    import ray
    from asr_kd.label.ray_runtime import LOOPBACK, _pin_to_loopback
    _pin_to_loopback()
    ray.init(address="local", _node_ip_address=LOOPBACK, num_cpus=3, num_gpus=2, include_dashboard=False,
             logging_level="ERROR", log_to_driver=False)
    from asr_kd.cli import main
    conf, out, teacher, data, store = sys.argv[1:6]
    # label first: a failed Ray Train run leaves its workers holding the GPUs of this shared cluster
    rc_label = main(["label", "--model", teacher, "--data", data, "--out", store, "--no-progress", "--top-k", "2"])
    print("RC_LABEL", rc_label, flush=True)
    rc_train = main(["train", "--config", conf, "--out", out, "--no-progress", "train.device=auto"])
    print("RC_TRAIN", rc_train, flush=True)
""")


@NO_GPU
def test_cluster_with_two_gpus_gets_two_workers_and_two_actors_then_refuses_the_missing_cuda(tmp_path):
    """Mutations caught: --workers/--actors defaults not derived from the cluster (1 worker / 2 CPU actors
    in the layout line); a GPU worker or actor falling back to the CPU (rc 0, no device error)."""
    data = make_data(tmp_path / "lab", 4, with_text=True)
    conf = tiny_train_config(tmp_path / "conf.yaml", [str(data)], max_steps=2)
    teacher = make_teacher(tmp_path / "teacher")
    proc = subprocess.run([sys.executable, "-c", _CLUSTER_RUN, str(conf), str(tmp_path / "model"), str(teacher), str(data),
                           str(tmp_path / "store")], capture_output=True, text=True, timeout=600, cwd=ROOT,
                          env=cli_env(ASR_KD_LOG="INFO"))
    out = proc.stdout + proc.stderr
    assert "RC_TRAIN 2" in out and "RC_LABEL 2" in out, out[-4000:]
    assert ("train: layout 2 Ray Train (DDP) worker(s) x 1 GPU each, device cuda, dtype bfloat16 autocast (float32 "
            "weights) (one per 1 GPU of the Ray cluster's 2 GPU(s); --workers not given)") in out, out[-4000:]
    assert ("label: layout 2 teacher actor(s) x 1 GPU each, device cuda, dtype float32 (one per 1 GPU of the Ray "
            "cluster's 2 GPU(s); --actors not given)") in out, out[-4000:]
    # both stages stop with the device error (the message test_devices checks), naming the cause
    train_err = [line for line in out.splitlines() if line.startswith("asr-kd train: error:")]
    label_err = [line for line in out.splitlines() if line.startswith("asr-kd label: error:")]
    assert train_err and "CUDA cannot be used" in train_err[0] and "no NVIDIA GPU is visible" in train_err[0], out[-4000:]
    assert label_err and "CUDA cannot be used" in label_err[0] and "no NVIDIA GPU is visible" in label_err[0], out[-4000:]
    assert not (tmp_path / "model" / "model.pt").exists()  # nothing trained on the CPU
    assert not (tmp_path / "store").exists()  # nothing labeled on the CPU, no empty store left behind


# ------------------------------------------------------------------------------ gpu_smoke.sh

SMOKE = ROOT / "recipes" / "librispeech" / "gpu_smoke.sh"


def _smoke(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    env = cli_env(PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    return subprocess.run(["bash", str(SMOKE), *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env)


def test_gpu_smoke_script_parses_and_refuses_bad_arguments():
    assert subprocess.run(["bash", "-n", str(SMOKE)]).returncode == 0
    bad = _smoke("--max-stpes", "3")
    assert bad.returncode == 2 and "unknown option --max-stpes" in bad.stderr
    bad = _smoke("--device", "tpu")
    assert bad.returncode == 2 and "--device must be cuda or cpu" in bad.stderr
    bad = _smoke("stray")
    assert bad.returncode == 2 and "unexpected argument stray" in bad.stderr
    assert "--max-steps" in _smoke("--help").stdout


@NO_GPU
def test_gpu_smoke_refuses_a_machine_without_a_gpu_before_any_work(tmp_path):
    """Mutation caught: the device check dropped -> the script builds the tree and trains on the CPU."""
    proc = _smoke("--out", str(tmp_path / "smoke"), "--max-steps", "2", "--hours", "0.01")
    assert proc.returncode == 3, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "gpu_smoke: refusing to run: no usable GPU here" in proc.stderr
    assert "CUDA cannot be used" in proc.stderr and "--device cpu" in proc.stderr  # the cause, and the dry mode
    assert not (tmp_path / "smoke").exists()


@pytest.mark.slow
def test_gpu_smoke_dry_mode_on_the_cpu_trains_the_recipe_teacher_and_reports(tmp_path):
    """The CPU parts of the GPU script end to end: tree in the LibriSpeech layout, prepare, the recipe's
    teacher config (19.5 M params, BPE-500) for 5 steps, the report. ~1.5 min on one loaded core."""
    out = tmp_path / "smoke"
    proc = _smoke("--out", str(out), "--device", "cpu", "--max-steps", "5", "--hours", "0.1", "batch.max_frames=6000",
                  "batch.num_workers=0")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert sorted(p.name for p in (out / "corpus" / "LibriSpeech").iterdir()) == ["dev-clean", "train-clean-100"]
    report = json.loads((out / "smoke.json").read_text())
    assert report["device"] == "cpu" and report["dtype"] == "float32" and report["peak_gpu_mem_gib"] is None
    assert report["steps"] == 5 and report["steps_per_s"] > 0 and report["steady_steps_per_s"] > 0
    assert report["config"] == "recipes/librispeech/conf/teacher.yaml" and 19 < report["params_m"] < 20
    assert report["train_hours"] == pytest.approx(0.1, abs=0.01)
    config = yaml.safe_load((out / "model" / "config.yaml").read_text())
    assert config["model"]["d_model"] == 256 and config["units"]["bpe_vocab_size"] == 500  # the recipe's teacher
    assert config["train"]["max_steps"] == 5 and config["batch"]["max_frames"] == 6000
    md = (out / "smoke.md").read_text()
    assert "| device | cpu |" in md and "| optimizer steps | 5 |" in md and "peak GPU memory" in md


def test_gpu_smoke_tree_repeats_audio_through_hard_links_beyond_the_distinct_part(tmp_path):
    """Hours of training audio without synthesizing them: utterances past ``distinct_hours`` are hard links
    of earlier files, each with its own id and transcript, and prepare librispeech reads them as usual."""
    from data_prep.librispeech import prepare_librispeech
    from tools.gpu_smoke import build_tree

    root = build_tree(tmp_path / "corpus", hours=0.03, distinct_hours=0.01, dev_utts=2)
    flacs = sorted((root / "LibriSpeech" / "train-clean-100").rglob("*.flac"))
    inodes = {f.stat().st_ino for f in flacs}
    assert len(flacs) > len(inodes) >= 2  # some utterances share audio
    results, _ = prepare_librispeech(root / "LibriSpeech", ["train-clean-100", "dev-clean"], tmp_path / "data",
                                     progress=False)
    train = results[0]
    assert train.utterances == len(flacs) and train.seconds >= 0.03 * 3600 and results[1].utterances == 2
