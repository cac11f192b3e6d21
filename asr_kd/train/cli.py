"""``asr-kd train --config X.yaml --out DIR [--resume] [--workers N] [--address A] [key=value ...]``."""

from __future__ import annotations

import argparse

from asr_kd.config import load_config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="training YAML (see recipes/synth/conf/)")
    parser.add_argument("--out", required=True, help="model dir to write (checkpoints, metrics, final model)")
    parser.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    parser.add_argument("--workers", type=int, default=1, help="data-parallel training workers on Ray Train (DDP)")
    parser.add_argument("--address", help="Ray cluster to train on: 'auto' (after 'ray start') or HOST:PORT; default: "
                                          "this machine (workers > 1 start a local Ray). Every node must see the data "
                                          "dirs, the store and --out at the same paths (a shared filesystem)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (logs only)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. train.max_epochs=3 optim.lr=5e-4")


def run(args: argparse.Namespace) -> int:
    from asr_kd.train.config import TrainConfig

    config = load_config(args.config, TrainConfig, args.overrides)
    if args.workers > 1 or args.address:
        from asr_kd.train.distributed import train_distributed

        train_distributed(config, args.out, args.workers, resume=args.resume, progress=not args.no_progress,
                          address=args.address)
        return 0
    from asr_kd.train.loop import train

    train(config, args.out, resume=args.resume, progress=not args.no_progress)
    return 0
