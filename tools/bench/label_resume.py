"""Labeling at 10,000 utterances: memory over the run, and resuming after ``kill -9`` of the driver.

One synthetic corpus (``--utts``, default 10,000 utterances of 1-3 s, 16 kHz PCM) and a random-weight
teacher (``demo_teacher`` preset, the demo teacher's size). ``asr-kd label`` runs as a user runs it (a
subprocess, local Ray, ``--shard-size 100``) while this script samples, every 0.5 s, the resident
memory of the driver and of the teacher actors (``/proc``):

1. killed: once about ``--kill-at`` of the shards are complete, the driver gets SIGKILL (its Ray
   processes are reaped by ``asr_kd.label.ray_reaper``);
2. resumed: the same command again, to the end. The shards complete before the kill must be skipped
   (markers untouched: same inode and mtime) and the store must verify (``targets verify``) with every
   utterance in it.

Reports the peak resident memory of driver and actors, the driver's memory at 25/50/75/100 % of the
shards the resumed run labels (flat = it does not grow with the shards labeled), and the resume figures.

    python -m tools.bench.label_resume [--utts 10000] [--kill-at 0.4] [--no-write]
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from tools.bench.common import add_output_args, publish, scratch_dir, table
from tools.bench.fixtures import random_model_dir, synthetic_data


def _rss_mib(pid: int) -> float:
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return 0.0


def _actor_pids() -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if b"TeacherActor" in Path(f"/proc/{entry}/cmdline").read_bytes():
                    pids.append(int(entry))
            except OSError:
                continue
    return pids


class Sampler(threading.Thread):
    """Samples driver and actor RSS and the count of complete shards every ``interval`` seconds."""

    def __init__(self, pid: int, store: Path, interval: float = 0.5):
        super().__init__(daemon=True)
        self.pid, self.store, self.interval = pid, store, interval
        self.samples: list[tuple[float, int, float, float]] = []  # (time, shards done, driver MiB, max actor MiB)
        self.stop = threading.Event()

    def run(self) -> None:
        t0 = time.time()
        while not self.stop.is_set():
            done = len(list((self.store / "shards").glob("shard-*.json"))) if (self.store / "shards").is_dir() else 0
            actors = [_rss_mib(p) for p in _actor_pids()]
            self.samples.append((time.time() - t0, done, _rss_mib(self.pid), max(actors, default=0.0)))
            self.stop.wait(self.interval)


def run_label(cmd: list[str], store: Path, kill_after_shards: int | None) -> tuple[int, Sampler, float]:
    t0 = time.time()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    sampler = Sampler(proc.pid, store)
    sampler.start()
    if kill_after_shards is not None:
        while proc.poll() is None:
            if sampler.samples and sampler.samples[-1][1] >= kill_after_shards:
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.2)
    _, err = proc.communicate()
    sampler.stop.set()
    sampler.join()
    if kill_after_shards is None and proc.returncode != 0:
        raise RuntimeError(f"asr-kd label failed ({proc.returncode}): {err[-2000:]}")
    return proc.returncode, sampler, time.time() - t0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--utts", type=int, default=10_000)
    p.add_argument("--kill-at", type=float, default=0.4, help="fraction of the shards complete when the driver is killed")
    p.add_argument("--shard-size", type=int, default=100)
    add_output_args(p)
    args = p.parse_args()
    with scratch_dir(args.work, "bench-resume-") as work:
        teacher = random_model_dir(work / "teacher", "demo_teacher")
        data = synthetic_data(work / "corpus", args.utts, min_s=1.0, max_s=3.0)
        store = work / "store"
        n_shards = -(-args.utts // args.shard_size)
        cmd = [sys.executable, "-m", "asr_kd.cli", "label", "--model", str(teacher), "--data", str(data), "--out", str(store),
               "--shard-size", str(args.shard_size), "--no-progress"]
        kill_at = max(1, int(args.kill_at * n_shards))
        rc, killed, wall_killed = run_label(cmd, store, kill_at)
        time.sleep(3)  # the reaper kills the orphaned Ray processes
        before = {m.name: (m.stat().st_ino, m.stat().st_mtime_ns) for m in (store / "shards").glob("shard-*.json")}
        _, resumed, wall_resumed = run_label(cmd, store, None)
        after = {m.name: (m.stat().st_ino, m.stat().st_mtime_ns) for m in (store / "shards").glob("shard-*.json")}
        untouched = sum(after.get(name) == st for name, st in before.items())
        verify = subprocess.run([sys.executable, "-m", "asr_kd.cli", "targets", "verify", str(store)],
                                capture_output=True, text=True)
        from asr_kd.targets.reader import StoreReader

        stored = len(StoreReader(store))
    resumed_shards = [s for s in resumed.samples]
    quarters = []
    for q in (0.25, 0.5, 0.75, 1.0):  # of the shards the resumed run labels
        want = len(before) + int(q * (n_shards - len(before)))
        hit = next((s for s in resumed_shards if s[1] >= want), resumed_shards[-1] if resumed_shards else None)
        quarters.append(f"{hit[2]:.0f}" if hit else "-")
    peak_driver = max(s[2] for s in killed.samples + resumed.samples)
    peak_actor = max(s[3] for s in killed.samples + resumed.samples)
    rows = [
        ["killed run", f"{wall_killed:.0f}", f"{len(before)} of {n_shards}", f"{max(s[2] for s in killed.samples):.0f}",
         f"{max(s[3] for s in killed.samples):.0f}", f"SIGKILL (exit {rc})"],
        ["resumed run", f"{wall_resumed:.0f}", f"{n_shards - len(before)} labeled, {untouched} of {len(before)} untouched",
         f"{max(s[2] for s in resumed.samples):.0f}", f"{max(s[3] for s in resumed.samples):.0f}",
         "verified" if verify.returncode == 0 else f"verify FAILED: {verify.stdout[-300:]}{verify.stderr[-300:]}"],
    ]
    body = [
        f"{args.utts:,} synthetic utterances of 1-3 s, `--shard-size {args.shard_size}` ({n_shards} shards), demo_teacher "
        "preset with random weights, local Ray, default layout. Resident memory sampled every 0.5 s from /proc.",
        "",
        table(["run", "wall s", "shards", "driver peak MiB", "largest actor peak MiB", "end"], rows),
        "",
        f"Driver resident memory in the resumed run at 25 / 50 / 75 / 100 % of the shards it labeled: {' / '.join(quarters)} MiB; "
        f"peak driver {peak_driver:.0f} MiB, peak actor {peak_actor:.0f} MiB. Store after the resume: {stored:,} "
        f"utterances; the {len(before)} shards complete before the kill were not rewritten ({untouched} markers with the "
        "same inode and mtime).",
    ]
    publish("label_resume", "Labeling 10,000 utterances: memory, and resume after kill -9", body, write=not args.no_write)
    return 0 if verify.returncode == 0 and untouched == len(before) and stored == args.utts else 1


if __name__ == "__main__":
    raise SystemExit(main())
