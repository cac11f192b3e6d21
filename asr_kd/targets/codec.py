"""Store format version 2: variable k per frame (top-p) and zstd-compressed blocks of utterances.

Frame selection (``top_p``, ``k_max``): of a frame's ``k_max`` most probable units (largest first)
keep the fewest whose probability mass reaches ``top_p``, and at most ``k_max``; units with
probability 0 are never kept, and every frame keeps at least one unit. ``top_p = 1`` keeps all
``k_max`` (fixed top-k, the v1 rule). A blank-dominated CTC frame (p(blank) >= 0.999) keeps one unit.

Utterance payload (uncompressed, little-endian, frame-major)::

    counts: T x uint8                 units kept per frame (1 .. k_max)
    ids:    N x id dtype              N = sum(counts); uint8 (vocab <= 256) or uint16, frame by frame
    codes:  N x code dtype            log8 (uint8) or float16, same order as ids

so an utterance costs ``T + N * (id_bytes + code_bytes)`` bytes before compression.

Blocks: consecutive utterances of a shard are concatenated until a block holds at least
``block_frames`` frames (default 512), and each block is compressed on its own as one zstd frame
(the shard file is the blocks back to back). Reading one utterance decompresses only its block, so
random access by utterance id stays cheap while zstd still sees enough data to model it. Measured
on the demo teacher's dev set (top-p 0.999, k_max 8, 66-frame utterances): each utterance
compressed alone 6.4 bytes/frame, blocks of 512 frames 5.6, of 2048 frames 5.3, the whole shard
5.0; random reads of the 10,000-utterance demo store (one core, loaded machine) 1.2 M frames/s
with 512-frame blocks, 0.8 M with 2048 (the whole block is decompressed for each utterance read).
512 keeps random access above 1 M frames/s for about 0.3 byte/frame. Utterances never span blocks.

Decoding to the padded ``(T, k_max)`` arrays the loss uses is vectorized (one boolean-mask scatter);
entries beyond a frame's count are padding: id 0 with probability 0.
"""

from __future__ import annotations

import numpy as np

from asr_kd.errors import StoreError
from asr_kd.targets import quant

CODECS = ("zstd", "none")
DEFAULT_TOP_P = 0.999
"""Default mass threshold of ``asr-kd label`` (BENCHMARKS.md, store_v2: KL 0.006 nats at ~5.6 B/frame on the
demo teacher; 0.995 would give ~4.4 B/frame at KL 0.0093, too close to the 0.01 nats bound)."""
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


def encode_utterance(ids: np.ndarray, probs: np.ndarray, counts: np.ndarray, vocab_size: int, quantization: str,
                     log8_range: tuple[float, float]) -> tuple[bytes, int]:
    """``(payload, N)``: the uncompressed v2 payload of one utterance and its number of kept entries."""
    k = ids.shape[1]
    valid = np.arange(k)[None, :] < counts[:, None]
    kept_ids = ids[valid].astype(quant.id_dtype(vocab_size))
    kept_codes = quant.encode(probs[valid], quantization, log8_range)
    payload = counts.astype(np.uint8).tobytes() + kept_ids.tobytes() + kept_codes.tobytes()
    return payload, int(kept_ids.shape[0])


def payload_bytes(frames: int, entries: int, vocab_size: int, quantization: str) -> int:
    return frames + entries * (quant.id_dtype(vocab_size).itemsize + quant.code_dtype(quantization).itemsize)


def decode_utterance(raw: bytes | memoryview, offset: int, frames: int, entries: int, k_max: int, vocab_size: int,
                     quantization: str, log8_range: tuple[float, float], where: tuple[str, str] | str
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Payload at ``raw[offset:]`` -> ``ids (T, k_max) int64``, ``probs (T, k_max) float32``, ``counts (T,)``.

    Padding entries (beyond a frame's count) are id 0, probability 0. Refuses (StoreError naming
    ``where``) counts outside 1..k_max, counts that do not add up to ``entries``, ids beyond the
    vocabulary, or a payload running past the block — corruption that slipped past the checksums.
    ``where``: a message prefix, or ``(shard path, utt)`` formatted only when an error is raised.
    """
    if isinstance(where, tuple):  # (shard path, utt): formatted only for an error, off the hot path
        where = f"{where[0]}: utterance {where[1]!r}"
    id_dt, code_dt = quant.id_dtype(vocab_size), quant.code_dtype(quantization)
    end = offset + payload_bytes(frames, entries, vocab_size, quantization)
    if offset < 0 or end > len(raw):
        raise StoreError(f"{where}: payload (bytes {offset}..{end}) runs past its block of {len(raw)} bytes; the shard "
                         "index does not match the shard")
    counts = np.frombuffer(raw, dtype=np.uint8, count=frames, offset=offset)
    ids = np.frombuffer(raw, dtype=id_dt, count=entries, offset=offset + frames)
    codes = np.frombuffer(raw, dtype=code_dt, count=entries, offset=offset + frames + entries * id_dt.itemsize)
    if frames and (int(counts.min()) < 1 or int(counts.max()) > k_max or int(counts.sum(dtype=np.int64)) != entries):
        raise StoreError(f"{where}: corrupt frame counts (must be 1..{k_max} and sum to {entries})")
    if entries and int(ids.max()) >= vocab_size:
        raise StoreError(f"{where}: unit id {int(ids.max())} beyond the vocabulary of {vocab_size}")
    valid = np.arange(k_max)[None, :] < counts[:, None]
    out_ids = np.zeros((frames, k_max), dtype=np.int64)
    out_probs = np.zeros((frames, k_max), dtype=np.float32)
    out_ids[valid] = ids  # boolean-mask assignment fills row-major = frame by frame, the payload's order
    out_probs[valid] = quant.decode(codes, quantization, log8_range)
    return out_ids, out_probs, counts.astype(np.int64)
