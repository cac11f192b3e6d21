"""Reading a finalized soft-target store: ``StoreReader`` (random access by utterance id, sequential
shard streaming) and ``sparse_to_dense``.

A reader opens ``meta.json`` and the compact index (``asr_kd.targets.index``) and reads no shard
bytes until an utterance is asked for; it reads format 1 (``asr_kd.targets.format1``: memmapped
records) and format 2 (``asr_kd.targets.format2``: zstd blocks, each shard sha256-checked when first
opened). Frames are output frames of ``meta.frame_shift_ms`` (40 ms). Several stores read as one:
``asr_kd.targets.storeset.StoreSet``. Checking every byte of a store: ``asr_kd.targets.verify``.
"""

from __future__ import annotations

import collections
import logging
import os
from pathlib import Path
from typing import Any, Iterator, Literal, Sequence

import numpy as np

from asr_kd.errors import StoreError
from asr_kd.targets import format1, format2
from asr_kd.targets import index as compact
from asr_kd.targets.layout import INDEX, REJECTS, RESUME_HINT, SHARDS, read_marker, read_rejects, shard_name
from asr_kd.targets.meta import read_meta

log = logging.getLogger(__name__)


def _trim(cache: "collections.OrderedDict", size: int) -> None:
    """Drop the least recently used entries of ``cache`` beyond ``size``."""
    while len(cache) > size:
        cache.popitem(last=False)


