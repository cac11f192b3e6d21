"""Soft-target storage: bytes per frame / per audio-second vs KL(teacher || stored) for top-k x quantization.

For k in {1, 2, 4, 8, 16, 32} (k <= vocabulary) and quantization in {log8, float16}, the teacher's dense
per-frame distributions are written to a real store (``StoreWriter``), read back (``StoreReader``) and
compared with ``asr_kd.targets.stats.kl_dense_vs_stored`` (mean per-frame KL in nats; the stored top-k
made a distribution by spreading the missing mass uniformly). A second KL column uses the exact float
top-k, separating truncation from quantization. Reference rows: dense float32 (4 x V bytes per frame,
KL 0) and icefall's MVQ codebook-index distillation (8 one-byte indexes per 20 ms frame = 400 bytes
per audio-second). The plot (``docs/bench/storage_kl_vs_bytes.png``) shows KL against bytes per
audio-second.

The teacher matters: a random-weight teacher has nearly flat distributions, so small k loses most of
the mass and KL is large; a trained CTC teacher is peaked (mostly blank) and top-8 keeps nearly all of
it. The section says which teacher was used. Defaults: ``demo_teacher`` preset with random weights and
40 synthetic utterances of 2-6 s (about a minute on 2 cores); ``--quick``: 12 utterances.

``--student-wer STORE=EVAL_DIR`` (repeatable): WER of students distilled from stores of different k
(the recipe's k in {1, 4, 8, 32} runs) against the store's bytes per audio-second, read from each
``EVAL_DIR/wer.json``; written as a table and ``docs/bench/storage_wer_vs_bytes.png``.

    python -m tools.bench.storage [--quick] [--model TEACHER_DIR] [--data DIR] [--student-wer STORE=EVAL_DIR ...]
"""

from __future__ import annotations

import argparse
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from tools.bench.common import ROOT, add_output_args, publish, save_figure, scratch_dir, table
from tools.bench.fixtures import random_model_dir, synthetic_data

KS = (1, 2, 4, 8, 16, 32)
QUANTS = ("log8", "float16")
MVQ_BYTES_PER_SECOND = 8 * 1000 / 20  # icefall MVQ: 8 one-byte codebook indexes per 20 ms frame
PLOTS = ROOT / "docs" / "bench"


@dataclass
class Row:
    k: int
    quantization: str
    bytes_per_frame: float
    bytes_per_second: float
    kl: float
    kl_unquantized: float
    topk_mass: float


def teacher_log_probs(model_dir: str, data_dir: str) -> tuple[dict[str, torch.Tensor], object]:
    """Dense ``(T, V)`` log-probabilities (40 ms frames) of every readable utterance, one at a time."""
    from asr_kd.data.audio import load_audio
    from asr_kd.data.datadir import read_data_dir
    from asr_kd.errors import AudioError
    from asr_kd.models.model_dir import load_model_dir

    loaded = load_model_dir(model_dir)
    data = read_data_dir(data_dir)
    out = {}
    with torch.no_grad():
        for utt in data.utt_ids:
            try:
                wave = load_audio(data.source(utt), sample_rate=loaded.fbank_config.sample_rate, max_seconds=60.0)
            except AudioError:
                continue
            feats, lens = loaded.featurize(wave.unsqueeze(0), torch.tensor([wave.numel()]))
            log_probs, out_lens = loaded.model(feats, lens)
            lp = torch.log_softmax(log_probs[0, : int(out_lens[0])].double(), dim=-1)
            if lp.shape[0]:
                out[utt] = lp
    return out, loaded


