"""Store format version 2: variable k per frame (top-p) and zstd-compressed blocks of utterances.

Frame selection (``top_p``, ``k_max``): of a frame's ``k_max`` most probable units (largest first)
keep the fewest whose probability mass reaches ``top_p``, and at most ``k_max``; units with
probability 0 are never kept, and every frame keeps at least one unit. ``top_p = 1`` keeps all
``k_max`` (fixed top-k, the v1 rule). A blank-dominated CTC frame (p(blank) >= 0.999) keeps one unit.

Blocks: consecutive utterances of a shard are grouped until a block holds at least
``block_frames`` frames (default 512); utterances never span blocks. A block is three columns,
each compressed on its own as one zstd frame, back to back in the shard file::

    counts: F x uint8        units kept per frame (1 .. k_max), the block's F frames in order
    ids:    N x id dtype     N = sum(counts); uint8 (vocab <= 256) or uint16 little-endian, frame by frame
    codes:  N x code dtype   log8 (uint8) or float16, same order as ids

so a block costs ``F + N * (id_bytes + code_bytes)`` bytes before compression. An utterance is the
slice ``[frame_in_block, +T)`` of counts and ``[entry_in_block, +n)`` of ids and codes (the shard's
marker records both). Why columns, each its own zstd frame: zstd codes the literals of a frame with
one Huffman table, and counts, ids and codes have very different statistics; on the demo teacher's
dev set (top-p 0.999, k_max 8) the three columns take 4.8 bytes/frame where one interleaved frame
per block took 5.6 (512-frame blocks; 4.6 vs 5.3 at 2048), against 4.1 for an ideal static
entropy coder (BENCHMARKS.md, store_v2).

Reading one utterance decompresses its block (kept in a small cache, so sequential reads
decompress each block once). Block size trades bytes for random access: each utterance read by id
decompresses a whole block. Measured with one interleaved zstd frame per block on the
10,000-utterance demo store (one core, loaded machine), random reads ran at 1.2 M frames/s with
512-frame blocks and 0.8 M with 2048, for 0.3 byte/frame less; 512 keeps a margin over the 1 M
frames/s that training needs (1.9 M frames/s with the column layout, BENCHMARKS.md).

Decoding to the padded ``(T, k_max)`` arrays the loss uses is vectorized (one boolean-mask scatter);
entries beyond a frame's count are padding: id 0 with probability 0.
"""

from __future__ import annotations

import numpy as np

from asr_kd.errors import StoreError
from asr_kd.targets import quant

CODECS = ("zstd", "none")
DEFAULT_TOP_P = 0.999
"""Default mass threshold of ``asr-kd label`` (BENCHMARKS.md, store_v2: KL 0.006 nats at 4.8 B/frame on the
demo teacher; 0.995 would give 3.8 B/frame at KL 0.0093, too close to the 0.01 nats bound)."""
DEFAULT_ZSTD_LEVEL = 19
DEFAULT_BLOCK_FRAMES = 512


def check_top_p(top_p: float, k_max: int, where: str = "store") -> None:
    """Refuse a threshold outside (0, 1] or a cap below 1, naming the value."""
    if not (isinstance(top_p, (int, float)) and 0.0 < float(top_p) <= 1.0):
        raise StoreError(f"{where}: top-p threshold must be in (0, 1] (fraction of a frame's probability mass to keep), "
                         f"got {top_p!r}; e.g. --top-p 0.999, or 1 for fixed top-k")
    if not (isinstance(k_max, (int, np.integer)) and k_max >= 1):
        raise StoreError(f"{where}: k_max (--top-k) must be an integer >= 1 (most units kept per frame), got {k_max!r}")


