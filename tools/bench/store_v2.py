"""Soft-target store v2: KL to the teacher against bytes per frame, and read speed v1 vs v2.

Part 1 (``--model TEACHER --data DIR``): the teacher's dense per-frame distributions (40 ms frames)
are written as real stores (``StoreWriter``) in every variant below, read back (``StoreReader``) and
compared with ``kl_dense_vs_stored`` (mean per-frame KL(teacher || stored) in nats; the missing mass
spread evenly over the units not stored):

- fixed top-k, k in {1, 2, 4, 8, 16}: format v1 (raw 2k-byte records) and format v2 with zstd;
- top-p, p in {0.99, 0.995, 0.999, 0.9995, 0.9999}, k_max in {8, 16}: v2 without compression
  (codec none) and with zstd;
- float16 references: top-8 float16 (v1) and the dense distribution in float16 (2 x V bytes/frame).

Bytes are the shard payload (``targets stats``' bytes_per_frame). For the chosen setting the section
also gives what an ideal static entropy coder would need (the rank-conditioned order-0 entropy of the
per-frame counts, unit ids and codes: a lower bound for a range coder with per-shard tables), to
decide whether a range coder would pay over zstd. The plot is ``docs/bench/store_v2_kl_vs_bytes.png``.

Part 2 (``--read-store V1_STORE``): read speed during training, v1 vs v2 side by side in one run:
the v1 store (e.g. the 10,000-utterance demo store) is read as is and converted to v2 with the chosen
setting (top-p applied to its decoded top-k), then both are timed by ``time_store_reads`` (random
access by id, as the training loop reads, and sequential), one process, one core.

``--student-wer STORE=EVAL_DIR`` (repeatable): students distilled from the v1 store and the chosen v2
store, WER against bytes per audio-second, as in ``tools.bench.storage``. Without it the section
says that comparison is pending.

``--labeled STORE`` (repeatable): stores that ``asr-kd label`` made from the same teacher and data
(e.g. its default and ``--format-version 1 --top-p 1``), reported as ``targets stats`` reports them.

    python -m tools.bench.store_v2 --model TEACHER_DIR --data DEV_DIR [--read-store V1_STORE]
        [--labeled STORE ...] [--student-wer STORE=EVAL_DIR ...] [--work DIR] [--no-write]
"""

from __future__ import annotations

import argparse
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from tools.bench.common import ROOT, add_output_args, publish, save_figure, scratch_dir, table, time_store_reads
from tools.bench.storage import teacher_log_probs

KS = (1, 2, 4, 8, 16)
TOP_PS = (0.99, 0.995, 0.999, 0.9995, 0.9999)
K_MAXES = (8, 16)
PLOTS = ROOT / "docs" / "bench"
KL_TARGET = 0.01  # nats per frame
BYTES_TARGET = 8.0  # per frame (200 B per audio-second at 40 ms)


@dataclass
class Row:
    family: str  # "top-k v1", "top-k v2 zstd", "top-p v2 none", "top-p v2 zstd", "float16"
    k: int
    top_p: float
    quantization: str
    bytes_per_frame: float
    bytes_per_second: float
    kl: float
    mass: float
    mean_k: float
    setting: dict


