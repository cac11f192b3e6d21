"""The compact, memory-mapped store index: utterance id -> (shard, offset, frames) without a Python dict.

``index.tsv`` stays the human-readable (and compatible) index of a store; ``finalize`` also writes
this binary form next to it, and a reader builds it from ``index.tsv`` the first time it opens an
older store (cached in the store when the store is writable, else kept in memory)::

    STORE/index/
      ids.npy        (N,) fixed-width bytes "S<w>", the UTF-8 utterance ids sorted bytewise (= sorted
                     by code point, the order of index.tsv); w = the longest id in bytes
      shard.npy      (N,) int32   shard id of each utterance
      offset.npy     (N,) int64   first frame of the utterance in its shard (frames, not bytes)
      frames.npy     (N,) int32   output frames of the utterance (each meta.frame_shift_ms, 40 ms)
      shard_bytes.npy (S,) int64  size in bytes of each shard's .bin as its marker records it
      index.json     what the arrays were built from (index.tsv size and a hash of its first and
                     last 64 KiB, num_shards); written last: a directory without it is incomplete

Lookup is a binary search (``numpy.searchsorted``) over the memory-mapped ``ids.npy``: about
log2(N) pages touched per lookup, so what a process holds resident is the pages it touched, not
the whole index (``tools/bench/store_index.py`` measures bytes per utterance and open time). Opening
reads ``index.json`` and maps the arrays: its cost does not grow with the number of shards or
utterances. ``shard_bytes`` lets a trainer check every shard's size at start-up without reading the
markers (one ``stat`` per shard, no shard bytes read).

The arrays are ``.npy`` files read with ``allow_pickle=False``: no pickle.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import socket
import uuid
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from asr_kd.errors import StoreError

log = logging.getLogger(__name__)

COMPACT = "index"
COMPACT_VERSION = 1
HEAD_TAIL = 1 << 16  # bytes of index.tsv hashed at each end to tell a stale compact index
ARRAYS = ("ids", "shard", "offset", "frames", "shard_bytes")


def tsv_signature(path: Path) -> dict[str, Any]:
    """Cheap identity of ``index.tsv`` (O(1), not O(file)): its size and a sha256 of its first and
    last 64 KiB. A hand edit that changes a line changes the size or the hashed ends in practice."""
    size = path.stat().st_size
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        digest.update(fh.read(HEAD_TAIL))
        if size > HEAD_TAIL:
            fh.seek(max(HEAD_TAIL, size - HEAD_TAIL))
            digest.update(fh.read())
    return {"bytes": size, "ends_sha256": digest.hexdigest()}


class UttIds(Sequence[str]):
    """The sorted utterance ids of a compact index as a read-only sequence of ``str``, decoded on
    access (no list of N Python strings is built unless the caller builds one)."""

    def __init__(self, ids: np.ndarray):
        self._ids = ids

    def __len__(self) -> int:
        return int(self._ids.shape[0])

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [b.decode("utf-8") for b in self._ids[i].tolist()]
        return self._ids[i].decode("utf-8")

    def __iter__(self) -> Iterator[str]:
        step = 65536
        for start in range(0, len(self), step):
            yield from (b.decode("utf-8") for b in self._ids[start: start + step].tolist())

    def __contains__(self, utt: object) -> bool:
        return find(self._ids, utt) >= 0

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (UttIds, list, tuple)):
            return len(self) == len(other) and all(a == b for a, b in zip(self, other))
        return NotImplemented

    def __add__(self, other):  # list-like: ids + [...] and ids * 2 give lists
        return list(self) + list(other)

    def __radd__(self, other):
        return list(other) + list(self)

    def __mul__(self, n: int) -> list[str]:
        return list(self) * n

    __rmul__ = __mul__

    def __repr__(self) -> str:
        return f"UttIds({len(self)} ids)"


def find(ids: np.ndarray, utt: object) -> int:
    """Position of ``utt`` in the sorted fixed-width ``ids`` array, or -1."""
    if not isinstance(utt, str):
        return -1
    key = utt.encode("utf-8")
    if not key or len(key) > ids.dtype.itemsize:
        return -1
    i = int(np.searchsorted(ids, key))
    return i if i < ids.shape[0] and ids[i] == key else -1


class CompactIndex:
    """The arrays of ``STORE/index/`` (memory-mapped) or built in memory; see the module docstring."""

    def __init__(self, arrays: dict[str, np.ndarray], source: str):
        # plain ndarray views of the memory maps: the same pages, without np.memmap's per-call overhead
        self.ids, self.shard, self.offset, self.frames, self.shard_bytes = (
            arrays[name].view(np.ndarray) for name in ARRAYS)
        self.mapped = isinstance(arrays["ids"], np.memmap)
        self.source = source  # for messages: "STORE/index" or "index.tsv (in memory)"
        n = self.ids.shape[0]
        if not (self.shard.shape[0] == self.offset.shape[0] == self.frames.shape[0] == n):
            raise StoreError(f"{source}: the index arrays disagree in length; delete {source} (it is rebuilt from "
                             "index.tsv)")

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def find(self, utt: object) -> int:
        return find(self.ids, utt)

    def entry(self, i: int) -> tuple[int, int, int]:
        return int(self.shard[i]), int(self.offset[i]), int(self.frames[i])

    def nbytes(self) -> int:
        """Bytes of the per-utterance arrays (all resident only once every page was touched)."""
        return sum(int(a.nbytes) for a in (self.ids, self.shard, self.offset, self.frames))

    # ------------------------------------------------------------------ building
    @classmethod
    def from_entries(cls, utts: list[str], shards: Sequence[int], offsets: Sequence[int], frames: Sequence[int],
                     shard_bytes: Sequence[int], source: str) -> "CompactIndex":
        """Arrays from parallel lists (any order; sorted here). Refuses an id listed twice or with NUL."""
        encoded = [u.encode("utf-8") for u in utts]
        if any(b"\x00" in b for b in encoded):
            bad = next(u for u, b in zip(utts, encoded) if b"\x00" in b)
            raise StoreError(f"{source}: utterance id {bad!r} contains a NUL character")
        width = max((len(b) for b in encoded), default=1) or 1
        ids = np.array(encoded, dtype=f"S{width}") if encoded else np.empty(0, dtype="S1")
        order = np.argsort(ids, kind="stable")
        ids = ids[order]
        dup = np.flatnonzero(ids[1:] == ids[:-1]) if ids.shape[0] > 1 else np.empty(0, dtype=np.int64)
        if dup.size:
            raise StoreError(f"{source}: utterance {ids[dup[0]].decode('utf-8')!r} is listed twice")
        arrays = {
            "ids": ids,
            "shard": np.asarray(shards, dtype=np.int32)[order],
            "offset": np.asarray(offsets, dtype=np.int64)[order],
            "frames": np.asarray(frames, dtype=np.int32)[order],
            "shard_bytes": np.asarray(shard_bytes, dtype=np.int64),
        }
        return cls(arrays, source)

    @classmethod
    def from_tsv(cls, path: Path, num_shards: int, shard_bytes: Sequence[int], hint: str) -> "CompactIndex":
        """Parse ``index.tsv`` (``utt<TAB>shard<TAB>offset<TAB>frames``), errors naming file and line."""
        utts: list[str] = []
        shards: list[int] = []
        offsets: list[int] = []
        frames: list[int] = []
        with open(path, encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                line = line.rstrip("\n")
                fields = line.split("\t")
                try:
                    if len(fields) != 4:
                        raise ValueError
                    utt, s, o, f = fields[0], int(fields[1]), int(fields[2]), int(fields[3])
                    if not utt or s < 0 or o < 0 or f < 0:
                        raise ValueError
                except ValueError:
                    raise StoreError(f"{path}:{lineno}: expected 'utt<TAB>shard<TAB>offset<TAB>frames', got {line!r}; "
                                     f"{hint} to rebuild the index") from None
                if s >= num_shards:
                    raise StoreError(f"{path}:{lineno}: shard {s} of {utt!r} is beyond num_shards={num_shards}")
                utts.append(utt)
                shards.append(s)
                offsets.append(o)
                frames.append(f)
        try:
            return cls.from_entries(utts, shards, offsets, frames, shard_bytes, source=f"{path} (in memory)")
        except StoreError as exc:
            raise StoreError(f"{exc}; {hint} to rebuild the index") from None

    # ------------------------------------------------------------------ disk
    def write(self, store_dir: Path, signature: dict[str, Any], num_shards: int, replace: bool = True) -> Path:
        """Write ``store_dir/index/`` (a temporary dir renamed into place; ``index.json`` last).

        ``replace=False`` (a reader caching the index of an older store) leaves an ``index/`` that
        another process put in place first and raises ``FileExistsError``."""
        final = store_dir / COMPACT
        # unique per host and process: DDP ranks on several nodes may cache the same store at once
        tmp = store_dir / f"{COMPACT}.tmp-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            self._write_files(tmp, signature, num_shards)
            if final.exists():
                if not replace:
                    raise FileExistsError(f"{final} exists")
                old = store_dir / f"{tmp.name}.old"
                os.replace(final, old)
                shutil.rmtree(old, ignore_errors=True)
            os.replace(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return final

    def _write_files(self, tmp: Path, signature: dict[str, Any], num_shards: int) -> None:
        tmp.mkdir()
        for name in ARRAYS:
            arr = np.ascontiguousarray(getattr(self, name))
            with open(tmp / f"{name}.npy", "wb") as fh:
                np.save(fh, arr, allow_pickle=False)
                fh.flush()
                os.fsync(fh.fileno())
        head = {"compact_index_version": COMPACT_VERSION, "entries": len(self), "id_width": int(self.ids.dtype.itemsize),
                "num_shards": int(num_shards), "index_tsv": signature}
        with open(tmp / "index.json", "w", encoding="utf-8") as fh:
            fh.write(json.dumps(head, indent=1) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    @classmethod
    def load(cls, store_dir: Path, signature: dict[str, Any], num_shards: int) -> "CompactIndex | None":
        """The memory-mapped ``store_dir/index/`` when it exists and matches ``index.tsv``, else None."""
        d = store_dir / COMPACT
        head_path = d / "index.json"
        if not head_path.is_file():
            return None
        try:
            head = json.loads(head_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return None
        if (head.get("compact_index_version") != COMPACT_VERSION or head.get("index_tsv") != signature
                or head.get("num_shards") != num_shards):
            return None
        try:
            arrays = {name: np.load(d / f"{name}.npy", mmap_mode="r", allow_pickle=False) for name in ARRAYS}
        except (OSError, ValueError):
            return None
        if arrays["ids"].shape[0] != head.get("entries") or arrays["shard_bytes"].shape[0] != num_shards:
            return None
        return cls(arrays, str(d))


def remove(store_dir: Path) -> None:
    """Delete ``store_dir/index/`` (the store is changing: the compact index would be stale)."""
    shutil.rmtree(Path(store_dir) / COMPACT, ignore_errors=True)


def writable(store_dir: Path) -> bool:
    return os.access(store_dir, os.W_OK)
