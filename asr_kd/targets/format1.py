"""Store format version 1: fixed top-k records, raw and uncompressed (still read; written with ``--format-version 1``).

A frame is a fixed-size record of ``k`` unit ids and ``k`` probability codes, largest first
(``quant.record_dtype``: 16 bytes at top-8 log8 with a vocabulary of at most 256 units), and a shard
``.bin`` is the records of its utterances back to back, nothing else: no header, no per-row framing.
An utterance is the contiguous slice ``[offset, offset + frames)`` of the shard read as a numpy
``memmap`` of records, so reading it by id is a page-cache read and a dequantization, with no
decompression. The marker records ``record_bytes`` (the record size) beside the common fields
(``asr_kd.targets.layout``); its ``utts`` rows are ``[utt, offset, frames]``. Offsets and frames
are in output frames (records) of ``meta.frame_shift_ms`` (40 ms), not bytes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from asr_kd.errors import StoreError
from asr_kd.targets import quant
from asr_kd.targets.layout import RESUME_HINT
from asr_kd.targets.meta import StoreMeta


def encode_shard(items: Sequence[tuple[str, np.ndarray, np.ndarray]], meta: StoreMeta) -> tuple[np.ndarray, list[list]]:
    """Validated ``(utt, ids (T, k) int, probs (T, k) float64)`` -> the shard's records ``(frames,)`` of
    ``meta.record_dtype`` and its marker rows ``[utt, offset, frames]`` (in output frames)."""
    record = meta.record_dtype
    parts, index, offset = [], [], 0
    for utt, ids, probs in items:
        rec = np.empty(ids.shape[0], dtype=record)
        rec["ids"] = ids
        rec["codes"] = quant.encode(probs, meta.quantization, meta.log8_range)
        parts.append(rec)
        index.append([utt, offset, int(ids.shape[0])])
        offset += ids.shape[0]
    data = np.concatenate(parts) if parts else np.empty(0, dtype=record)
    return data, index


def marker_layout(meta: StoreMeta) -> dict[str, Any]:
    """The format's fields of a shard marker: the record size in bytes."""
    return {"record_bytes": meta.record_dtype.itemsize}


def open_shard(path: Path, marker: dict[str, Any], record: np.dtype) -> np.ndarray:
    """Shard ``path`` as a read-only memmap of ``record``s, after checking its size and record size
    against its ``marker`` (StoreError naming the file; no shard byte is read here)."""
    if not path.is_file():
        raise StoreError(f"{path}: shard file is missing; delete {path.with_suffix('.json').name} and {RESUME_HINT}")
    size = path.stat().st_size
    if size != marker["bytes"] or marker["record_bytes"] != record.itemsize:
        raise StoreError(f"{path}: shard is truncated or corrupt ({size} bytes on disk, its index says "
                         f"{marker['bytes']} bytes of {marker['record_bytes']}-byte frames, this store's frames are "
                         f"{record.itemsize} bytes); delete {path.with_suffix('.json').name} and {RESUME_HINT}")
    return np.memmap(path, dtype=record, mode="r") if size else np.empty(0, dtype=record)


def decode_records(rec: np.ndarray, meta: StoreMeta) -> tuple[np.ndarray, np.ndarray]:
    """Records of one utterance -> ``ids (T, k) int64`` and ``probs (T, k) float32``, largest first."""
    ids = rec["ids"].astype(np.int64)
    probs = quant.decode(rec["codes"], meta.quantization, meta.log8_range)
    return ids.reshape(-1, meta.k), probs.reshape(-1, meta.k)