def write_variant(dense: dict[str, torch.Tensor], loaded, out: Path, shard_size: int = 256, **setting) -> Row:
    from asr_kd.targets.stats import kl_dense_vs_stored, store_stats
    from asr_kd.targets.meta import StoreMeta
    from asr_kd.targets.reader import StoreReader
    from asr_kd.targets.writer import StoreWriter, topk_from_log_probs

    meta = StoreMeta(teacher_fingerprints=[loaded.fingerprint], teacher_weights=[1.0], units_hash=loaded.tokenizer.units_hash(),
                     vocab_size=loaded.tokenizer.vocab_size, frame_shift_ms=loaded.frame_shift_ms,
                     subsampling=loaded.model.subsampling, fbank=loaded.fbank_config.model_dump(mode="json"), **setting)
    shutil.rmtree(out, ignore_errors=True)
    writer = StoreWriter(out, meta, shard_size_utts=shard_size)
    utts = sorted(dense)
    for s, first in enumerate(range(0, len(utts), shard_size)):
        writer.write_shard(s, [(u, *topk_from_log_probs(dense[u], meta.k)) for u in utts[first: first + shard_size]])
    writer.finalize()
    reader = StoreReader(out)
    stats = store_stats(reader)
    frames = {u: dense[u].shape[0] for u in utts}
    kl = sum(kl_dense_vs_stored(dense[u], *reader.get_sparse(u)) * frames[u] for u in utts) / sum(frames.values())
    if meta.format_version == 1:
        family = "top-k v1" if meta.quantization == "log8" else "float16"
    else:
        family = f"{'top-k' if meta.top_p >= 1 else 'top-p'} v2 {meta.codec}"
    return Row(family, meta.k, meta.top_p, meta.quantization, stats.bytes_per_frame, stats.bytes_per_audio_second, kl,
               stats.mean_topk_mass, stats.mean_k, setting)


def dense_float16_row(dense: dict[str, torch.Tensor], vocab: int, shift_ms: float) -> Row:
    from asr_kd.targets.stats import kl_dense_vs_stored

    total = frames = 0.0
    ids = None
    for lp in dense.values():
        p16 = lp.exp().to(torch.float16).float().numpy()
        ids = np.broadcast_to(np.arange(vocab), p16.shape)
        total += kl_dense_vs_stored(lp, ids, p16) * lp.shape[0]
        frames += lp.shape[0]
    return Row("float16", vocab, 1.0, "float16 dense", 2 * vocab, 2 * vocab * 1000 / shift_ms, total / frames, 1.0, vocab, {})


def entropy_bound(dense: dict[str, torch.Tensor], top_p: float, k_max: int, vocab: int) -> float:
    """Bytes per frame an ideal static entropy coder needs for the v2 payload: the order-0 entropy of
    the counts plus, per rank r, of the unit ids and of the log8 codes at rank r (tables not counted)."""
    from asr_kd.targets import codec, quant
    from asr_kd.targets.writer import topk_from_log_probs

    counts_all, ids_r, codes_r = [], {r: [] for r in range(k_max)}, {r: [] for r in range(k_max)}
    for lp in dense.values():
        ids, probs = topk_from_log_probs(lp, k_max)
        counts = codec.select_counts(probs, top_p)
        codes = quant.encode(probs, "log8")
        counts_all.append(counts)
        for r in range(k_max):
            keep = counts > r
            ids_r[r].append(ids[keep, r])
            codes_r[r].append(codes[keep, r])

    def bits(x: np.ndarray, n: int) -> float:
        c = np.bincount(x.astype(np.int64), minlength=n).astype(np.float64)
        c = c[c > 0]
        return float(-(c * np.log2(c / c.sum())).sum())

    counts = np.concatenate(counts_all)
    total = bits(counts, k_max + 1)
    for r in range(k_max):
        total += bits(np.concatenate(ids_r[r]), vocab) + bits(np.concatenate(codes_r[r]), 256)
    return total / 8 / counts.size


def store_label(st) -> str:
    """How a store was made, as the student table and the plot name it (``st``: ``StoreStats``)."""
    if st.quantization == "float16":
        return f"top-{st.k} float16 (v{st.format_version})"
    if st.top_p < 1:
        return f"top-p {st.top_p:g}, k_max {st.k} (v{st.format_version} {st.codec or 'raw'})"
    return f"top-{st.k} (v{st.format_version} {st.codec or 'raw'})"


