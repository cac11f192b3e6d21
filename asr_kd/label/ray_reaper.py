"""``python -m asr_kd.label.ray_reaper OWNER``: kill a local Ray cluster once its driver is gone.

Started by ``asr_kd.label.ray_runtime.start_reaper`` with a pipe on stdin that the driver holds: EOF on
stdin, or the reaper being re-parented, means the driver has exited (normally, on Ctrl-C, or by
``kill -9``). Then every process whose environment holds ``ASR_KD_RAY_OWNER=OWNER`` (GCS, raylet,
workers of that run), every process below them, and every process seen below them while the driver
ran — nothing else — is sent SIGKILL, rescanning until none is left (at most ~10 s). Linux only
(/proc); elsewhere it exits without doing anything.
"""

from __future__ import annotations

import os
import signal
import sys
import time

OWNER_ENV = "ASR_KD_RAY_OWNER"


def _scan(owner: str) -> tuple[dict[int, int], dict[int, int]]:
    """One pass over /proc: ``({pid: start time} of every live process, {pid: start time} of this run's
    processes)`` — those whose initial environment holds OWNER_ENV=owner and every process below them.
    Start times are in clock ticks since boot (they tell a reused pid from the process we saw)."""
    needle = f"{OWNER_ENV}={owner}".encode()
    parents: dict[int, int] = {}
    started: dict[int, int] = {}
    marked = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        pid = int(entry)
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
            fields = stat[stat.rfind(b")") + 2:].split()  # after "(comm)": state, ppid, ...; starttime is the 20th
            if len(fields) <= 19 or fields[0] == b"Z":
                continue
            parents[pid], started[pid] = int(fields[1]), int(fields[19])
            with open(f"/proc/{entry}/environ", "rb") as f:
                if needle in f.read().split(b"\0"):
                    marked.append(pid)
        except OSError:  # gone, or another user's process
            continue
    return started, {pid: started[pid] for pid in with_descendants(marked, parents)}


def with_descendants(pids: list[int], parents: dict[int, int]) -> list[int]:
    """``pids`` and every live process below them in the process tree (``parents``: {pid: parent pid}).

    A process started without our environment marker is still found as a child of one that has it. The
    raylet shares the driver's fate and may be gone before the reaper looks, its dashboard and
    runtime-env agents re-parented and their lineage lost: so ``wait_for_driver_exit`` also remembers the
    tree while the driver runs. Before, the agents outlived a ``kill -9``'d driver in some runs by more
    than 15 s."""
    children: dict[int, list[int]] = {}
    for pid, ppid in parents.items():
        children.setdefault(ppid, []).append(pid)
    found, todo = set(), list(pids)
    while todo:
        pid = todo.pop()
        if pid in found:
            continue
        found.add(pid)
        todo.extend(children.get(pid, []))
    return sorted(found)


def reap(owner: str, timeout: float = 10.0, remembered: dict[int, int] | None = None) -> int:
    """SIGKILL the run's processes: marked ones, their descendants, and ``remembered`` ({pid: start time},
    seen below them while the driver ran; a pid whose start time changed was reused and is spared)."""
    killed: set[int] = set()
    deadline = time.monotonic() + timeout
    quiet = 0
    while time.monotonic() < deadline and quiet < 2:
        started, run = _scan(owner)
        pids = set(run) | {pid for pid, start in (remembered or {}).items() if started.get(pid) == start}
        quiet = 0 if pids else quiet + 1
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
                killed.add(pid)
            except OSError:
                pass
        time.sleep(0.2)
    return len(killed)


def main(argv: list[str]) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    if len(argv) != 1 or not argv[0] or not os.path.isdir("/proc"):
        return 0
    remembered = wait_for_driver_exit(argv[0])
    reap(argv[0], remembered=remembered)
    return 0


def wait_for_driver_exit(owner: str, poll_s: float = 1.0) -> dict[int, int]:
    """Return once the driver (our parent) is gone — EOF on stdin, or we were re-parented — with the
    run's processes seen meanwhile (marked ones and everything below them, {pid: start time}).

    Being re-parented is the direct sign of the driver's death; EOF comes only once every process holding
    the pipe's write end has exited, which an inherited descriptor could delay."""
    import select

    driver = os.getppid()
    stdin = sys.stdin.buffer
    remembered: dict[int, int] = {}
    while os.getppid() == driver:
        remembered.update(_scan(owner)[1])  # the run's process tree while it is whole
        try:
            ready, _, _ = select.select([stdin], [], [], poll_s)
            if ready and not os.read(stdin.fileno(), 65536):
                return remembered  # EOF: every holder of the write end has exited
        except (OSError, ValueError):
            return remembered
    return remembered


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
