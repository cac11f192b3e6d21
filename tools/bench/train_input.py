"""Training input: share of step time spent waiting for data, and soft-target store read speed.

(1) Data wait. The real trainer is set up from a config (``Trainer._setup``: data dirs, units, CMVN,
model, optimizer) and then driven by a timed copy of its step loop over real batches from
``asr_kd.train.data.make_loader``: ``wait`` = time blocked in ``next(loader)`` (audio decoding + fbank
not yet ready), ``step`` = CMVN, SpecAugment, forward, CTC loss, backward, clipping, optimizer. Share =
wait / (wait + step), target < 10 %. Measured for ``batch.num_workers`` = 0 (decoding in the training
process: the share is the decoding cost) and 1 (one DataLoader worker decoding ahead). Torch uses one
thread in the training process.

(2) Store reads. A store of ``--store-frames`` frames (top-8, log8, V=40; synthetic values) is written
with ``StoreWriter`` and read once to warm the page cache; then timed: ``get_sparse`` of every utterance
in random order (random access by id) and ``iter_shards`` (sequential). Target >= 1,000,000 frames/s.

Defaults (a few minutes on 2 cores): demo_student preset, 120 synthetic utterances of 2-6 s with text,
up to 30 steps of 30 s of audio per batch, 1,000,000 stored frames. ``--quick``: 40 utterances,
10 steps, 300,000 frames.

    python -m tools.bench.train_input [--quick]
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from tools.bench.common import add_output_args, publish, scratch_dir, table, time_store_reads
from tools.bench.fixtures import synthetic_data


def data_wait(data_dir: str, work: Path, num_workers: int, steps: int, max_frames: int, preset: str) -> dict:
    from asr_kd.config import validate_config
    from asr_kd.models import PRESETS
    from asr_kd.train.config import TrainConfig
    from asr_kd.train.data import make_loader
    from asr_kd.train.loop import Trainer

    conf = validate_config({
        "model": dict(PRESETS[preset]),
        "data": {"train": [data_dir], "cmvn_max_utts": 50},
        "batch": {"max_frames": max_frames, "num_workers": num_workers},
        "train": {"max_epochs": 1, "seed": 0, "device": "cpu", "threads": 1},
    }, TrainConfig, source="bench")
    out = work / f"model-w{num_workers}"
    shutil.rmtree(out, ignore_errors=True)
    trainer = Trainer(conf, out, progress=False)
    trainer._setup()
    plan = trainer._plan(0)[:steps]
    loader = iter(make_loader(trainer.table, plan, conf.fbank, num_workers, False))
    trainer.model.train()
    wait = step = 0.0
    audio_s = 0.0
    n = 0
    t_start = time.perf_counter()
    while True:
        t0 = time.perf_counter()
        try:
            batch = next(loader)
        except StopIteration:
            break
        t1 = time.perf_counter()
        feats = trainer.cmvn(batch.feats)
        lens = batch.feat_lens
        if trainer.specaug is not None:
            feats = trainer.specaug(feats, lens)
        log_probs, out_lens = trainer.model(feats, lens)
        loss, _, _ = trainer._losses(batch, log_probs.float(), out_lens)
        trainer.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainer.model.parameters(), conf.optim.grad_clip)
        trainer.optimizer.step()
        t2 = time.perf_counter()
        if n > 0:  # the first batch includes worker start-up: reported by the wall time, not the share
            wait += t1 - t0
            step += t2 - t1
        n += 1
        audio_s += float(batch.feat_lens.sum()) / 100
    wall = time.perf_counter() - t_start
    return {"workers": num_workers, "steps": n, "wait": wait, "step": step, "share": wait / max(wait + step, 1e-9),
            "wall": wall, "audio_s": audio_s}


def store_reads(work: Path, frames_total: int, frames_per_utt: int = 250, utts_per_shard: int = 500, seed: int = 0) -> dict:
    from asr_kd.targets.meta import StoreMeta
    from asr_kd.targets.reader import StoreReader
    from asr_kd.targets.writer import StoreWriter

    rng = np.random.default_rng(seed)
    vocab, k = 40, 8
    meta = StoreMeta(units_hash="bench", vocab_size=vocab, frame_shift_ms=40.0, k=k, quantization="log8",
                     format_version=1)  # the fixed top-8 records this section has always measured
    out = work / "store"
    shutil.rmtree(out, ignore_errors=True)
    writer = StoreWriter(out, meta, shard_size_utts=utts_per_shard)
    n_utts = max(1, frames_total // frames_per_utt)
    for s, first in enumerate(range(0, n_utts, utts_per_shard)):
        items = []
        for i in range(first, min(first + utts_per_shard, n_utts)):
            ids = np.argsort(rng.random((frames_per_utt, vocab)), axis=1)[:, :k]
            probs = np.sort(rng.dirichlet(np.full(vocab, 0.1), size=frames_per_utt), axis=1)[:, ::-1][:, :k]
            items.append((f"utt{i:07d}", ids, probs))
        writer.write_shard(s, items)
    writer.finalize()
    return time_store_reads(StoreReader(out), seed=seed)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--data", help="labeled data dir (default: synthetic 2-6 s utterances with text)")
    p.add_argument("--utts", type=int, help="synthetic utterances (default 120, --quick 40)")
    p.add_argument("--steps", type=int, help="timed steps (default 30, --quick 10)")
    p.add_argument("--max-frames", type=int, default=3000, help="batch.max_frames: padded 10 ms frames per batch")
    p.add_argument("--preset", default="demo_student", help="model preset trained")
    p.add_argument("--workers", type=int, nargs="+", default=[0, 1], help="batch.num_workers values to measure")
    p.add_argument("--store-frames", type=int, help="frames in the read-speed store (default 1,000,000, --quick 300,000)")
    add_output_args(p)
    args = p.parse_args()
    torch.set_num_threads(1)
    with scratch_dir(args.work, "bench-train-input-") as work:
        n = args.utts or (40 if args.quick else 120)
        steps = args.steps or (10 if args.quick else 30)
        data_dir = args.data or str(synthetic_data(work / "corpus", n, with_text=True))
        waits = [data_wait(data_dir, work, w, steps, args.max_frames, args.preset) for w in args.workers]
        for w in waits:
            print(w)
        reads = store_reads(work, args.store_frames or (300_000 if args.quick else 1_000_000))
        print(reads)
        body = [
            f"Model: {args.preset} preset; data: {data_dir if args.data else f'{n} synthetic utterances of 2-6 s'}; "
            f"batches of <= {args.max_frames} padded 10 ms frames; one torch thread in the training process; the first "
            "batch (worker start-up) is excluded from the shares.",
            "",
            table(["batch.num_workers", "steps timed", "wait for data s", "step s", "share waiting", "audio s per wall s"],
                  [[w["workers"], w["steps"] - 1, f"{w['wait']:.2f}", f"{w['step']:.2f}", f"{100 * w['share']:.1f} %",
                    f"{w['audio_s'] / w['wall']:.1f}"] for w in waits]),
            "",
            "Target: < 10 % of step time waiting for data (measured "
            + ", ".join(f"{100 * w['share']:.1f} % with {w['workers']} worker(s)" for w in waits) + ").",
            "",
            f"Store read speed (page cache): {reads['frames']:,} frames of top-8 log8 in {reads['utts']:,} utterances "
            f"({reads['bytes'] / 1e6:.1f} MB), best of 3:",
            "",
            table(["access", "frames/s"], [["random by id (get_sparse)", f"{reads['random_fps']:,.0f}"],
                                           ["sequential (iter_shards)", f"{reads['seq_fps']:,.0f}"]]),
            "",
            "Target: >= 1,000,000 frames/s.",
        ]
        publish("train_input", "Training input: data wait and store reads", body, write=not args.no_write)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