def student_rows(pairs: list[tuple[str, str]]) -> list[dict]:
    """``[(store_dir, eval_dir)]`` -> one row per student: the store's ``targets stats`` figures and the
    student's WER/CER from ``eval_dir/wer.json``, sorted by bytes per frame."""
    import json

    from asr_kd.targets.stats import store_stats
    from asr_kd.targets.reader import StoreReader

    rows = []
    for store, eval_dir in pairs:
        st = store_stats(StoreReader(store))
        wer_path = Path(eval_dir) / "wer.json"
        if not wer_path.is_file():
            raise SystemExit(f"{wer_path}: not found; run 'asr-kd evaluate --model STUDENT --data DEV --out {eval_dir}' first")
        report = json.loads(wer_path.read_text())
        seed = "?"
        config = Path(eval_dir).parent / "config.yaml"  # EVAL_DIR is MODEL_DIR/eval_<set> as the recipes write it
        if config.is_file():
            import yaml

            seed = (yaml.safe_load(config.read_text()).get("train") or {}).get("seed", "?")
        rows.append({"store": store, "eval": eval_dir, "label": store_label(st), "seed": seed, "k": st.k, "top_p": st.top_p,
                     "format_version": st.format_version, "quantization": st.quantization,
                     "bytes_per_frame": st.bytes_per_frame, "bytes_per_second": st.bytes_per_audio_second,
                     "mean_k": st.mean_k, "mass": st.mean_topk_mass, "wer": float(report["wer"]),
                     "cer": float(report.get("cer", float("nan")))})
    return sorted(rows, key=lambda r: r["bytes_per_frame"])


