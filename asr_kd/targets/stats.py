"""Statistics of a soft-target store (``asr-kd targets stats``) and the expected-frames rule.

Sizes are reported per stored frame and per audio-second; "hours" are frames x frame shift, i.e.
the audio the targets cover (rejected utterances excluded).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from asr_kd.errors import StoreError
from asr_kd.targets.reader import StoreReader

ENTROPY_BINS = 10


def expected_frames(duration_s: float, frame_shift_ms: float = 10.0, subsampling: int = 4, frame_length_ms: float = 25.0,
                    sample_rate: int = 16000, snip_edges: bool = True) -> int:
    """Output frames a model produces for ``duration_s`` seconds of audio.

    Rule (Kaldi fbank, then our 4x front end):

    - samples ``S = round(duration_s * sample_rate)``; window ``W`` and shift ``H`` in samples
      (25 ms / 10 ms at 16 kHz: 400 / 160);
    - fbank frames (Kaldi ``snip_edges=true``, torchaudio's default): ``0 if S < W else 1 + (S - W) // H``;
      with ``snip_edges=false``: ``(S + H // 2) // H``;
    - output frames: ``fbank_frames // subsampling`` (the causal front end drops a trailing 1-3 frames).

    ``utt2dur`` holds durations rounded to a few decimals, so callers allow +-1 frame.
    """
    if duration_s < 0:
        raise StoreError(f"negative duration {duration_s}")
    s = int(round(duration_s * sample_rate))
    w = int(round(frame_length_ms * sample_rate / 1000))
    h = int(round(frame_shift_ms * sample_rate / 1000))
    if snip_edges:
        fbank = 0 if s < w else 1 + (s - w) // h
    else:
        fbank = (s + h // 2) // h
    return fbank // max(subsampling, 1)


def expected_frames_for_meta(duration_s: float, meta) -> int:
    """``expected_frames`` with the framing recorded in a store's meta (its ``fbank`` dict and subsampling)."""
    fb = meta.fbank or {}
    return expected_frames(duration_s, frame_shift_ms=float(fb.get("frame_shift_ms", 10.0)), subsampling=meta.subsampling,
                           frame_length_ms=float(fb.get("frame_length_ms", 25.0)),
                           sample_rate=int(fb.get("sample_rate", 16000)), snip_edges=bool(fb.get("snip_edges", True)))


def stored_entropy(probs: np.ndarray) -> np.ndarray:
    """Per-frame entropy in nats of the stored top-k renormalized to sum to 1, ``(T,)``.

    This is the entropy the student is trained towards when the KD loss renormalizes the top-k; it is
    at most ``ln k`` and below the teacher's full-distribution entropy when mass was cut off.
    """
    p = np.asarray(probs, dtype=np.float64)
    s = p.sum(axis=1, keepdims=True)
    q = np.divide(p, s, out=np.zeros_like(p), where=s > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(q > 0, -q * np.log(q), 0.0)
    return terms.sum(axis=1)


def kl_dense_vs_stored(dense_log_probs: Any, ids: Any, probs: Any, floor: float = 1e-10) -> float:
    """Mean per-frame KL(p_dense || q_stored) in nats.

    ``dense_log_probs``: the teacher's full ``(T, V)`` log-probabilities (natural log, at the store's
    temperature; torch or numpy). ``q_stored`` is the stored top-k made a distribution the way
    ``StoreReader.get_dense(fill="uniform")`` does: stored values in place, the missing mass spread
    evenly over the other ``V - n_t`` units (``n_t`` = entries of frame t with probability > 0, so the
    zero padding of ragged v2 frames is ignored) (each at least ``floor``, so KL stays finite when the stored
    mass is >= 1), renormalized. 0 when nothing was lost; grows with the mass cut off by top-k and the
    quantization error.
    """
    lp = np.asarray(dense_log_probs.detach().cpu().numpy() if hasattr(dense_log_probs, "detach") else dense_log_probs,
                    dtype=np.float64)
    ids = np.asarray(ids, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    if lp.ndim != 2 or ids.shape != probs.shape or ids.shape[0] != lp.shape[0]:
        raise StoreError(f"kl_dense_vs_stored: shapes do not match: dense {lp.shape}, ids {ids.shape}, probs {probs.shape}")
    t, v = lp.shape
    if t == 0:
        return 0.0
    valid = probs > 0  # entries with probability 0 are the padding of ragged (v2) frames
    others = v - valid.sum(axis=1, keepdims=True)
    rest = np.maximum(1.0 - probs.sum(axis=1, keepdims=True), floor * others) / np.maximum(others, 1)
    q = np.broadcast_to(np.where(others > 0, rest, 0.0), (t, v)).copy()
    rows, cols = np.nonzero(valid)
    q[rows, ids[rows, cols]] = np.maximum(probs[rows, cols], floor)
    q /= q.sum(axis=1, keepdims=True)
    p = np.exp(lp)
    kl = (p * (lp - np.log(q))).sum(axis=1)
    return float(kl.mean())


@dataclasses.dataclass
class StoreStats:
    utterances: int
    frames: int
    hours: float
    payload_bytes: int
    bytes_per_frame: float
    bytes_per_audio_second: float
    mean_topk_mass: float
    mean_entropy: float
    entropy_edges: list[float]
    entropy_counts: list[int]
    k: int
    quantization: str
    frame_shift_ms: float
    rejects: int
    k_histogram: list[int] = dataclasses.field(default_factory=list)  # frames storing 1, 2, ..., k units
    mean_k: float = 0.0  # units stored per frame
    top_p: float = 1.0
    format_version: int = 1
    codec: str | None = None
    kl_nats: float | None = None
    unmapped_mass: float | None = None  # meta: mean per-frame probability of foreign teacher units with no student unit
    unit_maps: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # meta: per foreign teacher

    def as_json(self) -> dict[str, Any]:
        """The ``--json`` object: the documented keys first, then the details."""
        d = {"utterances": self.utterances, "frames": self.frames, "hours": self.hours, "bytes_per_frame": self.bytes_per_frame,
             "mean_topk_mass": self.mean_topk_mass, "kl_nats": self.kl_nats}
        d.update({"bytes_per_audio_second": self.bytes_per_audio_second, "payload_bytes": self.payload_bytes,
                  "mean_entropy_nats": self.mean_entropy, "entropy_histogram": {"edges": self.entropy_edges,
                                                                               "counts": self.entropy_counts},
                  "k": self.k, "quantization": self.quantization, "frame_shift_ms": self.frame_shift_ms,
                  "rejects": self.rejects, "mean_k": self.mean_k,
                  "k_histogram": {str(i + 1): c for i, c in enumerate(self.k_histogram)}, "top_p": self.top_p,
                  "format_version": self.format_version, "codec": self.codec})
        if self.unit_maps:
            d.update({"unmapped_mass": self.unmapped_mass, "unit_maps": self.unit_maps})
        return d


def store_stats(reader: StoreReader, bins: int = ENTROPY_BINS) -> StoreStats:
    """One sequential pass over the store: sizes, top-k mass and the entropy histogram."""
    m = reader.meta
    edges = np.linspace(0.0, math.log(m.k) if m.k > 1 else 1.0, bins + 1)
    counts = np.zeros(bins, dtype=np.int64)
    frames = 0
    mass_sum = 0.0
    ent_sum = 0.0
    k_hist = np.zeros(m.k, dtype=np.int64)
    for _, _, probs in reader.iter_shards():
        if probs.shape[0] == 0:
            continue
        # units stored per frame = entries with probability > 0 (v2 pads ragged frames with zeros)
        k_hist += np.bincount(np.maximum((probs > 0).sum(axis=1), 1) - 1, minlength=m.k)[: m.k]
        frames += probs.shape[0]
        mass_sum += float(probs.astype(np.float64).sum())
        ent = stored_entropy(probs)
        ent_sum += float(ent.sum())
        counts += np.histogram(np.clip(ent, edges[0], edges[-1]), bins=edges)[0]
    payload = reader.payload_bytes()
    seconds = frames * m.frame_shift_ms / 1000.0
    return StoreStats(
        utterances=len(reader), frames=frames, hours=seconds / 3600.0, payload_bytes=payload,
        bytes_per_frame=payload / frames if frames else 0.0, bytes_per_audio_second=payload / seconds if seconds else 0.0,
        mean_topk_mass=mass_sum / frames if frames else 0.0, mean_entropy=ent_sum / frames if frames else 0.0,
        entropy_edges=[float(e) for e in edges], entropy_counts=[int(c) for c in counts], k=m.k,
        quantization=m.quantization, frame_shift_ms=m.frame_shift_ms, rejects=len(reader.rejects()),
        unmapped_mass=m.unmapped_mass,
        unit_maps=[{"path": t.get("path"), "frame_shift_ms": t.get("frame_shift_ms"),
                    "frame_conversion": t.get("frame_conversion"), **t["unit_map"]} for t in m.teacher_details if t.get("unit_map")],
        k_histogram=[int(c) for c in k_hist], mean_k=float((k_hist * np.arange(1, m.k + 1)).sum() / frames) if frames else 0.0,
        top_p=m.top_p, format_version=m.format_version, codec=m.codec,
    )


def _setting(stats: StoreStats) -> str:
    if stats.format_version == 1 or stats.top_p >= 1.0:
        kind = f"top-{stats.k}"
    else:
        kind = f"top-p {stats.top_p:g}, k <= {stats.k}"
    return f"{kind}, {stats.quantization}, format v{stats.format_version}" + (f", {stats.codec}" if stats.codec else "")


def format_stats(stats: StoreStats, width: int = 40) -> str:
    """Human-readable report with a text histogram of per-frame entropies."""
    lines = [
        f"utterances      {stats.utterances}  ({stats.rejects} rejected by the labeler)",
        f"frames          {stats.frames}  ({stats.frame_shift_ms:g} ms each)",
        f"audio           {stats.hours:.3f} h",
        f"payload         {stats.payload_bytes} bytes: {stats.bytes_per_frame:.2f} B/frame, "
        f"{stats.bytes_per_audio_second:.1f} B per audio-second ({_setting(stats)})",
        f"mass kept       {stats.mean_topk_mass:.4f} (mean per-frame sum of stored probabilities)",
        f"units per frame {stats.mean_k:.2f} mean; histogram: "
        + ", ".join(f"k={i + 1}: {100.0 * c / max(stats.frames, 1):.1f}%" for i, c in enumerate(stats.k_histogram) if c),
        f"entropy         {stats.mean_entropy:.3f} nats mean (stored top-k renormalized; max ln k = "
        f"{math.log(stats.k):.3f})",
    ]
    if stats.kl_nats is not None:
        lines.append(f"KL(teacher||stored) {stats.kl_nats:.5f} nats per frame")
    for um in stats.unit_maps:
        mass = "not recorded" if stats.unmapped_mass is None else f"{stats.unmapped_mass:.4f}"
        lines.append(f"unit map        {um['path']}: {um['mapped']} of {um['teacher_units']} teacher units mapped, "
                     f"unmapped {um['unmapped_symbols']} (rule {um['rule']}, {um['source']}); "
                     f"{um['frame_shift_ms']:g} ms frames by {um['frame_conversion']}")
    if stats.unit_maps:
        lines.append(f"unmapped mass   {mass} (mean per-frame teacher probability with no student unit, all teachers)")
    lines.append("entropy histogram (nats):")
    top = max(stats.entropy_counts) if stats.entropy_counts and max(stats.entropy_counts) > 0 else 1
    total = max(sum(stats.entropy_counts), 1)
    for i, c in enumerate(stats.entropy_counts):
        lo, hi = stats.entropy_edges[i], stats.entropy_edges[i + 1]
        bar = "#" * int(round(width * c / top))
        lines.append(f"  [{lo:5.2f}, {hi:5.2f}) {bar:<{width}} {c} ({100.0 * c / total:.1f}%)")
    return "\n".join(lines)


def teacher_kl(reader: StoreReader, teacher_dirs: list[str], data_dir: str, sample: int = 50, seed: int = 0,
               units_from: str | None = None, unit_map_files: list[str] | None = None) -> float:
    """Mean per-frame KL(teacher dense || stored) in nats over ``sample`` random stored utterances.

    The teachers are run again (same weights and temperature as recorded in the store's meta, whose
    fingerprints must match; for Hugging Face teachers also the recorded frame conversion and unmapped
    rule, with ``units_from``/``unit_map_files`` as given to ``asr-kd label``) on the utterances' audio
    from ``data_dir``; their averaged dense distribution in the store's units and frames is compared
    with the stored top-k by ``kl_dense_vs_stored``.
    """
    import random

    import torch

    from asr_kd.data.sources import open_source, read_item
    from asr_kd.label.teacher import TeacherEnsemble

    m = reader.meta
    foreign = [t for t in m.teacher_details if t.get("unit_map")]
    conversion = next((t["frame_conversion"] for t in foreign if t.get("frame_conversion") not in (None, "none")), "mean")
    rule = foreign[0]["unit_map"]["rule"] if foreign else "renormalize"
    ens = TeacherEnsemble(teacher_dirs, m.teacher_weights or None, top_k=m.k, temperature=m.temperature,
                          units_from=units_from, unit_map_files=unit_map_files, unmapped_rule=rule,
                          frame_conversion=conversion)
    if sorted(ens.fingerprints) != sorted(m.teacher_fingerprints):
        raise StoreError(f"{reader.store_dir}: teachers {ens.fingerprints} are not the ones "
                         f"that made the store ({m.teacher_fingerprints}); pass the same --teacher dirs")
    if ens.tokenizer.units_hash() != m.units_hash:
        raise StoreError(f"store units {m.units_hash} differ from the teachers' {ens.tokenizer.units_hash()}; pass the "
                         "--units-from that labeling used")
    data = open_source(data_dir)  # a data dir, an audio shard dir or a lhotse CutSet, as 'asr-kd label --data'
    known = set(data.utt_ids)
    utts = [u for u in reader.utt_ids if u in known]
    if not utts:
        raise StoreError(f"no stored utterance is in {data_dir}; pass the data dir that was labeled")
    chosen = sorted(random.Random(seed).sample(utts, min(sample, len(utts))))
    total, frames = 0.0, 0
    for utt in chosen:
        wave = torch.from_numpy(read_item(data.item(utt), ens.sample_rate, None, False)[0])
        probs = ens.dense([wave])[0][0]
        ids, stored = reader.get_sparse(utt)
        n = min(probs.shape[0], ids.shape[0])
        total += kl_dense_vs_stored(probs[:n].clamp_min(1e-30).log(), ids[:n], stored[:n]) * n
        frames += n
    return total / max(frames, 1)
