"""Store format version 2: a shard is a sequence of zstd-compressed blocks of whole utterances.

Per frame the fewest units whose mass reaches ``meta.top_p`` are kept, at most ``meta.k`` = k_max
(``asr_kd.targets.codec``: frame selection, the per-utterance columns and their decoding). A shard
``.bin`` is blocks back to back; a block holds consecutive utterances until it has at least
``meta.block_frames`` (512) output frames of 40 ms, and is three columns, each its own zstd frame
(or raw with ``codec: none``): counts (uint8 per frame), unit ids, codes. The marker
(``asr_kd.targets.layout``) adds ``codec`` and ``blocks``, one row per block
``[byte_offset, [counts_bytes, ids_bytes, codes_bytes], frames, entries]`` (the columns' compressed
sizes, following each other from ``byte_offset``), and its ``utts`` rows are
``[utt, frame_offset, frames, block, frame_in_block, entry_in_block, entries]``. A reader hashes a
shard (sha256, against its marker) the first time it opens it, so a truncated or bit-flipped shard
is refused naming the file before any of its bytes are decoded.

Why our own blocks and not Arrow IPC or Parquet, which also give zstd-compressed column blocks with
an index. What ours gives for this use: an utterance is read by id from the store's memory-mapped
index and its shard's marker, then one ~512-frame block is decompressed (three zstd frames) — no
file footer or row-group metadata to parse, no page sized in bytes rather than in utterances;
every shard has a sha256 marker written atomically after its ``.bin``, which is both the integrity
check and the completion record that resumed labeling relies on (we would write the same markers
beside Arrow or Parquet files); a ragged top-p frame costs one uint8 count, the ids and codes being
two flat byte columns, where an Arrow list column carries a 32-bit offset per row and both would
still leave us to build the padded ``(T, k_max)`` arrays the loss takes; and reading needs numpy and
zstandard only, no pyarrow in the training or reading path. What they would give: the ecosystem
(pandas, Polars, DuckDB, Spark read them directly), tooling to inspect files and schemas,
readers in other languages, and a specification maintained by others.
"""

from __future__ import annotations

import collections
import hashlib
from pathlib import Path
from typing import Any, Callable

import numpy as np

from asr_kd.errors import StoreError
from asr_kd.targets import codec as v2codec
from asr_kd.targets import quant
from asr_kd.targets.layout import RESUME_HINT
from asr_kd.targets.meta import StoreMeta

Columns = tuple[np.ndarray, np.ndarray, np.ndarray]
"""A block's or an utterance's ``(counts, ids, codes)``."""
Locations = dict[str, tuple[int, int, int, int, int]]
"""Per utterance of a shard: ``(block, frame_in_block, entry_in_block, frames, entries)``."""


def compressor(name: str | None, level: int) -> Callable[[bytes], bytes]:
    """``bytes -> bytes`` block compressor of a v2 codec (a new zstd context per shard: thread-safe)."""
    if name == "none":
        return bytes
    import zstandard

    # content size in the frame header lets the reader check a block's size; no per-frame checksum: the
    # shard's sha256 (checked when a reader opens the shard) already covers every byte
    ctx = zstandard.ZstdCompressor(level=level, write_content_size=True, write_checksum=False)
    return ctx.compress


def encode_shard(items: list[tuple[str, np.ndarray, np.ndarray]], meta: StoreMeta, top_p: float
                 ) -> tuple[bytes, list[list], list[list], int]:
    """Validated ``(utt, ids (T, k_max), probs (T, k_max))`` -> ``(payload, utts, blocks, frames)`` of a shard,
    keeping per frame the fewest entries whose mass reaches ``top_p`` (``codec.encode_entries``)."""
    m = meta
    return layout_shard([(utt, *v2codec.encode_entries(ids, probs, top_p, m.vocab_size, m.quantization, m.log8_range))
                         for utt, ids, probs in items], meta)


def layout_shard(encoded: list[tuple[str, np.ndarray, np.ndarray, np.ndarray]], meta: StoreMeta
                 ) -> tuple[bytes, list[list], list[list], int]:
    """Encoded items ``(utt, counts, kept ids, kept codes)`` -> ``(payload, utts, blocks, frames)`` of a shard.

    ``utts`` and ``blocks`` are the marker's rows (see the module docstring); ``frames`` is the
    shard's total of output frames.
    """
    compress = compressor(meta.codec, meta.zstd_level)
    chunks: list[bytes] = []
    blocks: list[list] = []
    utts: list[list] = []
    cols: tuple[list, list, list] = ([], [], [])
    block_frames = block_entries = offset = byte_offset = 0

    def close_block() -> None:
        nonlocal cols, block_frames, block_entries, byte_offset
        packed = [compress(np.concatenate(col).tobytes()) for col in cols]
        blocks.append([byte_offset, [len(x) for x in packed], block_frames, block_entries])
        chunks.extend(packed)
        byte_offset += sum(len(x) for x in packed)
        cols, block_frames, block_entries = ([], [], []), 0, 0

    for utt, counts, kept_ids, kept_codes in encoded:
        frames, entries = int(counts.shape[0]), int(kept_ids.shape[0])
        utts.append([utt, offset, frames, len(blocks), block_frames, block_entries, entries])
        cols[0].append(counts.astype(np.uint8))
        cols[1].append(kept_ids)
        cols[2].append(kept_codes)
        block_frames += frames
        block_entries += entries
        offset += frames
        if block_frames >= meta.block_frames:
            close_block()
    if cols[0]:
        close_block()
    return b"".join(chunks), utts, blocks, offset


def marker_layout(blocks: list[list], meta: StoreMeta) -> dict[str, Any]:
    """The format's fields of a shard marker: the blocks and the codec."""
    return {"blocks": blocks, "codec": meta.codec}