def plot(rows: list[Row], chosen: Row, out_png: Path, title: str, students: list[dict] | None = None) -> Path:
    """KL against bytes per frame for every variant; with ``students``, a second panel with the dev WER of
    the student distilled from each store against that store's bytes per frame."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    if students:
        fig, (ax, ax_wer) = plt.subplots(1, 2, figsize=(13, 5), gridspec_kw={"width_ratios": [3, 2]})
    else:
        fig, ax = plt.subplots(figsize=(7.5, 5))
    styles = {"top-k v1": ("o", "-"), "top-k v2 zstd": ("o", "--"), "top-p v2 none": ("s", ":"),
              "top-p v2 zstd": ("s", "-")}
    for family, (marker, ls) in styles.items():
        for k_max in sorted({r.k for r in rows if r.family == family}) if family.startswith("top-p") else [None]:
            rs = [r for r in rows if r.family == family and (k_max is None or r.k == k_max)]
            if not rs:
                continue
            label = family + (f", k_max {k_max}" if k_max else "")
            ax.plot([r.bytes_per_frame for r in rs], [r.kl for r in rs], marker=marker, ls=ls, label=label)
            for r in rs:
                note = f"k={r.k}" if family.startswith("top-k") else f"p={r.top_p:g}"
                if family.startswith("top-k v1") or (family == "top-p v2 zstd" and k_max == 8):
                    ax.annotate(note, (r.bytes_per_frame, r.kl), textcoords="offset points", xytext=(3, 3), fontsize=6)
    for r in rows:
        if r.family == "float16":
            ax.plot([r.bytes_per_frame], [max(r.kl, 1e-6)], marker="^", ls="none", color="gray")
            ax.annotate(f"{r.quantization if 'dense' in r.quantization else 'top-8 float16'}", (r.bytes_per_frame, max(r.kl, 1e-6)),
                        textcoords="offset points", xytext=(3, -9), fontsize=6, color="gray")
    ax.plot([chosen.bytes_per_frame], [chosen.kl], marker="*", ms=14, color="red", ls="none", label="chosen default")
    ax.axhline(KL_TARGET, color="tab:green", ls="-.", lw=0.8, label=f"KL target {KL_TARGET} nats")
    ax.axvline(BYTES_TARGET, color="tab:red", ls=":", lw=0.8, label=f"{BYTES_TARGET:g} bytes/frame (200 B/s)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks([1, 2, 4, 8, 16, 32, 64])
    ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.set_xlabel("bytes per 40 ms frame (shard payload)")
    ax.set_ylabel("mean KL(teacher || stored), nats per frame")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=6, loc="upper right")
    if students:
        for r in students:
            chosen_store = r["format_version"] == 2 and r["top_p"] == chosen.top_p and r["k"] == chosen.k
            ax_wer.plot([r["bytes_per_frame"]], [r["wer"]], marker="*" if chosen_store else "o",
                        ms=14 if chosen_store else 6, color="red" if chosen_store else "tab:blue", ls="none")
            ax_wer.annotate(r["label"], (r["bytes_per_frame"], r["wer"]), textcoords="offset points", xytext=(4, 3),
                            fontsize=6)
        ax_wer.axvline(BYTES_TARGET, color="tab:red", ls=":", lw=0.8)
        ax_wer.set_xscale("log")
        ax_wer.set_xticks([1, 2, 4, 8, 16, 32])
        ax_wer.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax_wer.set_xlabel("bytes per 40 ms frame of the student's store")
        ax_wer.set_ylabel("KD student dev WER %")
        ax_wer.set_title("KD students, 1,500 steps each (2 points: seeds 0, 1)", fontsize=9)
    return save_figure(fig, out_png)


def convert_to_v2(v1_store: Path, out: Path, top_p: float, block_frames: int | None = None) -> Path:
    """The v1 store's decoded top-k written as a v2 store with ``top_p`` (same shard plan)."""
    from asr_kd.targets.meta import StoreMeta
    from asr_kd.targets.reader import StoreReader
    from asr_kd.targets.writer import StoreWriter

    src = StoreReader(v1_store)
    shutil.rmtree(out, ignore_errors=True)
    meta = StoreMeta.model_validate({**src.meta.model_dump(exclude={"created", "num_shards"}), "format_version": 2,
                                     "top_p": top_p, "codec": "zstd",
                                     **({"block_frames": block_frames} if block_frames else {})})
    per_shard: dict[int, list] = {}
    for utt in src.utt_ids:
        per_shard.setdefault(src._entry(utt)[0], []).append(utt)
    writer = StoreWriter(out, meta, shard_size_utts=max(len(u) for u in per_shard.values()))
    for s in src.shard_ids:
        writer.write_shard(s, [(u, *src.get_sparse(u)) for u in per_shard.get(s, [])])
    writer.finalize(expected_shards=len(src.shard_ids))
    return out


