"""Shared by the benchmarks: machine description, scratch dir, figures and writing a section of
BENCHMARKS.md.

Each benchmark owns one section, delimited by ``<!-- bench:NAME -->`` ... ``<!-- /bench:NAME -->``;
rerunning a benchmark replaces its section and leaves the others alone. A benchmark's ``main`` is::

    add_output_args(parser)                       # --work DIR, --no-write
    with scratch_dir(args.work, "bench-NAME-") as work:
        ... measure, build body lines ...
        publish("NAME", "Title", body, write=not args.no_write)
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterator, Sequence

ROOT = Path(__file__).resolve().parents[2]
BENCHMARKS = ROOT / "BENCHMARKS.md"
HEADER = """# Benchmarks

Figures measured by the scripts in `tools/bench/` (never by the test suite). Ratios are measured side
by side in one run; absolute times hold for the machine named in each section. Rerun a section with
the command shown in it.
"""


def machine() -> str:
    """One line: CPU model, cores, memory, GPU (if any), torch version."""
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kb = int(next(line for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal")).split()[1])
        mem = f", {kb / 2**20:.0f} GiB RAM"
    except (OSError, StopIteration, ValueError):
        pass
    gpu = ""
    try:
        import torch

        if torch.cuda.is_available():
            gpu = f", GPU {torch.cuda.get_device_name(0)}"
        tv = f", torch {torch.__version__}"
    except ImportError:
        tv = ""
    return f"{cpu}, {os.cpu_count()} cores{mem}{gpu}{tv}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}"


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    except OSError:
        return "unknown"


def write_section(name: str, title: str, body: str, command: str | None = None) -> Path:
    """Replace (or append) the section ``name`` of BENCHMARKS.md."""
    if command is None:
        script = Path(sys.argv[0]).resolve()
        module = ".".join(script.relative_to(ROOT).with_suffix("").parts) if script.is_relative_to(ROOT) else str(script)
        command = " ".join(shlex.quote(a) for a in ["python", "-m", module, *sys.argv[1:]])
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    section = (f"<!-- bench:{name} -->\n## {title}\n\n"
               f"- measured {stamp} on: {machine()}; commit {git_commit()}\n"
               f"- command: `{command}`\n\n{body.strip()}\n<!-- /bench:{name} -->\n")
    text = BENCHMARKS.read_text() if BENCHMARKS.exists() else HEADER
    pattern = re.compile(rf"<!-- bench:{re.escape(name)} -->.*?<!-- /bench:{re.escape(name)} -->\n", re.S)
    text = pattern.sub(lambda _: section, text) if pattern.search(text) else text.rstrip() + "\n\n" + section
    BENCHMARKS.write_text(text)
    return BENCHMARKS


def table(headers: list[str], rows: list[list]) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def add_output_args(parser: argparse.ArgumentParser) -> None:
    """``--work DIR`` (keep the scratch files there) and ``--no-write`` (print only)."""
    parser.add_argument("--work", help="scratch dir (default: a temporary dir, removed)")
    parser.add_argument("--no-write", action="store_true", help="print, do not update BENCHMARKS.md")


@contextlib.contextmanager
def scratch_dir(path: str | None, prefix: str) -> Iterator[Path]:
    """``path`` (created if needed, kept afterwards) or a new temporary dir removed on exit, error or not."""
    work = Path(path or tempfile.mkdtemp(prefix=prefix))
    work.mkdir(parents=True, exist_ok=True)
    try:
        yield work
    finally:
        if not path:
            shutil.rmtree(work, ignore_errors=True)


def publish(name: str, title: str, body: str | Sequence[str], write: bool = True, also: Sequence[Path] = ()) -> str:
    """Print a benchmark's section body and, when ``write``, replace its section of BENCHMARKS.md
    (``also``: other files it wrote, named in the closing line). Returns the text."""
    text = body if isinstance(body, str) else "\n".join(body)
    print(text)
    if write:
        path = write_section(name, title, text)
        print(f"wrote {path}" + "".join(f" and {p}" for p in also))
    return text


def save_figure(fig: Any, out_png: Path, dpi: int = 120) -> Path:
    """Tight layout, write ``out_png`` (parent dirs created), close the figure."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=dpi)
    plt.close(fig)
    return out_png


def time_store_reads(reader: Any, rounds: int = 3, seed: int = 0) -> dict:
    """Read speed of a soft-target store (``StoreReader``) from the page cache, best of ``rounds``:
    every utterance by id in a random order (``get_sparse``, what the training loop does) and every
    shard sequentially (``iter_shards``). Returns frames, utterances, payload bytes and frames/s."""
    import random
    import time

    for path in sorted((reader.store_dir / "shards").glob("*.bin")):  # warm the page cache
        path.read_bytes()
    ids = list(reader.utt_ids)
    random.Random(seed).shuffle(ids)
    total = reader.total_frames
    best_random = best_seq = float("inf")
    for _ in range(rounds):
        t = time.perf_counter()
        for utt in ids:
            reader.get_sparse(utt)
        best_random = min(best_random, time.perf_counter() - t)
        t = time.perf_counter()
        for _ in reader.iter_shards():
            pass
        best_seq = min(best_seq, time.perf_counter() - t)
    return {"frames": total, "utts": len(ids), "bytes": reader.payload_bytes(), "random_fps": total / best_random,
            "seq_fps": total / best_seq}


@contextlib.contextmanager
def gpu_utilization(log_path: Path, interval_ms: int = 500) -> Iterator[dict]:
    """Sample every GPU's utilization (%) and memory (MiB) with ``nvidia-smi`` while the block runs.

    Yields a dict filled on exit: ``mean_util`` (mean over samples and GPUs, %), ``max_mem_mib``,
    ``samples``; empty where ``nvidia-smi`` is missing (no NVIDIA driver)."""
    found: dict = {}
    exe = shutil.which("nvidia-smi")
    if exe is None:
        yield found
        return
    with open(log_path, "w") as log:
        proc = subprocess.Popen([exe, "--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits",
                                 f"-lms={interval_ms}"], stdout=log, stderr=subprocess.DEVNULL)
        try:
            yield found
        finally:
            proc.terminate()
            proc.wait(timeout=10)
    utils, mems = [], []
    for line in Path(log_path).read_text().splitlines():
        parts = [x.strip() for x in line.split(",")]
        if len(parts) == 2 and parts[0].isdigit() and parts[1].isdigit():
            utils.append(int(parts[0]))
            mems.append(int(parts[1]))
    if utils:
        found.update(mean_util=sum(utils) / len(utils), max_mem_mib=max(mems), samples=len(utils))

