"""What made a result: git commit, package versions, command line, host (saved in every exp dir)."""

from __future__ import annotations

import datetime
import platform
import socket
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

PACKAGES = ("asr-kd", "torch", "torchaudio", "speechbrain", "ray", "jiwer", "librosa", "kaldi-io", "onnxruntime", "numpy")


def git_commit(cwd: Path | None = None) -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd or Path(__file__).parent, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd or Path(__file__).parent,
                               capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def environment_info(command: list[str] | None = None) -> dict:
    """Provenance of a result; ``command`` is the user's command line (default: this process's ``sys.argv``;
    a Ray Train worker passes its driver's, not the Ray worker's own argv)."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = None
    return {
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "command": list(command) if command is not None else sys.argv,
        "git_commit": git_commit(),
        "packages": versions,
    }