def main() -> int:
    from asr_kd.targets.codec import DEFAULT_BLOCK_FRAMES, DEFAULT_TOP_P

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="trained teacher model dir")
    p.add_argument("--data", required=True, help="data dir to label (e.g. the demo dev set)")
    p.add_argument("--read-store", help="a v1 store to time against its v2 conversion (read speed)")
    p.add_argument("--top-p", type=float, default=DEFAULT_TOP_P, help="the chosen setting (default: asr-kd label's)")
    p.add_argument("--k-max", type=int, default=8, help="the chosen k_max (default: asr-kd label's --top-k)")
    p.add_argument("--labeled", action="append", default=[], metavar="STORE",
                   help="a store that 'asr-kd label' made from --model on --data: its 'targets stats' figures and KL "
                   "to the teacher over every utterance (repeatable)")
    p.add_argument("--student-wer", action="append", default=[], metavar="STORE=EVAL_DIR",
                   help="a student's eval dir (wer.json) with the store it was distilled from (repeatable)")
    add_output_args(p)
    args = p.parse_args()
    torch.set_num_threads(1)
    with scratch_dir(args.work, "bench-store-v2-") as work:
        dense, loaded = teacher_log_probs(args.model, args.data)
        vocab, shift = loaded.tokenizer.vocab_size, loaded.frame_shift_ms
        frames = sum(lp.shape[0] for lp in dense.values())
        rows = [write_variant(dense, loaded, work / f"v1-k{k}", k=k, format_version=1) for k in KS]
        rows += [write_variant(dense, loaded, work / f"v2-k{k}", k=k) for k in KS]
        for codec_name in ("none", "zstd"):
            rows += [write_variant(dense, loaded, work / f"v2-p{tp}-k{km}-{codec_name}", k=km, top_p=tp, codec=codec_name)
                     for km in K_MAXES for tp in TOP_PS]
        rows.append(write_variant(dense, loaded, work / "v1-k8-f16", k=8, format_version=1, quantization="float16"))
        rows.append(dense_float16_row(dense, vocab, shift))
        chosen = write_variant(dense, loaded, work / "chosen", k=args.k_max, top_p=args.top_p)
        bound = entropy_bound(dense, args.top_p, args.k_max, vocab)
        pairs = [tuple(s.split("=", 1)) for s in args.student_wer]
        if any(len(pr) != 2 for pr in pairs):
            p.error("--student-wer takes STORE=EVAL_DIR")
        students = student_rows(pairs) if pairs else []  # type: ignore[arg-type]
        png = plot(rows, chosen, PLOTS / "store_v2_kl_vs_bytes.png",
                   f"{Path(args.model).name} on {Path(args.data).name}: {frames} frames of {shift:g} ms, V={vocab}",
                   students)
        body = [
            f"Teacher: {args.model} (fingerprint {loaded.fingerprint}); data: {args.data}, {len(dense)} utterances, "
            f"{frames} frames of {shift:g} ms; vocabulary {vocab} units. KL = mean per-frame KL(teacher dense || stored) "
            "in nats, missing mass spread evenly over the units not stored; bytes = shard payload per frame.",
            "",
            table(["variant", "k (max)", "top-p", "mean k", "bytes/frame", "bytes/audio-s", "mass kept", "KL (nats)"],
                  [[r.family + ("" if r.quantization == "log8" else f" ({r.quantization})"), r.k, f"{r.top_p:g}",
                    f"{r.mean_k:.2f}", f"{r.bytes_per_frame:.2f}", f"{r.bytes_per_second:.0f}", f"{r.mass:.4f}",
                    f"{r.kl:.5f}"] for r in rows]),
            "",
            f"![KL vs bytes per frame](docs/bench/{png.name})",
            "",
            f"Chosen default of `asr-kd label` (format v2, top-p {args.top_p:g}, k_max {args.k_max}, log8, zstd blocks of "
            f">= {DEFAULT_BLOCK_FRAMES} frames, one zstd frame per column): **{chosen.bytes_per_frame:.2f} bytes/frame = "
            f"{chosen.bytes_per_second:.0f} B per "
            f"audio-second, KL {chosen.kl:.4f} nats**, mean {chosen.mean_k:.2f} units per frame, mass kept "
            f"{chosen.mass:.4f} (targets: <= {BYTES_TARGET:g} bytes/frame with KL < {KL_TARGET}: "
            f"{'met' if chosen.bytes_per_frame <= BYTES_TARGET and chosen.kl < KL_TARGET else 'NOT met'}; aim <= 5 "
            f"bytes/frame: {'met' if chosen.bytes_per_frame <= 5 else 'not met'}).",
            "",
            f"Range coder vs zstd for this setting: an ideal static entropy coder (rank-conditioned order-0 entropy of "
            f"counts, ids and codes, tables free) would need {bound:.2f} bytes/frame against zstd's "
            f"{chosen.bytes_per_frame:.2f}, i.e. at most {100 * (1 - bound / chosen.bytes_per_frame):.0f} % less; zstd "
            "is kept: a maintained PyPI codec with a C decoder and random access per block, where a range coder "
            "would need per-shard frequency tables and a second decoder to maintain and keep fast; left as future "
            "work.",
        ]
        if args.labeled:
            from asr_kd.targets.stats import store_stats, teacher_kl
            from asr_kd.targets.reader import StoreReader

            lrows = []
            for store in args.labeled:
                reader = StoreReader(store)
                st = store_stats(reader)
                kl = teacher_kl(reader, [args.model], args.data, sample=len(reader))
                m = reader.meta
                lrows.append([store, m.format_version, m.k, f"{m.top_p:g}", m.codec or "-", f"{st.bytes_per_frame:.2f}",
                              f"{st.bytes_per_audio_second:.0f}", f"{st.mean_topk_mass:.4f}", f"{st.mean_k:.2f}",
                              " ".join(f"{c}" for c in st.k_histogram), f"{kl:.5f}"])
            body += ["", "Stores made by `asr-kd label` itself (`targets stats` figures; KL to the teacher over every "
                     "utterance, as `targets stats --teacher` computes it):", "",
                     table(["store", "format", "k (max)", "top-p", "codec", "bytes/frame", "bytes/audio-s", "mass kept",
                            "mean k", "frames with k = 1, 2, ...", "KL (nats)"], lrows)]
        if args.read_store:
            v2_store = convert_to_v2(Path(args.read_store), work / "read-v2", args.top_p)
            from asr_kd.targets.reader import StoreReader

            r1 = time_store_reads(StoreReader(args.read_store))
            r2 = time_store_reads(StoreReader(v2_store))
            body += ["", f"Read speed during training, v1 vs v2 side by side (one process, one core, page cache, best of 3): "
                     f"{args.read_store} ({r1['utts']:,} utterances, {r1['frames']:,} frames, top-8 log8) as is (v1) and "
                     f"converted to v2 top-p {args.top_p:g} zstd:", "",
                     table(["store", "payload MB", "bytes/frame", "random by id (get_sparse) frames/s",
                            "sequential (iter_shards) frames/s"],
                           [[name, f"{r['bytes'] / 1e6:.2f}", f"{r['bytes'] / r['frames']:.2f}", f"{r['random_fps']:,.0f}",
                             f"{r['seq_fps']:,.0f}"] for name, r in (("v1 (fixed top-8, memmap)", r1),
                                                                      ("v2 (top-p, zstd blocks)", r2))]),
                     "", f"Target: >= 1,000,000 frames/s on one core (v2 random access: "
                     f"{'met' if r2['random_fps'] >= 1e6 else 'NOT met'})."]
        if students:
            body += ["", "KD students distilled from stores of the whole training set (labeled + unlabeled) made by "
                     "`asr-kd label` with each setting, everything else as the demo recipe's KD student (the same 1,500 "
                     "optimizer steps; the training seed in its column); dev WER from `asr-kd evaluate`:", "",
                     table(["store", "bytes/frame", "bytes/audio-s", "mean k", "mass kept", "student seed", "dev WER %",
                            "dev CER %", "eval dir"],
                           [[r["label"], f"{r['bytes_per_frame']:.2f}", f"{r['bytes_per_second']:.0f}", f"{r['mean_k']:.2f}",
                             f"{r['mass']:.4f}", r["seed"], f"{r['wer']:.2f}", f"{r['cer']:.2f}", r["eval"]] for r in students])]
            by_store: dict[str, list[float]] = {}
            for r in students:
                by_store.setdefault(r["label"], []).append(r["wer"])
            means = [f"{label} {sum(w) / len(w):.2f} % ({len(w)} seeds)" for label, w in by_store.items() if len(w) > 1]
            if means:
                body += ["", "Mean dev WER over student seeds: " + "; ".join(means) + "."]
        else:
            body += ["", "Student dev WER per variant: not measured in this run; add `--student-wer STORE=EVAL_DIR` per "
                     "store (a KD student's eval dir and the store it was distilled from)."]
        publish("store_v2", "Soft-target store v2: KL vs bytes per frame, read speed v1 vs v2", body,
                write=not args.no_write, also=[png])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
