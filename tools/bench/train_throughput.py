"""Training throughput: audio-seconds trained per CPU-second, features from audio vs the feature cache.

For the demo teacher and the demo baseline student (``recipes/synth/conf``), side by side in one run:
each trains ``--steps`` optimizer steps on the same utterances (same seed, so the same batches),
once reading audio and computing fbank on the fly ("before") and once reading the feature cache
written by ``asr-kd data fbank`` ("after"). One torch thread, ``batch.num_workers`` as in the config.
CPU-seconds are the training process's user+system time plus its DataLoader workers' (``getrusage``
of self and children), so the figure does not depend on what else the machine runs; start-up (CMVN
over a 50-utterance sample) is included in both, a 2-step warm-up run (imports, first fork) in
neither. The one-off cost of building the cache is reported on its own.

    python -m tools.bench.train_throughput [--data data/synth/train_labeled] [--steps 60] [--no-write]
"""

from __future__ import annotations

import argparse
import resource
import shutil
import time
from pathlib import Path

from tools.bench.common import ROOT, add_output_args, publish, scratch_dir, table
from tools.bench.fixtures import synthetic_data

MODELS = {"teacher": "teacher.yaml", "student": "student_baseline.yaml"}


def _cpu_seconds() -> float:
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def copy_data_dir(src: Path, dst: Path) -> Path:
    """The text files of a data dir (audio paths unchanged), without any feature cache."""
    dst.mkdir(parents=True, exist_ok=True)
    for name in ("wav.scp", "segments", "text", "utt2spk", "spk2utt", "utt2dur"):
        if (src / name).exists():
            shutil.copy(src / name, dst / name)
    return dst


def train_once(config_path: Path, data: Path, out: Path, steps: int) -> tuple[float, float, int]:
    """Train ``steps`` steps; returns (CPU seconds, audio seconds trained, steps)."""
    import torch

    from asr_kd.config import load_config
    from asr_kd.train.config import TrainConfig
    from asr_kd.train.loop import Trainer

    torch.set_num_threads(1)
    config = load_config(config_path, TrainConfig, [
        f"data.train=[{data}]", "data.dev=null", "units.from_model=null", "units.kind=char", f"train.max_steps={steps}",
        "train.max_epochs=1000", f"train.checkpoint_every_steps={10 * steps}", "train.threads=1", "data.cmvn_max_utts=50",
        "train.final=last"])
    shutil.rmtree(out, ignore_errors=True)
    trainer = Trainer(config, out, progress=False)
    cpu0 = _cpu_seconds()
    result = trainer.run()
    cpu = _cpu_seconds() - cpu0
    # the batches it trained on: the plans of the epochs it went through, cut at `steps`
    frames, done, epoch = 0, 0, 0
    while done < result.steps:
        for _, item in trainer._plan(epoch)[: result.steps - done]:
            frames += sum(trainer.table.utts[u].frames for u in item.utt_ids)
            done += 1
        epoch += 1
    return cpu, frames / 100.0, result.steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(ROOT / "data" / "synth" / "train_labeled"))
    parser.add_argument("--conf", default=str(ROOT / "recipes" / "synth" / "conf"))
    parser.add_argument("--steps", type=int, default=60)
    add_output_args(parser)
    args = parser.parse_args()

    from asr_kd.data.feature_cache import build_feature_cache

    with scratch_dir(args.work, "bench-train-throughput-") as work:
        src = Path(args.data)
        if not (src / "wav.scp").exists():
            src = synthetic_data(work / "synthetic", 300, with_text=True)
        plain = copy_data_dir(src, work / "plain")
        cached = copy_data_dir(src, work / "cached")
        t0, cpu0 = time.time(), _cpu_seconds()
        summary = build_feature_cache(cached, progress=False)
        cache_cpu, cache_wall = _cpu_seconds() - cpu0, time.time() - t0
        # warm-up (imports, allocator, first DataLoader fork) outside the figures
        train_once(Path(args.conf) / MODELS["student"], plain, work / "warmup", 2)
        rows = []
        for name, conf in MODELS.items():
            results = {}
            for label, data in (("audio", plain), ("cache", cached)):
                cpu, audio_s, steps = train_once(Path(args.conf) / conf, data, work / f"{name}-{label}", args.steps)
                results[label] = audio_s / cpu
                print(f"{name}, features from {label}: {steps} steps, {audio_s:.0f} audio-s in {cpu:.1f} CPU-s "
                      f"= {audio_s / cpu:.1f} audio-s per CPU-s")
            rows.append([name, args.steps, f"{results['audio']:.1f}", f"{results['cache']:.1f}",
                         f"{results['cache'] / results['audio']:.2f}x"])
        shown = src.resolve()
        if shown.is_relative_to(ROOT):
            shown = f"`{shown.relative_to(ROOT)}`"
        elif shown.is_relative_to(work.resolve()):
            shown = "300 synthetic tone utterances of 2-6 s (`tools/bench/fixtures.py`; the demo corpus was absent)"
        else:
            shown = f"`{shown}`"
        body = (f"Configs `{Path(args.conf).name}/teacher.yaml` and `student_baseline.yaml` (char units), {args.steps} "
                f"steps each on {shown}, one torch thread; CPU-seconds include DataLoader workers and start-up.\n\n"
                + table(["model", "steps", "audio-s / CPU-s, fbank from audio (before)",
                         "audio-s / CPU-s, feature cache (after)", "speed-up"], rows)
                + f"\n\nBuilding the cache (`asr-kd data fbank`): {summary.cached} utterances, {summary.frames / 360000:.2f} h "
                f"in {cache_cpu:.1f} CPU-s ({cache_wall:.1f} s wall), {(summary.path / 'feats.ark').stat().st_size / 1e6:.0f} MB.\n")
        publish("train_throughput", "Training throughput: fbank from audio vs the feature cache", body,
                write=not args.no_write)


if __name__ == "__main__":
    main()
