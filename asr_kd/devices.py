"""The device a stage runs on — never a CPU run nobody asked for.

``torch.cuda.is_available()`` is False both on a machine without a GPU and on one whose GPU torch cannot
use (a driver older than the CUDA build needs, a CPU-only torch wheel, a GPU Ray assigned that is not
there). Falling back to the CPU in the second case turns a GPU job into a CPU job that runs 20-100x
slower without a word, so ``resolve_device`` tells the two apart: ``auto`` means "the GPU if there is
one, the CPU if there is none", and a GPU that is present but unusable is an error naming the cause and
the fix. ``cpu`` is always honoured: the explicit way to train on CPU on a GPU machine.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from asr_kd.errors import AsrKdError


class DeviceError(AsrKdError):
    """A GPU was asked for, or is present, but cannot be used."""


def nvidia_gpus(root: str | Path = "/") -> list[str]:
    """NVIDIA GPUs the operating system shows (model names, or device files), whatever torch can do."""
    root = Path(root)
    models = []
    for info in sorted((root / "proc/driver/nvidia/gpus").glob("*/information")):
        text = info.read_text(errors="replace")
        found = re.search(r"^Model:\s*(.+)$", text, re.M)
        models.append(found.group(1).strip() if found else info.parent.name)
    if models:
        return models
    return sorted(p.name for p in (root / "dev").glob("nvidia[0-9]*"))


def nvidia_driver(root: str | Path = "/") -> str | None:
    """The loaded NVIDIA kernel driver's version, e.g. ``550.54.14``; None when none is loaded."""
    version = Path(root) / "proc/driver/nvidia/version"
    if not version.is_file():
        return None
    found = re.search(r"Kernel Module\s+(?:for \S+\s+)?([0-9][0-9.]+)", version.read_text(errors="replace"))
    return found.group(1) if found else "unknown"


def cuda_problem(root: str | Path = "/") -> str:
    """Why torch cannot use CUDA here, in words a user can act on."""
    build = torch.version.cuda
    driver = nvidia_driver(root)
    gpus = nvidia_gpus(root)
    if build is None:
        return (f"torch {torch.__version__} is a CPU-only build; install the CUDA build "
                "(README, 'GPUs': the pinned torch==2.14.1 wheel is built for CUDA 13)")
    if not gpus:
        return "no NVIDIA GPU is visible to this process (check CUDA_VISIBLE_DEVICES and that the GPU is attached)"
    if driver is None:
        return f"{len(gpus)} NVIDIA GPU(s) present but no NVIDIA kernel driver is loaded (install the driver)"
    return (f"torch {torch.__version__} is built for CUDA {build} and the loaded driver is {driver}: the driver is "
            f"probably too old for that CUDA release (README, 'GPUs': upgrade the driver, or install a torch "
            f"build for the CUDA release your driver supports, e.g. from download.pytorch.org/whl/cu126)")


def resolve_device(pref: str, root: str | Path = "/") -> torch.device:
    """``pref`` is ``auto``, ``cpu`` or ``cuda``; see the module docstring. ``root`` is where ``/proc`` and
    ``/dev`` are read (tests point it at a fake tree)."""
    if pref == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda")
    if pref == "cuda":
        raise DeviceError(f"a GPU was asked for (device cuda, or a Ray worker given a GPU) but CUDA cannot be used: "
                          f"{cuda_problem(root)}. To run on the CPU knowingly, set the device to cpu")
    if pref != "auto":
        raise DeviceError(f"unknown device {pref!r}: use auto, cpu or cuda")
    gpus = nvidia_gpus(root)
    if gpus:
        raise DeviceError(f"device auto: {len(gpus)} NVIDIA GPU(s) present ({', '.join(gpus[:4])}) but CUDA cannot be "
                          f"used: {cuda_problem(root)}. Refusing to fall back to the CPU silently; to run on the CPU "
                          "knowingly, set the device to cpu (train.device=cpu)")
    return torch.device("cpu")


def local_ray_gpus() -> int:
    """GPUs a local Ray started by this process would register: Ray's own count (NVML), limited to
    ``CUDA_VISIBLE_DEVICES`` when that is set. Asked without starting Ray, so ``asr-kd train`` without
    ``--workers`` can choose between one process and DDP on Ray Train."""
    from ray._private.accelerators.nvidia_gpu import NvidiaGPUAcceleratorManager as nvidia

    count = nvidia.get_current_node_num_accelerators()
    visible = nvidia.get_current_process_visible_accelerator_ids()
    return min(count, len(visible)) if visible is not None else count


def per_gpu(requested: int | None, cluster_gpus: float, cpu_default: int, flag: str,
            gpus_each: float = 1.0) -> tuple[int, str]:
    """How many Ray actors or DDP workers a stage runs, and why: ``requested`` (the value of ``flag``) when
    given; otherwise, on a Ray cluster with GPUs, one per ``gpus_each`` GPU(s) of the cluster (one per GPU
    by default); on a cluster without GPUs, ``cpu_default``."""
    if requested is not None:
        return requested, f"{flag} {requested}"
    if gpus_each > 0 and cluster_gpus >= gpus_each:
        return int(cluster_gpus // gpus_each + 1e-9), (f"one per {gpus_each:g} GPU of the Ray cluster's "
                                                       f"{cluster_gpus:g} GPU(s); {flag} not given")
    if gpus_each <= 0 and cluster_gpus > 0:
        return cpu_default, f"{flag} not given, CPU asked for: the CPU default"
    return cpu_default, f"{flag} not given and the Ray cluster has no GPU: the CPU default"


def layout_line(stage: str, count: int, what: str, gpus_each: float, device: str, dtype: str, why: str) -> str:
    """The line a stage logs before it starts: how many workers, on what, in which dtype, and why."""
    on = f" x {gpus_each:g} GPU each" if gpus_each > 0 else " on CPU"
    return f"{stage}: layout {count} {what}{on}, device {device}, dtype {dtype} ({why})"


__all__ = ["DeviceError", "cuda_problem", "layout_line", "local_ray_gpus", "nvidia_driver", "nvidia_gpus", "per_gpu",
           "resolve_device"]