def select_counts(probs: np.ndarray, top_p: float) -> np.ndarray:
    """Units kept per frame for ``probs (T, k_max)`` sorted largest first: ``(T,) int64`` in 1..k_max.

    The fewest leading entries whose cumulative mass reaches ``top_p`` (a 1e-9 slack absorbs float
    rounding), capped at k_max and at the number of positive entries (at least 1).
    """
    p = np.asarray(probs, dtype=np.float64)
    t, k = p.shape
    if t == 0:
        return np.zeros(0, dtype=np.int64)
    need = (np.cumsum(p, axis=1) < top_p - 1e-9).sum(axis=1) + 1
    positive = np.maximum((p > 0).sum(axis=1), 1)
    return np.minimum(np.minimum(need, k), positive).astype(np.int64)


def sort_desc(ids: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Order each frame's entries by probability, largest first (stable; vectorized)."""
    order = np.argsort(-np.asarray(probs, dtype=np.float64), axis=1, kind="stable")
    return np.take_along_axis(ids, order, axis=1), np.take_along_axis(probs, order, axis=1)


def kept_entries(ids: np.ndarray, probs: np.ndarray, counts: np.ndarray, vocab_size: int, quantization: str,
                 log8_range: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """The kept ``(ids, codes)`` of one utterance, frame by frame, in their stored dtypes."""
    k = ids.shape[1]
    valid = np.arange(k)[None, :] < counts[:, None]
    return ids[valid].astype(quant.id_dtype(vocab_size)), quant.encode(probs[valid], quantization, log8_range)


def encode_entries(ids: np.ndarray, probs: np.ndarray, top_p: float, vocab_size: int, quantization: str,
                   log8_range: tuple[float, float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One utterance's ``ids, probs (T, k_max)`` -> its stored columns: ``counts (T,) uint8`` (entries kept
    per frame, ``select_counts``), the kept ``ids`` and their ``codes`` in their stored dtypes.

    The compact form a labeling worker sends to the store writer (``StoreWriter.write_encoded_shard``):
    about 5 bytes per frame instead of 12 x k_max for int64 ids and float32 probabilities."""
    ids, probs = sort_desc(np.asarray(ids), np.asarray(probs, dtype=np.float64))
    counts = select_counts(probs, top_p)
    kept_ids, kept_codes = kept_entries(ids, probs, counts, vocab_size, quantization, log8_range)
    return counts.astype(np.uint8), kept_ids, kept_codes


def decode_utterance(counts: np.ndarray, ids: np.ndarray, codes: np.ndarray, k_max: int, vocab_size: int,
                     quantization: str, log8_range: tuple[float, float], where: tuple[str, str] | str
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One utterance's column slices -> ``ids (T, k_max) int64``, ``probs (T, k_max) float32``, ``counts (T,)``.

    Padding entries (beyond a frame's count) are id 0, probability 0. Refuses (StoreError naming
    ``where``) counts outside 1..k_max, counts that do not add up to the entries given, or ids
    beyond the vocabulary — corruption that slipped past the checksums. ``where``: a message
    prefix, or ``(shard path, utt)`` formatted only when an error is raised.
    """
    frames, entries = counts.shape[0], ids.shape[0]
    if frames and (int(counts.min()) < 1 or int(counts.max()) > k_max or int(counts.sum(dtype=np.int64)) != entries):
        raise StoreError(f"{_where(where)}: corrupt frame counts (must be 1..{k_max} and sum to {entries})")
    if entries and int(ids.max()) >= vocab_size:
        raise StoreError(f"{_where(where)}: unit id {int(ids.max())} beyond the vocabulary of {vocab_size}")
    valid = np.arange(k_max)[None, :] < counts[:, None]
    out_ids = np.zeros((frames, k_max), dtype=np.int64)
    out_probs = np.zeros((frames, k_max), dtype=np.float32)
    out_ids[valid] = ids  # boolean-mask assignment fills row-major = frame by frame, the stored order
    out_probs[valid] = quant.decode(codes, quantization, log8_range)
    return out_ids, out_probs, counts.astype(np.int64)


def _where(where: tuple[str, str] | str) -> str:
    return f"{where[0]}: utterance {where[1]!r}" if isinstance(where, tuple) else where
