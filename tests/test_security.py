"""Security: no code runs from data files. Pickle payloads in model dirs and checkpoints are refused
(``weights_only=True``), YAML is loaded safely, wav.scp commands need an explicit opt-in, and Ray starts
without its dashboard (and without usage reporting)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from asr_kd.cli import main as cli_main
from asr_kd.config import load_config
from asr_kd.data.datadir import read_data_dir
from asr_kd.errors import ConfigError, DataDirError, ModelDirError
from asr_kd.models.model_dir import FINGERPRINT, MODEL_YAML, WEIGHTS, compute_fingerprint, load_model_dir
from asr_kd.train.checkpoint import load_checkpoint
from asr_kd.train.config import TrainConfig
from asr_kd.train.loop import Trainer
from factories import asr_kd, cli_env, make_data, make_teacher, tiny_train_config

pytestmark = pytest.mark.timeout(180)


class Payload:
    """Unpickling this creates the directory ``target``: proof that code ran."""

    def __init__(self, target: Path):
        self.target = str(target)

    def __reduce__(self):
        return (os.mkdir, (self.target,))


def write_payload(path: Path, marker: Path, wrap_in_state: bool = True) -> Path:
    obj = {"model": {"w": torch.zeros(2)}, "evil": Payload(marker)} if wrap_in_state else Payload(marker)
    torch.save(obj, path)
    return path


def test_payload_is_live_when_loaded_unsafely(tmp_path):
    """Control: the crafted file really runs code under a full unpickle, so the refusals below mean something."""
    marker = tmp_path / "pwned"
    path = write_payload(tmp_path / "evil.pt", marker)
    torch.load(path, weights_only=False)  # the only unsafe load in the project: here, on our own test file
    assert marker.is_dir()


def test_model_dir_with_pickle_payload_is_refused(tmp_path):
    model_dir = make_teacher(tmp_path / "teacher")
    load_model_dir(model_dir)  # a good one loads
    marker = tmp_path / "pwned"
    write_payload(model_dir / WEIGHTS, marker)
    # re-sign the dir so that the fingerprint check passes and the weights_only load is what must refuse
    (model_dir / FINGERPRINT).write_text(
        compute_fingerprint((model_dir / WEIGHTS).read_bytes(), (model_dir / MODEL_YAML).read_bytes()) + "\n")
    with pytest.raises(ModelDirError, match="refused") as info:
        load_model_dir(model_dir)
    assert str(model_dir / WEIGHTS) in str(info.value)
    assert not marker.exists(), "the pickle payload ran"


def test_model_yaml_with_python_tag_is_refused(tmp_path):
    model_dir = make_teacher(tmp_path / "teacher")
    marker = tmp_path / "pwned"
    text = (model_dir / MODEL_YAML).read_text()
    (model_dir / MODEL_YAML).write_text(text + f"evil: !!python/object/apply:os.mkdir [{str(marker)!r}]\n")
    (model_dir / FINGERPRINT).write_text(
        compute_fingerprint((model_dir / WEIGHTS).read_bytes(), (model_dir / MODEL_YAML).read_bytes()) + "\n")
    with pytest.raises(ModelDirError, match="model.yaml"):
        load_model_dir(model_dir)
    assert not marker.exists()


def test_checkpoint_with_pickle_payload_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = write_payload(tmp_path / "step-00000002.pt", marker)
    with pytest.raises(ModelDirError, match="cannot load checkpoint") as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)
    assert not marker.exists()


def test_resume_from_a_pickle_payload_checkpoint_is_refused(tmp_path):
    data = make_data(tmp_path / "lab", 6, with_text=True)
    conf = tiny_train_config(tmp_path / "conf.yaml", [str(data)], max_steps=4)
    out = tmp_path / "model"
    ckpts = out / "checkpoints"
    ckpts.mkdir(parents=True)
    marker = tmp_path / "pwned"
    evil = write_payload(ckpts / "step-00000002.pt", marker)
    (ckpts / "latest").write_text(evil.name + "\n")
    with pytest.raises(ModelDirError, match="step-00000002.pt"):
        Trainer(load_config(conf, TrainConfig), out, resume=True, progress=False).run()
    assert not marker.exists()
    # the command line path: exit status 2 and a message naming the file
    proc = asr_kd("train", "--config", str(conf), "--out", str(out), "--resume", "--no-progress")
    assert proc.returncode == 2 and "step-00000002.pt" in proc.stderr and "cannot load checkpoint" in proc.stderr
    assert not marker.exists()


def test_train_config_with_python_tag_is_refused(tmp_path):
    data = make_data(tmp_path / "lab", 2, with_text=True)
    conf = tiny_train_config(tmp_path / "conf.yaml", [str(data)])
    marker = tmp_path / "pwned"
    conf.write_text(conf.read_text() + f"evil: !!python/object/apply:os.mkdir [{str(marker)!r}]\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(conf, TrainConfig)
    proc = asr_kd("train", "--config", str(conf), "--out", str(tmp_path / "m"), "--no-progress")
    assert proc.returncode == 2 and str(conf) in proc.stderr
    assert not marker.exists()
    # a plain unknown key is refused too (by name), so a typo never passes silently
    conf2 = tiny_train_config(tmp_path / "conf2.yaml", [str(data)], extra={"optim.learning_rate": 1.0})
    with pytest.raises(ConfigError, match="learning_rate"):
        load_config(conf2, TrainConfig)


# --------------------------------------------------------------------------------------- wav.scp pipes
@pytest.fixture()
def pipe_data(tmp_path):
    """A labeled data dir whose one wav.scp entry is a shell pipeline that would create ``pwned``."""
    data = make_data(tmp_path / "corpus", 3, with_text=True, min_s=1.2)  # long enough for CTC to align
    scp = (data / "wav.scp").read_text().splitlines()
    utt, path = scp[0].split(" ", 1)
    marker = tmp_path / "pwned"
    scp[0] = f"{utt} mkdir {marker} && cat {path} |"
    (data / "wav.scp").write_text("\n".join(scp) + "\n")
    return data, marker, utt


def test_read_data_dir_refuses_pipes_unless_allowed(pipe_data):
    data, marker, utt = pipe_data
    with pytest.raises(DataDirError) as info:
        read_data_dir(data)
    msg = str(info.value)
    assert "wav.scp" in msg and ":1" in msg and "pipe command" in msg and "--allow-pipes" in msg
    assert read_data_dir(data, allow_pipes=True).wav_scp[utt].endswith("|")
    assert not marker.exists()  # reading a data dir never runs its commands


def test_label_and_evaluate_refuse_pipes_with_a_clear_message(pipe_data, tmp_path):
    data, marker, utt = pipe_data
    teacher = make_teacher(tmp_path / "teacher")
    for args in (["label", "--model", str(teacher), "--data", str(data), "--out", str(tmp_path / "store"), "--local",
                  "--no-progress"],
                 ["evaluate", "--model", str(teacher), "--data", str(data), "--out", str(tmp_path / "eval"),
                  "--no-progress"]):
        proc = asr_kd(*args)
        assert proc.returncode == 2, (args[0], proc.stderr[-2000:])
        assert "pipe command" in proc.stderr and "--allow-pipes" in proc.stderr and "wav.scp" in proc.stderr, proc.stderr
        assert not marker.exists()
    # opting in runs the command (Kaldi semantics) and labels that utterance like the others
    assert cli_main(["label", "--model", str(teacher), "--data", str(data), "--out", str(tmp_path / "store2"),
                     "--local", "--no-progress", "--allow-pipes", "--top-k", "2"]) == 0
    assert marker.is_dir()
    assert utt in (tmp_path / "store2" / "index.tsv").read_text()


def test_train_refuses_a_pipe_in_wav_scp_labeled_or_unlabeled(pipe_data, tmp_path):
    """``asr-kd train`` with a pipe command in a training data dir (labeled, or unlabeled with a store) exits
    2 naming wav.scp and --allow-pipes, and the command never runs. (Mutation caught: UtteranceTable
    reading with allow_pipes=True -> the command runs, marker created.)"""
    data, marker, utt = pipe_data
    conf = tiny_train_config(tmp_path / "ctc.yaml", [str(data)], max_steps=1)
    proc = asr_kd("train", "--config", str(conf), "--out", str(tmp_path / "m"), "--no-progress")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "pipe command" in proc.stderr and "--allow-pipes" in proc.stderr and "wav.scp" in proc.stderr, proc.stderr
    assert not marker.exists()
    # the same dir as unlabeled audio of a KD run (the store is never reached: the data dir is refused first)
    teacher = make_teacher(tmp_path / "teacher")
    labeled = make_data(tmp_path / "lab", 3, with_text=True, prefix="l")
    conf = tiny_train_config(tmp_path / "kd.yaml", [str(labeled)], unlabeled=[str(data)], store=str(tmp_path / "no-store"),
                             from_model=str(teacher), max_steps=1)
    proc = asr_kd("train", "--config", str(conf), "--out", str(tmp_path / "m2"), "--no-progress")
    assert proc.returncode == 2 and "pipe command" in proc.stderr, proc.stderr[-2000:]
    assert not marker.exists()
    # data.allow_pipes: true is the opt-in (Kaldi semantics): reading the dir then runs the command
    cfg = load_config(tiny_train_config(tmp_path / "ok.yaml", [str(data)], max_steps=1, extra={"data.allow_pipes": True}),
                      TrainConfig)
    Trainer(cfg, tmp_path / "m3", progress=False).run()
    assert marker.is_dir()


# --------------------------------------------------------------------------------------- Ray
RAY_PROBE = r"""
import json, os, sys
import ray
import psutil  # Ray ships psutil in its thirdparty_files, on sys.path once ray is imported
from asr_kd.label.ray_runtime import init_ray
captured = {}
real_init = ray.init
def recording_init(*args, **kwargs):
    captured["kwargs"] = dict(kwargs)
    captured["context"] = real_init(*args, num_cpus=1, **kwargs)
    return captured["context"]