def measure(dense: dict[str, torch.Tensor], loaded, work: Path, k: int, quantization: str) -> Row:
    from asr_kd.targets.stats import kl_dense_vs_stored, store_stats
    from asr_kd.targets.meta import StoreMeta
    from asr_kd.targets.reader import StoreReader
    from asr_kd.targets.writer import StoreWriter, topk_from_log_probs

    meta = StoreMeta(teacher_fingerprints=[loaded.fingerprint], teacher_weights=[1.0], units_hash=loaded.tokenizer.units_hash(),
                     vocab_size=loaded.tokenizer.vocab_size, frame_shift_ms=loaded.frame_shift_ms,
                     subsampling=loaded.model.subsampling, k=k, quantization=quantization,
                     fbank=loaded.fbank_config.model_dump(mode="json"),
                     format_version=1)  # fixed top-k records; top-p and zstd (format 2): tools.bench.store_v2
    out = work / f"store-k{k}-{quantization}"
    shutil.rmtree(out, ignore_errors=True)
    writer = StoreWriter(out, meta, shard_size_utts=len(dense))
    exact = {u: topk_from_log_probs(lp, k) for u, lp in dense.items()}
    writer.write_shard(0, [(u, ids, probs) for u, (ids, probs) in exact.items()])
    writer.finalize(expected_shards=1)
    reader = StoreReader(out)
    stats = store_stats(reader)
    frames = {u: lp.shape[0] for u, lp in dense.items()}
    total = sum(frames.values())
    kl = sum(kl_dense_vs_stored(dense[u], *reader.get_sparse(u)) * frames[u] for u in dense) / total
    kl_exact = sum(kl_dense_vs_stored(dense[u], *exact[u]) * frames[u] for u in dense) / total
    return Row(k, quantization, stats.bytes_per_frame, stats.bytes_per_audio_second, kl, kl_exact, stats.mean_topk_mass)


