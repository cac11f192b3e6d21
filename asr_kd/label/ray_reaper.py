"""``python -m asr_kd.label.ray_reaper OWNER``: kill a local Ray cluster once its driver is gone.

Started by ``asr_kd.label.ray_runtime.start_reaper`` with a pipe on stdin that only the driver holds:
EOF on stdin means the driver has exited (normally, on Ctrl-C, or by ``kill -9``). Then every process
whose environment holds ``ASR_KD_RAY_OWNER=OWNER`` — GCS, raylet, agents, workers of that run, and
nothing else — is sent SIGKILL, rescanning until none is left (at most ~10 s). Linux only (/proc);
elsewhere it exits without doing anything.
"""

from __future__ import annotations

import os
import signal
import sys
import time

OWNER_ENV = "ASR_KD_RAY_OWNER"


def owned_pids(owner: str) -> list[int]:
    """Pids of live processes (not zombies) whose initial environment holds OWNER_ENV=owner."""
    needle = f"{OWNER_ENV}={owner}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                if needle in f.read().split(b"\0"):
                    found.append(int(entry))
        except OSError:  # gone, or another user's process
            continue
    return found


def reap(owner: str, timeout: float = 10.0) -> int:
    killed: set[int] = set()
    deadline = time.monotonic() + timeout
    quiet = 0
    while time.monotonic() < deadline and quiet < 2:
        pids = owned_pids(owner)
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
    try:
        while sys.stdin.buffer.read(65536):
            pass
    except OSError:
        pass
    reap(argv[0])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