class StoreReader:
    """Read a finalized store: random access by utterance id (memmap) and sequential shard streaming.

    Opening costs O(1) in the number of shards and utterances when the store has its compact index
    (``STORE/index/``, written by ``finalize``; see ``asr_kd.targets.index``): ``meta.json``, the
    index's header and memory maps of its arrays. An older store (index.tsv only) is indexed once
    from ``index.tsv`` and its markers and the result cached in the store when the directory is
    writable (else kept in memory: numpy arrays, no per-utterance Python objects). Opening reads no
    shard bytes; a v2 shard is sha256-checked when first read (``asr-kd targets verify`` hashes all).
    """

    OPEN_SHARDS = 64  # v1 shard memmaps / v2 shards (format2.BlockReader) kept open (least recently used closed)
    MARKERS = 256  # parsed shard markers kept

    def __init__(self, store_dir: str | os.PathLike):
        self.store_dir = Path(store_dir)
        self.meta = read_meta(self.store_dir)
        if self.meta.num_shards is None or not (self.store_dir / INDEX).is_file():
            raise StoreError(f"{self.store_dir}: the store was not finalized (labeling did not finish); "
                             f"{RESUME_HINT}")
        self._record = self.meta.record_dtype
        self._index = self._open_index()
        self._utt_ids = compact.UttIds(self._index.ids)
        self._maps: collections.OrderedDict[int, np.ndarray] = collections.OrderedDict()
        self._markers: collections.OrderedDict[int, dict[str, Any]] = collections.OrderedDict()
        self._v2 = format2.BlockReader(self.meta, self.shard_path, self.marker, self.OPEN_SHARDS)

    def _open_index(self) -> compact.CompactIndex:
        """The compact index: ``STORE/index/`` memory-mapped, or built from ``index.tsv`` (and cached)."""
        num_shards = int(self.meta.num_shards or 0)
        tsv = self.store_dir / INDEX
        signature = compact.tsv_signature(tsv)
        found = compact.CompactIndex.load(self.store_dir, signature, num_shards)
        if found is not None:
            return found
        shard_bytes = []
        for s in range(num_shards):  # sizes for the start-up check; -1 where a marker is unreadable
            try:
                shard_bytes.append(int(read_marker(self.store_dir / SHARDS / f"{shard_name(s)}.json")["bytes"]))
            except StoreError:
                shard_bytes.append(-1)
        built = compact.CompactIndex.from_tsv(tsv, num_shards, shard_bytes, hint=RESUME_HINT)
        if compact.writable(self.store_dir):
            # replace an index/ that was there (stale: index.tsv changed), not one another process just wrote
            stale = (self.store_dir / compact.COMPACT).exists()
            try:
                built.write(self.store_dir, signature, num_shards, replace=stale)
                cached = compact.CompactIndex.load(self.store_dir, signature, num_shards)
                if cached is not None:
                    log.info("%s: wrote the compact index %s (built from index.tsv)", self.store_dir, cached.source)
                    return cached
            except OSError as exc:  # e.g. another rank renamed its copy into place first
                log.info("%s: compact index kept in memory (%s)", self.store_dir, exc)
        return built

    # ---------------------------------------------------------------- lookup
    @property
    def utt_ids(self) -> compact.UttIds:
        """Sorted utterance ids in the store: a read-only sequence of ``str`` decoded on access (build a
        list or set yourself when you need one; the reader does not hold one)."""
        return self._utt_ids

    @property
    def index(self) -> compact.CompactIndex:
        """The per-utterance index (``asr_kd.targets.index.CompactIndex``: ids, shard, offset, frames)."""
        return self._index

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, utt: object) -> bool:
        return self._index.find(utt) >= 0

    @property
    def shard_ids(self) -> list[int]:
        return list(range(self.meta.num_shards or 0))

    def shard_path(self, shard: int) -> Path:
        return self.store_dir / SHARDS / f"{shard_name(shard)}.bin"

    def marker(self, shard: int) -> dict[str, Any]:
        """The shard's marker (its JSON index), parsed; the last ``MARKERS`` are kept."""
        found = self._markers.get(shard)
        if found is not None:
            self._markers.move_to_end(shard)
            return found
        path = self.store_dir / SHARDS / f"{shard_name(shard)}.json"
        if not path.is_file():
            raise StoreError(f"{path}: shard index (completion marker) is missing: shard {shard} is incomplete; "
                             f"{RESUME_HINT}")
        found = self._markers[shard] = read_marker(path)
        _trim(self._markers, self.MARKERS)
        return found

    def rejects(self) -> dict[str, str]:
        """Utterances the labeler refused, with reasons (``rejects.tsv``)."""
        return read_rejects(self.store_dir / REJECTS)

    def _entry(self, utt: str) -> tuple[int, int, int]:
        """``(shard, offset, frames)`` of ``utt`` (offset and frames in output frames)."""
        i = self._index.find(utt)
        if i >= 0:
            return self._index.entry(i)
        reason = self.rejects().get(utt)
        why = (f"it was rejected by the labeler: {reason}" if reason
               else f"label it with 'asr-kd label' ({RESUME_HINT})")
        raise StoreError(f"{self.store_dir}: utterance {utt!r} is not in the store index; {why}")

    def num_frames(self, utt: str) -> int:
        """Stored (output) frames of ``utt``, each ``meta.frame_shift_ms`` long."""
        return self._entry(utt)[2]

    @property
    def total_frames(self) -> int:
        """Stored frames of all utterances (reads the whole ``frames`` array: for reports, not lookups)."""
        return int(self._index.frames.sum(dtype=np.int64))

    def index_nbytes(self) -> int:
        """Bytes of the per-utterance index arrays (memory-mapped: resident only as far as touched)."""
        return self._index.nbytes()

    def size_problems(self) -> list[str]:
        """Cheap start-up check, no shard byte read: every shard's ``.bin`` exists and has the size its
        marker recorded at finalize (one ``stat`` per shard, sizes from the compact index). A flipped
        bit keeps the size: the sha256 check when a reader first opens a v2 shard, or
        ``asr-kd targets verify``, catches that."""
        found = []
        for s in self.shard_ids:
            path = self.shard_path(s)
            fix = f"delete {path.with_suffix('.json').name} and {RESUME_HINT}"
            want = int(self._index.shard_bytes[s])
            if want < 0:
                try:
                    want = int(self.marker(s)["bytes"])
                except StoreError as exc:
                    found.append(str(exc))
                    continue
            try:
                size = path.stat().st_size
            except OSError:
                found.append(f"{path}: shard file is missing; {fix}")
                continue
            if size != want:
                found.append(f"{path}: {size} bytes, its index says {want} (truncated); {fix}")
        return found

    def payload_bytes(self) -> int:
        """Bytes of all shard ``.bin`` files (the frame records)."""
        return sum(self.shard_path(s).stat().st_size for s in self.shard_ids if self.shard_path(s).is_file())

    def _shard(self, shard: int) -> np.ndarray:
        """A format-1 shard as a memmap of records (size-checked; the last ``OPEN_SHARDS`` stay open)."""
        arr = self._maps.get(shard)
        if arr is not None:
            self._maps.move_to_end(shard)
            return arr
        marker = self.marker(shard)
        arr = format1.open_shard(self.shard_path(shard), marker, self._record)
        self._maps[shard] = arr
        _trim(self._maps, self.OPEN_SHARDS)
        return arr

    def _records(self, utt: str) -> np.ndarray:
        """The format-1 records of ``utt`` (a slice of its shard's memmap)."""
        shard, offset, frames = self._entry(utt)
        arr = self._shard(shard)
        if offset + frames > arr.shape[0]:
            raise StoreError(f"{self.shard_path(shard)}: utterance {utt!r} (frames {offset}..{offset + frames}) "
                             f"lies beyond the shard's {arr.shape[0]} frames; the index does not match the shard — "
                             f"{RESUME_HINT}")
        return arr[offset: offset + frames]

    def get_sparse(self, utt: str) -> tuple[np.ndarray, np.ndarray]:
        """Top-k of ``utt``: ``ids (T, k) int64`` and ``probs (T, k) float32`` (largest first, as stored),
        ``T`` output frames of ``meta.frame_shift_ms`` (40 ms).

        ``probs`` are the decoded stored values, not renormalized: they sum to the teacher's kept mass
        (<= 1 up to quantization error). Version 2 stores keep 1..k units per frame (``k`` = k_max):
        the entries beyond a frame's count are padding, id 0 with probability 0, which the KD loss,
        ``sparse_to_dense`` and the KL ignore.
        """
        if self.meta.format_version >= 2:
            return self._v2.get(self._entry(utt)[0], utt)
        return format1.decode_records(self._records(utt), self.meta)

    def get_counts(self, utt: str) -> np.ndarray:
        """Units stored per frame of ``utt``, ``(T,) int64`` (always ``k`` for version 1)."""
        if self.meta.format_version >= 2:
            return self._v2.get(self._entry(utt)[0], utt, with_counts=True)[2]
        return np.full(self.num_frames(utt), self.meta.k, dtype=np.int64)

    def get_dense(self, utt: str, vocab_size: int | None = None, fill: Literal["zero", "uniform"] = "zero"
                  ) -> np.ndarray:
        """``(T, V)`` float32 distribution of ``utt``.

        ``fill="zero"``: the top-k probabilities in place, every other unit 0 (rows sum to the top-k mass).
        ``fill="uniform"``: the mass missing from the top-k, ``max(0, 1 - sum)``, is spread evenly over
        the ``V - k`` other units, then each row is renormalized to sum to 1 (a proper distribution,
        e.g. for KL against a dense teacher; with k = V nothing is spread).
        """
        v = vocab_size or self.meta.vocab_size
        if v < self.meta.vocab_size:
            raise StoreError(f"get_dense: vocab_size {v} is smaller than the store's {self.meta.vocab_size}")
        ids, probs = self.get_sparse(utt)
        return sparse_to_dense(ids, probs, v, fill)

    # ---------------------------------------------------------------- streaming
    def iter_shards(self, shards: Sequence[int] | None = None) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
        """Yield ``(utt, ids, probs)`` of every utterance of ``shards`` (default: all), reading shards
        sequentially (one memmap pass each): shard order, then order within each shard. ``ids`` and
        ``probs`` are as ``get_sparse`` returns them."""
        order = list(self.shard_ids if shards is None else shards)
        ix = self._index
        by_pos = np.lexsort((np.asarray(ix.offset), np.asarray(ix.shard)))  # index positions by (shard, offset)
        shard_of = np.asarray(ix.shard)[by_pos]
        starts = np.searchsorted(shard_of, np.arange(len(self.shard_ids) + 1))

        def entries_of(s: int) -> list[tuple[int, int, str]]:
            if not 0 <= s < len(self.shard_ids):
                return []
            pos = by_pos[starts[s]: starts[s + 1]]
            return [(int(ix.offset[i]), int(ix.frames[i]), ix.ids[i].decode("utf-8")) for i in pos]

        for s in order:
            entries = entries_of(s)
            if not entries:
                continue
            if self.meta.format_version >= 2:
                for _, _, utt in entries:
                    yield (utt, *self._v2.get(s, utt))
                continue
            arr = self._shard(s)
            for o, f, utt in entries:
                if o + f > arr.shape[0]:
                    raise StoreError(f"{self.shard_path(s)}: utterance {utt!r} lies beyond the shard's end; "
                                     f"{RESUME_HINT}")
                ids, probs = format1.decode_records(arr[o: o + f], self.meta)
                yield utt, ids, probs


def sparse_to_dense(ids: np.ndarray, probs: np.ndarray, vocab_size: int, fill: str = "zero") -> np.ndarray:
    """Place top-k ``probs`` at ``ids`` in a ``(T, vocab_size)`` float32 array (see ``StoreReader.get_dense``).

    Entries with probability 0 are padding (ragged v2 frames) and are not placed; with
    ``fill="uniform"`` the missing mass of a frame is spread over the units it did not store.
    """
    ids = np.asarray(ids, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    t, k = ids.shape
    if fill not in ("zero", "uniform"):
        raise StoreError(f"fill must be 'zero' or 'uniform', got {fill!r}")
    dense = np.zeros((t, vocab_size), dtype=np.float64)
    valid = probs > 0
    if fill == "uniform":
        others = vocab_size - valid.sum(axis=1, keepdims=True)
        rest = np.clip(1.0 - probs.sum(axis=1, keepdims=True), 0.0, None) / np.maximum(others, 1)
        dense += np.where(others > 0, rest, 0.0)
    rows, cols = np.nonzero(valid)
    dense[rows, ids[rows, cols]] = probs[rows, cols]
    if fill == "uniform" and t:
        dense /= dense.sum(axis=1, keepdims=True)
    return dense.astype(np.float32)