def plot_kl(rows: list[Row], vocab: int, frame_shift_ms: float, out_png: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for q, marker in zip(QUANTS, "os"):
        rs = [r for r in rows if r.quantization == q]
        ax.plot([r.bytes_per_second for r in rs], [max(r.kl, 1e-6) for r in rs], marker=marker, label=f"top-k {q}")
        for r in rs:
            ax.annotate(f"k={r.k}", (r.bytes_per_second, max(r.kl, 1e-6)), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.axvline(4 * vocab * 1000 / frame_shift_ms, color="gray", ls="--", label=f"dense float32 (V={vocab}), KL 0")
    ax.axvline(MVQ_BYTES_PER_SECOND, color="tab:red", ls=":", label="icefall MVQ, 8 x 1 B / 20 ms")
    ax.axhline(0.01, color="tab:green", ls="-.", lw=0.8, label="target KL 0.01 nats")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("bytes per audio-second")
    ax.set_ylabel("mean KL(teacher || stored), nats per frame")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    return save_figure(fig, out_png)


# --------------------------------------------------------------------------------------- student WER
def student_wer_rows(pairs: list[tuple[str, str]]) -> list[dict]:
    """``[(store_dir, eval_dir)]`` -> rows with k, quantization, bytes per audio-second (from the store) and
    WER/CER (from ``eval_dir/wer.json``), sorted by bytes."""
    from asr_kd.targets.stats import store_stats
    from asr_kd.targets.reader import StoreReader

    rows = []
    for store, eval_dir in pairs:
        stats = store_stats(StoreReader(store))
        wer_path = Path(eval_dir) / "wer.json"
        if not wer_path.is_file():
            raise SystemExit(f"{wer_path}: not found; run 'asr-kd evaluate ... --out {eval_dir}' first")
        report = json.loads(wer_path.read_text())
        rows.append({"store": store, "eval": eval_dir, "k": stats.k, "quantization": stats.quantization,
                     "bytes_per_second": stats.bytes_per_audio_second, "wer": float(report["wer"]),
                     "cer": float(report.get("cer", float("nan")))})
    return sorted(rows, key=lambda r: r["bytes_per_second"])


def plot_wer(rows: list[dict], out_png: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([r["bytes_per_second"] for r in rows], [r["wer"] for r in rows], marker="o")
    for r in rows:
        ax.annotate(f"k={r['k']} {r['quantization']}", (r["bytes_per_second"], r["wer"]), textcoords="offset points",
                    xytext=(4, 4), fontsize=7)
    ax.axvline(MVQ_BYTES_PER_SECOND, color="tab:red", ls=":", label="icefall MVQ (400 B/s)")
    ax.set_xscale("log")
    ax.set_xlabel("soft-target bytes per audio-second")
    ax.set_ylabel("student WER (%)")
    ax.legend(fontsize=7)
    return save_figure(fig, out_png)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="12 utterances")
    p.add_argument("--model", help="teacher model dir (default: demo_teacher preset with random weights)")
    p.add_argument("--data", help="data dir (default: synthetic 2-6 s utterances)")
    p.add_argument("--utts", type=int, help="synthetic utterances (default 40, --quick 12)")
    p.add_argument("--student-wer", action="append", default=[], metavar="STORE=EVAL_DIR",
                   help="a student's eval dir (wer.json) with the store it was distilled from (repeatable)")
    add_output_args(p)
    args = p.parse_args()
    torch.set_num_threads(1)
    with scratch_dir(args.work, "bench-storage-") as work:
        model_dir = args.model or str(random_model_dir(work / "teacher", "demo_teacher"))
        n = args.utts or (12 if args.quick else 40)
        data_dir = args.data or str(synthetic_data(work / "corpus", n))
        dense, loaded = teacher_log_probs(model_dir, data_dir)
        vocab = loaded.tokenizer.vocab_size
        frames = sum(lp.shape[0] for lp in dense.values())
        ent = float(np.mean([-(lp.exp() * lp).sum(-1).mean().item() for lp in dense.values()]))
        rows = [measure(dense, loaded, work, k, q) for q in QUANTS for k in KS if k <= vocab]
        teacher_desc = (f"trained teacher {args.model} (fingerprint {loaded.fingerprint})" if args.model else
                        "demo_teacher preset with RANDOM weights (flat distributions: KL at small k is large; rerun "
                        "with --model TEACHER_DIR for a trained teacher)")
        shift = loaded.frame_shift_ms
        table_rows = [[r.k, r.quantization, f"{r.bytes_per_frame:.0f}", f"{r.bytes_per_second:.0f}", f"{r.topk_mass:.4f}",
                       f"{r.kl_unquantized:.5f}", f"{r.kl:.5f}"] for r in rows]
        table_rows.append([vocab, "dense float32", 4 * vocab, f"{4 * vocab * 1000 / shift:.0f}", "1", "0", "0"])
        table_rows.append(["-", "icefall MVQ (8 codebooks, 20 ms)", "8 per 20 ms", f"{MVQ_BYTES_PER_SECOND:.0f}", "-", "-",
                           "- (not comparable: codes of embeddings)"])
        png = plot_kl(rows, vocab, shift, PLOTS / "storage_kl_vs_bytes.png",
                      f"top-k soft targets, {'trained' if args.model else 'random-weight'} teacher, V={vocab}")
        k8 = next((r for r in rows if r.k == 8 and r.quantization == "log8"), None)
        body = [
            f"Teacher: {teacher_desc}. Data: {data_dir if args.data else f'{n} synthetic utterances of 2-6 s'}; "
            f"{frames} frames of {shift:g} ms; vocabulary {vocab} units; mean teacher entropy {ent:.3f} nats per frame "
            f"(uniform would be {np.log(vocab):.3f}).",
            "",
            table(["k", "quantization", "bytes/frame", "bytes/audio-s", "top-k mass", "KL exact top-k (nats)",
                   "KL stored (nats)"], table_rows),
            "",
            f"![KL vs bytes](docs/bench/{png.name})",
        ]
        if k8 is not None:
            body += ["", f"Targets at k=8 log8: <= 16 bytes/frame (measured {k8.bytes_per_frame:.0f}), mean KL < 0.01 nats "
                     f"(measured {k8.kl:.4f}{'' if args.model else ', random teacher'})."]
        if args.student_wer:
            pairs = [tuple(s.split("=", 1)) for s in args.student_wer]
            if any(len(pr) != 2 for pr in pairs):
                p.error("--student-wer takes STORE=EVAL_DIR")
            wrows = student_wer_rows(pairs)  # type: ignore[arg-type]
            wpng = plot_wer(wrows, PLOTS / "storage_wer_vs_bytes.png")
            body += ["", "Students distilled from each store:", "",
                     table(["k", "quantization", "bytes/audio-s", "WER %", "CER %", "eval dir"],
                           [[r["k"], r["quantization"], f"{r['bytes_per_second']:.0f}", f"{r['wer']:.2f}", f"{r['cer']:.2f}",
                             r["eval"]] for r in wrows]), "", f"![WER vs bytes](docs/bench/{wpng.name})"]
        publish("storage", "Soft-target storage: bytes vs KL", body, write=not args.no_write, also=[png])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
