"""``asr-kd train --config X.yaml --out DIR [--resume] [--workers N] [--address A] [key=value ...]``."""

from __future__ import annotations

import argparse

from asr_kd.config import load_config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="training YAML (see recipes/synth/conf/)")
    parser.add_argument("--out", required=True, help="model dir to write (checkpoints, metrics, final model)")
    parser.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    parser.add_argument("--workers", type=int, default=None,
                        help="data-parallel training workers on Ray Train (DDP); default: one per GPU of the Ray cluster "
                             "(--address, else this machine's GPUs: 2 or more start a local Ray), one process when "
                             "there is one GPU or none")
    parser.add_argument("--address", help="Ray cluster to train on: 'auto' (after 'ray start') or HOST:PORT; default: "
                                          "this machine (workers > 1 start a local Ray). Every node must see the data "
                                          "dirs, the store and --out at the same paths (a shared filesystem)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (logs only)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. train.max_epochs=3 optim.lr=5e-4")


def run(args: argparse.Namespace) -> int:
    import logging

    from asr_kd.train.config import TrainConfig

    config = load_config(args.config, TrainConfig, args.overrides)
    workers = args.workers
    if workers is None and not args.address:
        workers = None if local_cluster_gpus(config) >= 2 else 1
    if workers is None or workers > 1 or args.address:
        from asr_kd.train.distributed import train_distributed

        train_distributed(config, args.out, workers, resume=args.resume, progress=not args.no_progress,
                          address=args.address)
        return 0
    from asr_kd.devices import layout_line, resolve_device
    from asr_kd.train.distributed import train_dtype
    from asr_kd.train.loop import train

    device = resolve_device(config.train.device)  # a GPU that cannot be used is an error here, before any work
    why = ("--workers 1" if args.workers else "--workers not given, train.device=cpu" if config.train.device == "cpu"
           else f"--workers not given, {'one GPU' if device.type == 'cuda' else 'no GPU'} here")
    logging.getLogger("asr_kd.train").info(layout_line("train", 1, "process", 1 if device.type == "cuda" else 0,
                                                       device.type, train_dtype(config, device.type == "cuda"), why))
    train(config, args.out, resume=args.resume, progress=not args.no_progress)
    return 0


def local_cluster_gpus(config) -> float:
    """GPUs of the Ray cluster ``asr-kd train`` without ``--address`` would use: the one this process is
    already connected to (a program that started Ray itself), else the local Ray it would start; 0 when
    ``train.device=cpu``."""
    import sys

    if config.train.device == "cpu":
        return 0
    if "ray" in sys.modules and sys.modules["ray"].is_initialized():
        return sys.modules["ray"].cluster_resources().get("GPU", 0)
    from asr_kd.devices import local_ray_gpus, nvidia_gpus

    return local_ray_gpus() if nvidia_gpus() else 0  # no NVIDIA GPU at all: not worth importing Ray to ask
