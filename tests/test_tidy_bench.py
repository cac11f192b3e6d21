"""tools/bench: every benchmark imports and answers --help; the shared tail (scratch dir, print, write
its BENCHMARKS.md section) behaves. The benchmarks themselves are not run here."""

from __future__ import annotations

import importlib
import os
import re
import shutil
import subprocess
import sys

import pytest

from tools.bench import common

BENCHES = ["label_input", "label_plan", "label_precision", "label_resume", "label_throughput", "storage", "store_v2", "student", "train_input", "train_parallel"]


@pytest.mark.parametrize("name", BENCHES)
def test_bench_imports_and_help_works(name, monkeypatch, capsys):
    module = importlib.import_module(f"tools.bench.{name}")
    monkeypatch.setattr(sys, "argv", [f"{name}.py", "--help"])
    with pytest.raises(SystemExit) as exc:
        module.main()
    assert exc.value.code == 0
    out = capsys.readouterr().out
    # (at the start of a line: a Ray driver thread of an earlier test may print in between, e.g. a dead worker)
    assert re.search(r"(?m)^usage: ", out), out[:1000]
    if name != "train_parallel":  # it always writes its section and keeps no scratch dir
        assert "--work" in out and "--no-write" in out


def test_scratch_dir_removes_a_temporary_dir_even_on_error_and_keeps_a_given_one(tmp_path, monkeypatch):
    monkeypatch.setattr(common.tempfile, "tempdir", str(tmp_path))
    with pytest.raises(RuntimeError):
        with common.scratch_dir(None, "bench-x-") as work:
            (work / "f").write_text("x")
            raise RuntimeError("benchmark failed")
    assert not work.exists() and work.parent == tmp_path
    kept = tmp_path / "keep" / "me"
    with common.scratch_dir(str(kept), "bench-x-") as work:
        (work / "f").write_text("x")
    assert (kept / "f").read_text() == "x"


def test_publish_prints_and_replaces_only_its_section(tmp_path, monkeypatch, capsys):
    bench_md = tmp_path / "BENCHMARKS.md"
    monkeypatch.setattr(common, "BENCHMARKS", bench_md)
    common.publish("a", "Section A", ["line 1", "line 2"], write=False)
    assert capsys.readouterr().out == "line 1\nline 2\n" and not bench_md.exists()

    common.publish("a", "Section A", ["first"])
    common.publish("b", "Section B", "other")
    common.publish("a", "Section A", ["second"], also=[tmp_path / "fig.png"])
    out = capsys.readouterr().out
    assert out.splitlines()[-1] == f"wrote {bench_md} and {tmp_path / 'fig.png'}"
    text = bench_md.read_text()
    assert text.startswith("# Benchmarks")
    assert "second" in text and "first" not in text and "other" in text
    assert text.count("<!-- bench:a -->") == 1 and text.index("bench:a") < text.index("bench:b")


def test_time_store_reads_counts_every_frame_of_the_store(tmp_path):
    """The shared read-speed helper (train_input, store_v2) reads every utterance both ways."""
    import shutil
    from pathlib import Path

    from asr_kd.targets.reader import StoreReader

    # a copy: opening a writable store caches its compact index there, the golden store stays unchanged
    reader = StoreReader(shutil.copytree(Path(__file__).parent / "data" / "store_v1", tmp_path / "store_v1"))
    calls = []
    real = reader.get_sparse
    reader.get_sparse = lambda utt: calls.append(utt) or real(utt)
    got = common.time_store_reads(reader, rounds=2)
    assert sorted(calls) == sorted(reader.utt_ids * 2)  # every utterance, once per round, by id
    assert got["frames"] == reader.total_frames and got["utts"] == len(reader) and got["bytes"] == reader.payload_bytes()
    assert got["random_fps"] > 0 and got["seq_fps"] > 0


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="this machine has an NVIDIA driver: the script would run")
def test_gpu_label_script_refuses_clearly_without_a_gpu(tmp_path):
    """tools/bench/gpu_label.sh is the prepared GPU measurement: without a GPU it stops at once, exit 2,
    saying what it needs, before writing anything."""
    before = common.BENCHMARKS.read_text()
    proc = subprocess.run(["bash", str(common.ROOT / "tools" / "bench" / "gpu_label.sh")], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"})
    assert proc.returncode == 2
    assert "needs a machine with an NVIDIA GPU" in proc.stderr
    assert common.BENCHMARKS.read_text() == before
    bad = subprocess.run(["bash", str(common.ROOT / "tools" / "bench" / "gpu_label.sh"), "--gpus", "9"], capture_output=True,
                         text=True, timeout=60)
    assert bad.returncode == 2 and "unknown argument --gpus" in bad.stderr



def test_label_throughput_phase_shares_are_cpu_seconds_per_actor_second_of_the_window(tmp_path):
    """Two actors, each logging cumulative CPU seconds per phase after every call: the shares over a window are
    the increments inside it (interpolated between calls) over actors x window, phase by phase."""
    from asr_kd.label.worker import TeacherActor
    from tools.bench.label_throughput import phase_shares

    assert TeacherActor.PHASES == ("forward", "fbank", "read", "call", "process")
    lines = []
    for pid, rate in ((11, 1.0), (22, 0.5)):  # actor 22 spends half as much per second in every phase
        for t in range(0, 11, 2):  # a call ends every 2 s
            f, fb, rd, call = 0.6 * rate * t, 0.1 * rate * t, 0.05 * rate * t, 0.8 * rate * t
            lines.append(f"{pid} {100 + t} {f} {fb} {rd} {call} {0.9 * rate * t}")
    (tmp_path / "f.log").write_text("\n".join(lines) + "\n")
    shares = phase_shares(tmp_path / "f.log", 103.0, 107.0, actors=2)  # a window between calls
    for phase, per_second in (("forward", 0.6), ("fbank", 0.1), ("read", 0.05), ("call", 0.8), ("process", 0.9)):
        assert shares[phase] == pytest.approx(per_second * 1.5 / 2)
