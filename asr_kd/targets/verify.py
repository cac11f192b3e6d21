"""Checking every byte of a store against its shard markers: what ``asr-kd targets verify`` runs.

Every shard's sha256 and byte size are recorded in its marker when it is written
(``asr_kd.targets.writer``). ``store_problems`` hashes every shard against them and cross-checks
``index.tsv`` (the compact index) with the markers' per-utterance rows: O(store bytes), a step of its
own after labeling or after copying a store. Opening a reader and ``StoreReader.size_problems()``
(the trainer's start-up check) read no shard bytes; a format-2 shard is also hashed when a reader
first opens it (``asr_kd.targets.format2``).
"""

from __future__ import annotations

import hashlib
from typing import Callable

import numpy as np

from asr_kd.errors import StoreError
from asr_kd.targets.layout import RESUME_HINT, SHARDS, shard_name
from asr_kd.targets.reader import StoreReader


def store_problems(reader: StoreReader, checksums: bool = True, progress: Callable[[int], None] | None = None
                   ) -> list[str]:
    """Every inconsistency found in the store ``reader`` reads: shard files vs markers (size, sha256),
    index vs markers.

    ``checksums=False`` skips hashing (sizes and indexes only: reads every marker, no shard bytes).
    ``progress(n)`` is called with the number of shard bytes hashed after each 4 MiB read (and with
    a shard's size when it is not hashed), e.g. a tqdm bar's ``update``. O(store bytes) with
    checksums: this is ``asr-kd targets verify``, not something a trainer runs at start-up.
    """
    found: list[str] = []
    ix = reader.index
    n = len(ix)
    first_shard = np.full(n, -1, dtype=np.int32)  # the shard whose marker listed each indexed utterance
    outside: dict[str, int] = {}  # utterances in a marker but not in index.tsv (few: a damaged index)
    shard_dir = reader.store_dir / SHARDS
    on_disk = {int(p.stem.split("-")[1]) for p in shard_dir.glob("shard-*.json")
               if p.stem.split("-")[1].isdigit()}
    extra = sorted(on_disk - set(reader.shard_ids))
    if extra:
        found.append(f"shards {extra} exist but meta.json says num_shards={reader.meta.num_shards}; {RESUME_HINT}")
    for s in reader.shard_ids:
        path = reader.shard_path(s)
        try:
            marker = reader.marker(s)
        except StoreError as exc:
            found.append(str(exc))
            continue
        for utt, offset, frames, *_ in marker["utts"]:
            i = ix.find(utt)
            before = int(first_shard[i]) if i >= 0 else outside.get(utt, -1)
            if before >= 0:
                found.append(f"utterance {utt!r} is stored in two shards ({shard_name(before)} and "
                             f"{shard_name(s)}); relabel into a new --out dir")
                continue
            entry = (s, int(offset), int(frames))
            if i < 0:
                outside[utt] = s
                found.append(f"utterance {utt!r} is in {shard_name(s)} but missing from index.tsv; {RESUME_HINT} "
                             "to rebuild the index")
                continue
            first_shard[i] = s
            if ix.entry(i) != entry:
                found.append(f"utterance {utt!r}: index.tsv says (shard, offset, frames) = {ix.entry(i)}, "
                             f"{shard_name(s)} says {entry}; {RESUME_HINT} to rebuild the index")
        fix = f"delete {path.with_suffix('.json').name} and {RESUME_HINT}"
        if not path.is_file():
            found.append(f"{path}: shard file is missing; {fix}")
            continue
        size = path.stat().st_size
        if size != marker["bytes"]:
            found.append(f"{path}: {size} bytes, its index says {marker['bytes']} (truncated); {fix}")
            if progress is not None:
                progress(int(marker["bytes"]))
            continue
        if checksums:
            digest = hashlib.sha256()
            with open(path, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 22), b""):
                    digest.update(block)
                    if progress is not None:
                        progress(len(block))
            if digest.hexdigest() != marker["sha256"]:
                found.append(f"{path}: sha256 mismatch (the file changed after it was written: disk or copy error); "
                             f"{fix}")
        elif progress is not None:
            progress(size)
    for i in np.flatnonzero(first_shard < 0).tolist():
        found.append(f"utterance {ix.ids[i].decode('utf-8')!r} is in index.tsv but in no shard's index; "
                     f"{RESUME_HINT}")
    return found


def shard_bytes_total(reader: StoreReader) -> int:
    """Sum of the shard sizes the markers recorded (the bytes ``store_problems`` hashes)."""
    sizes = np.asarray(reader.index.shard_bytes)
    if (sizes >= 0).all():
        return int(sizes.sum())
    return sum(int(reader.marker(s)["bytes"]) if sizes[s] < 0 else int(sizes[s]) for s in reader.shard_ids)


def verify_store(reader: StoreReader, checksums: bool = True) -> None:
    """Raise StoreError listing every problem ``store_problems`` finds."""
    found = store_problems(reader, checksums)
    if found:
        raise StoreError(f"{reader.store_dir}: {len(found)} problem(s):\n  " + "\n  ".join(found))