ray.init = recording_init
assert init_ray(None) is True
from ray._common.usage import usage_lib
session = ray._private.worker._global_node.get_session_dir_path()
listening, dashboards = [], []
for p in psutil.process_iter(["pid", "cmdline"]):
    cmd = " ".join(p.info["cmdline"] or [])
    if session not in cmd and p.pid != os.getpid():
        continue
    if "dashboard/dashboard.py" in cmd and p.pid != os.getpid():
        dashboards.append(cmd)
    try:
        listening += [c.laddr.port for c in p.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN]
    except psutil.Error:
        pass
print(json.dumps({"include_dashboard": captured["kwargs"].get("include_dashboard"),
                  "dashboard_url": captured["context"].dashboard_url, "listening": listening,
                  "dashboards": dashboards, "usage_stats": usage_lib.usage_stats_enabled()}))
ray.shutdown()
"""


def test_ray_starts_without_dashboard_or_usage_reporting():
    env = cli_env()
    env.pop("RAY_USAGE_STATS_ENABLED", None)
    proc = subprocess.run([sys.executable, "-c", RAY_PROBE], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    assert info["include_dashboard"] is False
    assert not info["dashboard_url"]
    assert 8265 not in info["listening"] and info["listening"], info  # Ray's own ports listen; the dashboard's not
    # Ray still runs its head process in --minimal mode (GCS-backed state, no HTTP frontend)
    assert all("--minimal" in d and "--disable-frontend" in d for d in info["dashboards"]), info["dashboards"]
    assert info["usage_stats"] is False
