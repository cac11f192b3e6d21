"""Training speed on the CPU cores of one machine: threads in one process vs Ray Train DDP workers,
each with its batches read by a DataLoader process (``batch.num_workers: 1``) or in the training
process (``batch.num_workers: 0``).

The demo recipe trains its teacher with ``asr-kd train --workers 2`` (two 1-thread DDP workers) rather
than one process with 2 torch threads, reading its cached features in the training process; this
measures why. Each layout trains the same config (the demo
teacher, ``recipes/synth/conf/teacher.yaml``, no dev set, no checkpoints) for ``--steps`` optimizer
steps on the same data. ``batch.max_frames`` is per optimizer step (each DDP worker takes half), so
every layout does the same work per step and steps/s compare directly. Timed from ``metrics.csv``
(rank 0 logs every 10 steps): seconds between the step-``skip`` row and the last row, which leaves out
process/Ray start-up, CMVN and the first DataLoader fork.

Layouts: ``1 process x 1 thread``, ``1 process x N threads``, ``N workers x 1 thread`` (N = cores), the
last two with and without a reader process. With the demo corpus, run ``asr-kd data fbank`` on ``--data``
first so that batches come from the feature cache as in the recipe.

    python -m tools.bench.train_parallel [--data data/synth/train_labeled] [--steps 150] [--quick]

Without ``--data`` (or when the demo corpus is absent) it uses synthetic tone utterances.
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
from pathlib import Path

from tools.bench.common import ROOT, publish, scratch_dir, table
from tools.bench.fixtures import synthetic_data


def seconds_per_step(model_dir: Path, skip: int) -> float:
    with open(model_dir / "metrics.csv", newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["kind"] == "train"]
    rows = [r for r in rows if int(r["step"]) >= skip]
    if len(rows) < 2:
        raise SystemExit(f"{model_dir}: too few logged steps to time (need --steps > {skip + 10})")
    first, last = rows[0], rows[-1]
    return (float(last["wall_s"]) - float(first["wall_s"])) / (int(last["step"]) - int(first["step"]))


def run_layout(config, out: Path, workers: int, threads: int, readers: int) -> float:
    from asr_kd.train.distributed import train_distributed
    from asr_kd.train.loop import train

    shutil.rmtree(out, ignore_errors=True)
    config = config.model_copy(deep=True)
    config.train.threads = threads
    config.batch.num_workers = readers
    if workers == 1:
        train(config, out, progress=False)
    else:
        train_distributed(config, str(out), workers, threads_per_worker=threads, progress=False)
    return seconds_per_step(out, skip=20)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(ROOT / "data" / "synth" / "train_labeled"))
    parser.add_argument("--config", default=str(ROOT / "recipes" / "synth" / "conf" / "teacher.yaml"))
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--quick", action="store_true", help="60 steps")
    args = parser.parse_args()
    steps = 60 if args.quick else args.steps
    cores = os.cpu_count() or 1

    from asr_kd.config import load_config
    from asr_kd.train.config import TrainConfig

    with scratch_dir(None, "bench_train_parallel_") as work:
        data = args.data
        if not Path(data, "wav.scp").exists():
            data = str(synthetic_data(work / "synthetic", 200, with_text=True))
        config = load_config(args.config, TrainConfig, [
            f"data.train=[{data}]", "data.dev=null", f"train.max_steps={steps}", f"train.checkpoint_every_steps={10 * steps}",
            "train.log_every_steps=10", "train.max_epochs=1000"])
        # (workers, threads per worker, DataLoader reader processes per worker)
        layouts = ([(1, 1, 0), (1, cores, 1), (1, cores, 0), (cores, 1, 1), (cores, 1, 0)] if cores > 1
                   else [(1, 1, 0), (1, 1, 1)])
        results = []
        for workers, threads, readers in layouts:
            sps = run_layout(config, work / f"w{workers}t{threads}r{readers}", workers, threads, readers)
            results.append((workers, threads, readers, sps))
            print(f"{workers} worker(s) x {threads} thread(s), {readers} reader(s): {sps * 1000:.0f} ms/step")
        base = results[0][3]
        rows = [[f"{'1 process' if w == 1 else f'{w} Ray Train workers (DDP)'} x {t} thread(s)",
                 "reader process" if r else "in the training process",
                 f"{sps * 1000:.0f}", f"{1 / sps:.2f}", f"{base / sps:.2f}x"] for w, t, r, sps in results]
        best = min(results, key=lambda x: x[3])
        reading = (f"Fastest: {'1 process' if best[0] == 1 else f'{best[0]} DDP workers'} x {best[1]} thread(s), batches "
                   f"read {'by a reader process' if best[2] else 'in the training process'} "
                   f"({base / best[3]:.2f}x one thread).")
        shown_data = Path(data).resolve()
        shown_data = shown_data.relative_to(ROOT) if shown_data.is_relative_to(ROOT) else shown_data
        body = (f"Demo teacher config (`{Path(args.config).relative_to(ROOT) if Path(args.config).is_relative_to(ROOT) else args.config}`, "
                f"{config.batch.max_frames} padded 10 ms frames per optimizer step), {steps} steps on `{shown_data}`; "
                f"timed from step 20 on (start-up excluded). {reading}\n\n"
                + table(["layout", "batches read", "ms / step", "steps / s", "speed vs 1 thread"], rows))
        publish("train_parallel", "Training layout on one machine: threads vs DDP workers", body)


if __name__ == "__main__":
    main()