class BlockReader:
    """Reads utterances from the format-2 shards of one store, for ``StoreReader``.

    Keeps the last ``open_shards`` shards open as read-only memmaps (the page cache holds the bytes,
    not this process), remembers which shards' sha256 matched (a shard reopened later is size-checked
    but not hashed again) and keeps the last ``BLOCK_CACHE`` decompressed blocks, so sequential reads
    decompress each block once. ``shard_path(shard)`` and ``marker(shard)`` come from the reader.
    """

    BLOCK_CACHE = 8  # decompressed blocks kept

    def __init__(self, meta: StoreMeta, shard_path: Callable[[int], Path], marker: Callable[[int], dict[str, Any]],
                 open_shards: int):
        self.meta = meta
        self._shard_path = shard_path
        self._marker = marker
        self._open_shards = open_shards
        self._shards: collections.OrderedDict[int, tuple[np.ndarray, Locations, str]] = collections.OrderedDict()
        self._verified: set[int] = set()  # shards whose sha256 matched
        self._blocks: collections.OrderedDict[tuple[int, int], Columns] = collections.OrderedDict()
        self._decompress = None

    def shard(self, shard: int) -> tuple[np.ndarray, Locations, str]:
        """The shard as a read-only memmap, checked against its marker (size, then sha256 of every
        byte) the first time it is opened — before any of it is decoded —, its utterance locations
        and its path for messages."""
        cached = self._shards.get(shard)
        if cached is not None:
            self._shards.move_to_end(shard)
            return cached
        path = self._shard_path(shard)
        marker = self._marker(shard)
        fix = f"delete {path.with_suffix('.json').name} and {RESUME_HINT}"
        if not path.is_file():
            raise StoreError(f"{path}: shard file is missing; {fix}")
        size = path.stat().st_size
        if size != marker["bytes"]:
            raise StoreError(f"{path}: shard is truncated or corrupt ({size} bytes on disk, its index says "
                             f"{marker['bytes']} bytes); {fix}")
        data = np.memmap(path, dtype=np.uint8, mode="r") if size else np.empty(0, dtype=np.uint8)
        if shard not in self._verified:
            if hashlib.sha256(data).hexdigest() != marker["sha256"]:
                raise StoreError(f"{path}: sha256 mismatch (the file changed after it was written: disk or copy "
                                 f"error); {fix}")
            self._verified.add(shard)
        locs = {row[0]: (int(row[3]), int(row[4]), int(row[5]), int(row[2]), int(row[6])) for row in marker["utts"]}
        found = self._shards[shard] = (data, locs, str(path))
        while len(self._shards) > self._open_shards:
            self._shards.popitem(last=False)
        return found

    def block(self, shard: int, block: int) -> Columns:
        """The ``(counts, ids, codes)`` columns of one block, decompressed and size-checked."""
        key = (shard, block)
        cols = self._blocks.get(key)
        if cols is not None:
            self._blocks.move_to_end(key)
            return cols
        data, _, path = self.shard(shard)
        blocks = self._marker(shard)["blocks"]
        if not 0 <= block < len(blocks):
            raise StoreError(f"{path}: block {block} is not in the shard's index ({len(blocks)} blocks); {RESUME_HINT}")
        start, sizes, frames, entries = blocks[block]
        m = self.meta
        dtypes = (np.dtype(np.uint8), quant.id_dtype(m.vocab_size), quant.code_dtype(m.quantization))
        lengths = (frames, entries, entries)
        out = []
        for size, dtype, length in zip(sizes, dtypes, lengths):
            packed = data[start: start + size]
            start += size
            if m.codec == "none":
                raw = packed.tobytes()
            else:
                import zstandard

                if self._decompress is None:
                    self._decompress = zstandard.ZstdDecompressor()
                try:
                    raw = self._decompress.decompress(packed)
                except zstandard.ZstdError as exc:
                    raise StoreError(f"{path}: block {block} does not decompress ({exc}); the shard is corrupt — "
                                     f"delete {Path(path).with_suffix('.json').name} and {RESUME_HINT}") from None
            if len(raw) != length * dtype.itemsize:
                raise StoreError(f"{path}: block {block} holds {len(raw)} bytes in a column, its index says "
                                 f"{length} x {dtype.itemsize}; {RESUME_HINT}")
            out.append(np.frombuffer(raw, dtype=dtype))
        cols = (out[0], out[1], out[2])
        self._blocks[key] = cols
        if len(self._blocks) > self.BLOCK_CACHE:
            self._blocks.popitem(last=False)
        return cols

    def get(self, shard: int, utt: str, with_counts: bool = False) -> tuple[np.ndarray, ...]:
        """``ids (T, k_max) int64``, ``probs (T, k_max) float32`` (and ``counts (T,) int64`` with
        ``with_counts``) of ``utt`` in ``shard``; T output frames of ``meta.frame_shift_ms``."""
        _, locs, path = self.shard(shard)
        if utt not in locs:
            raise StoreError(f"{path}: utterance {utt!r} is in index.tsv but not in the shard's index; "
                             f"{RESUME_HINT} to rebuild the index")
        block, f0, e0, frames, entries = locs[utt]
        counts, ids, codes = self.block(shard, block)
        if f0 + frames > counts.shape[0] or e0 + entries > ids.shape[0]:
            raise StoreError(f"{path}: utterance {utt!r} lies beyond its block {block}; the shard index does not "
                             f"match the shard — {RESUME_HINT}")
        m = self.meta
        out = v2codec.decode_utterance(counts[f0: f0 + frames], ids[e0: e0 + entries], codes[e0: e0 + entries], m.k,
                                       m.vocab_size, m.quantization, m.log8_range, where=(path, utt))
        return out if with_counts else out[:2]
