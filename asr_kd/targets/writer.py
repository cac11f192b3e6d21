"""Writing a soft-target store: ``StoreWriter`` (shards, rejects, finalize) and ``topk_from_log_probs``.

Atomicity and resume: ``StoreWriter.write_shard`` removes any old marker, writes the ``.bin`` under a
temporary name, fsyncs and renames it, then writes the marker the same way. The marker holds the
shard's sha256, byte size and per-utterance index, so a crash at any point leaves either a complete
shard or one without marker, which ``completed_shards()`` does not count (a marker whose ``.bin`` has
the wrong size is not counted either) and the labeler redoes. ``finalize()`` merges the markers into
``index.tsv`` and ``index/`` (refusing an utterance that appears in two shards) and records
``num_shards`` in ``meta.json``; a reader refuses a store that was never finalized.

Growth: a finalized store is immutable. More data goes into a new store, and training lists both
(``kd.store: [OLD, NEW]``, ``asr_kd.targets.storeset``); ``StoreWriter.check_plan`` refuses to label a
data dir that changed since the store was made, before anything is written.

The shard payload is laid out by ``asr_kd.targets.format1`` or ``asr_kd.targets.format2`` (the
store's ``meta.format_version``); the directory and markers are ``asr_kd.targets.layout``'s.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from asr_kd.atomic import atomic_write_bytes
from asr_kd.errors import StoreError
from asr_kd.targets import format1, format2
from asr_kd.targets import index as compact
from asr_kd.targets import quant
from asr_kd.targets.layout import (INDEX, REJECTS, RESUME_HINT, SHARDS, check_utt_id, completed_shards, read_marker,
                                   read_rejects, shard_name)
from asr_kd.targets.meta import META, StoreMeta, read_meta

log = logging.getLogger(__name__)


def topk_from_log_probs(log_probs: Any, k: int, temperature: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Top-k of ``softmax(log_probs / temperature)`` per frame.

    ``log_probs``: ``(T, V)`` logits or log-probabilities (torch tensor or numpy array; the softmax makes
    the two equivalent). Returns ``ids (T, k) int64`` and ``probs (T, k) float32``, largest first.
    """
    import torch

    x = torch.as_tensor(log_probs).detach().to("cpu", torch.float64)
    if x.ndim != 2:
        raise StoreError(f"topk_from_log_probs: expected (frames, vocab) scores, got shape {tuple(x.shape)}")
    if not 1 <= k <= x.shape[1]:
        raise StoreError(f"topk_from_log_probs: k={k} must be in 1..{x.shape[1]} (the vocabulary size)")
    if temperature <= 0:
        raise StoreError(f"topk_from_log_probs: temperature must be > 0, got {temperature}")
    p = torch.softmax(x / temperature, dim=-1)
    probs, ids = torch.topk(p, k, dim=-1)
    return ids.numpy().astype(np.int64), probs.numpy().astype(np.float32)


class StoreWriter:
    """Writes a store shard by shard. Reopening an existing store resumes it (same settings required).

    The caller (the labeler) plans which utterances go into which shard, deterministically, so a
    resume writes exactly the shards missing from ``completed_shards()``. ``shard_size_utts`` is the
    planned maximum of utterances per shard; a bigger shard is refused as a planning error.
    """

    def __init__(self, out_dir: str | os.PathLike, meta: StoreMeta, shard_size_utts: int = 256):
        if shard_size_utts < 1:
            raise StoreError(f"shard_size_utts must be >= 1, got {shard_size_utts}")
        self.out_dir = Path(out_dir)
        self.shard_dir = self.out_dir / SHARDS
        self.shard_size_utts = shard_size_utts
        self.shard_dir.mkdir(parents=True, exist_ok=True)
        meta_path = self.out_dir / META
        if meta_path.exists():
            old = read_meta(meta_path)
            new_s, old_s = meta.settings(), old.settings()
            diff = sorted(k for k in set(new_s) | set(old_s) if new_s.get(k) != old_s.get(k))
            if diff:
                details = ", ".join(f"{k}: store {old_s.get(k)!r} vs now {new_s.get(k)!r}" for k in diff)
                raise StoreError(f"{self.out_dir}: an existing store was made with other settings ({details}); "
                                 "use a new --out dir, or delete this one to relabel from scratch")
            self.meta = old
        else:
            self.meta = meta.model_copy(update={"num_shards": None})
            self._write_meta()
        for stale in self.shard_dir.glob("*.tmp"):  # left by a crash mid-write
            log.info("removing incomplete temporary file %s", stale)
            stale.unlink()
        self._dirty = False

    # ---------------------------------------------------------------- helpers
    def _write_meta(self) -> None:
        atomic_write_bytes(self.out_dir / META, self.meta.to_json().encode("utf-8"))

    def _invalidate(self) -> None:
        """The store changes: it is unfinalized until finalize() runs again."""
        if self._dirty:
            return
        if self.meta.num_shards is not None:
            self.meta = self.meta.model_copy(update={"num_shards": None})
            self._write_meta()
        (self.out_dir / INDEX).unlink(missing_ok=True)
        compact.remove(self.out_dir)
        self._dirty = True

    def topk(self, log_probs: Any) -> tuple[np.ndarray, np.ndarray]:
        """``topk_from_log_probs`` with this store's ``k`` and temperature."""
        return topk_from_log_probs(log_probs, self.meta.k, self.meta.temperature)

    # ---------------------------------------------------------------- shards
    def completed_shards(self) -> set[int]:
        """Shard ids whose marker exists and whose ``.bin`` has the size the marker records."""
        return completed_shards(self.out_dir)

    def check_plan(self, shards: Sequence[Sequence[str]], data: str) -> None:
        """Refuse to label ``data`` into this store when its shard plan ``shards`` (utterance ids per
        shard) no longer matches the shards already written: the data changed since the store was made.

        A completed shard must hold exactly its planned utterances less those in ``rejects.tsv``. A store
        does not grow (adding data changes the plan, and writing would unfinalize a finished store):
        the message says how many utterances were added and removed, writes the added ids to a file
        and tells how to label them into a new store and train on both (``kd.store=[OLD,NEW]``).
        Called before any labeling; reads the markers only.
        """
        done = sorted(self.completed_shards())
        if not done:
            return
        rejects = set(read_rejects(self.out_dir / REJECTS))
        stored: set[str] = set()
        changed = False
        for s in done:
            utts = {row[0] for row in read_marker(self.shard_dir / f"{shard_name(s)}.json")["utts"]}
            stored |= utts
            planned = set(shards[s]) if s < len(shards) else set()
            if not utts <= planned or not planned - utts <= rejects:
                changed = True
        if not changed:
            return
        planned_all = {u for shard in shards for u in shard}
        added = sorted(planned_all - stored - rejects)
        removed = sorted((stored | rejects) - planned_all)
        import tempfile

        fd, listing = tempfile.mkstemp(prefix=f"asr-kd-{self.out_dir.name}-new-utts-", suffix=".txt")
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write("".join(u + "\n" for u in added))
        finished = self.meta.num_shards is not None
        new = f"{self.out_dir.name}_new"
        raise StoreError(
            f"{self.out_dir}: {data} changed since this store was {'made' if finished else 'started'}: "
            f"{len(added)} utterance(s) are not in the store (e.g. {added[:3]}), {len(removed)} stored or rejected "
            f"utterance(s) are no longer in {data} (e.g. {removed[:3]}), so its shard plan no longer matches the "
            f"shards written. A store does not grow: label the new utterances into a new store and train on both — "
            f"the new ids are listed in {listing}: 'asr-kd data subset --utt-list {listing} --out DATA_NEW {data}', "
            f"then 'asr-kd label ... --data DATA_NEW --out {self.out_dir.parent / new}' and "
            f"kd.store=[{self.out_dir},{self.out_dir.parent / new}]"
            + ("" if finished else
               f" (or, to relabel everything, use a new --out dir; {self.out_dir} was never finished)"))

    def _check_items(self, shard_id: int, items: Sequence[tuple[str, Any, Any]]
                     ) -> list[tuple[str, np.ndarray, np.ndarray]]:
        """Validate ``items``: unique well-formed ids, ``(frames, k)`` integer ids in the vocabulary,
        probabilities in [0, 1]; returns ``(utt, ids, probs float64)``."""
        m = self.meta
        where = f"{self.out_dir}: shard {shard_id}"
        seen: set[str] = set()
        checked = []
        for utt, ids, probs in items:
            check_utt_id(utt, where)
            if utt in seen:
                raise StoreError(f"{where}: utterance {utt!r} appears twice in the shard")
            seen.add(utt)
            ids = np.asarray(ids)
            probs = np.asarray(probs, dtype=np.float64)
            if ids.ndim != 2 or ids.shape[1] != m.k or probs.shape != ids.shape:
                raise StoreError(f"{where}: utterance {utt!r}: ids {ids.shape} and probs {probs.shape} must both be "
                                 f"(frames, k={m.k})")
            if ids.size and not np.issubdtype(ids.dtype, np.integer):
                raise StoreError(f"{where}: utterance {utt!r}: unit ids must be integers, got {ids.dtype}")
            if ids.size and (ids.min() < 0 or ids.max() >= m.vocab_size):
                raise StoreError(f"{where}: utterance {utt!r}: unit id out of range 0..{m.vocab_size - 1} "
                                 f"(got {ids.min()}..{ids.max()})")
            if probs.size and (not np.isfinite(probs).all() or probs.min() < 0 or probs.max() > 1 + 1e-4):
                raise StoreError(f"{where}: utterance {utt!r}: probabilities must be finite and in [0, 1]")
            checked.append((utt, ids, probs))
        return checked

    def encoder_params(self) -> dict[str, Any]:
        """Keyword arguments of ``asr_kd.targets.codec.encode_entries`` for this (version 2) store: what a
        labeling worker needs to send ``write_encoded_shard`` its compact columns."""
        m = self.meta
        return dict(top_p=m.top_p, vocab_size=m.vocab_size, quantization=m.quantization, log8_range=tuple(m.log8_range))

    def write_shard(self, shard_id: int, items: Sequence[tuple[str, Any, Any]], selected: bool = False) -> Path:
        """Write one complete shard atomically; ``items`` = ``[(utt_id, ids (T, k), probs (T, k))]``.

        ``probs`` are probabilities (already at the store's temperature; see ``topk``). Version 2 keeps
        per frame the fewest entries reaching ``meta.top_p``; ``selected=True`` says the items were
        selected already (e.g. re-imported from a Kaldi export: probability-0 entries are padding) and
        keeps every positive entry, so that quantized values are not selected a second time.
        Rewriting an existing shard replaces it. Returns the path of the shard's marker.
        """
        if shard_id < 0 or int(shard_id) != shard_id:
            raise StoreError(f"{self.out_dir}: shard id must be a non-negative integer, got {shard_id!r}")
        if len(items) > self.shard_size_utts:
            raise StoreError(f"{self.out_dir}: shard {shard_id} has {len(items)} utterances, more than the planned "
                             f"{self.shard_size_utts} per shard")
        checked = self._check_items(shard_id, items)
        if self.meta.format_version >= 2:
            top_p = 1.0 if selected else self.meta.top_p
            payload, index, blocks, frames = format2.encode_shard(checked, self.meta, top_p)
            layout = format2.marker_layout(blocks, self.meta)
        else:
            records, index = format1.encode_shard(checked, self.meta)
            payload, frames = records.tobytes(), int(records.shape[0])
            layout = format1.marker_layout(self.meta)
        return self._write_payload(shard_id, payload, frames, layout, index)

    def write_encoded_shard(self, shard_id: int, encoded: Sequence[tuple[str, np.ndarray, np.ndarray, np.ndarray]]
                            ) -> Path:
        """``write_shard`` for items a worker encoded already with ``codec.encode_entries(**encoder_params())``:
        ``[(utt_id, counts (T,) uint8, kept ids, kept codes)]`` (version 2 stores). Checked here: ids unique
        and well-formed, counts in 1..k_max summing to the entries, ids in the vocabulary, the stored dtypes."""
        m = self.meta
        where = f"{self.out_dir}: shard {shard_id}"
        if m.format_version < 2:
            raise StoreError(f"{where}: encoded items need a format-2 store (this one is format {m.format_version})")
        if shard_id < 0 or int(shard_id) != shard_id:
            raise StoreError(f"{self.out_dir}: shard id must be a non-negative integer, got {shard_id!r}")
        if len(encoded) > self.shard_size_utts:
            raise StoreError(f"{self.out_dir}: shard {shard_id} has {len(encoded)} utterances, more than the planned "
                             f"{self.shard_size_utts} per shard")
        id_dtype, code_dtype = quant.id_dtype(m.vocab_size), quant.code_dtype(m.quantization)
        seen: set[str] = set()
        items = []
        for utt, counts, ids, codes in encoded:
            check_utt_id(utt, where)
            if utt in seen:
                raise StoreError(f"{where}: utterance {utt!r} appears twice in the shard")
            seen.add(utt)
            counts, ids, codes = np.asarray(counts), np.asarray(ids), np.asarray(codes)
            if (counts.dtype != np.uint8 or ids.dtype != id_dtype or codes.dtype != code_dtype or counts.ndim != 1
                    or ids.shape != codes.shape or ids.ndim != 1):
                raise StoreError(f"{where}: utterance {utt!r}: encoded columns must be counts (T,) uint8, ids and "
                                 f"codes (entries,) {id_dtype} and {code_dtype}; got {counts.dtype}{counts.shape}, "
                                 f"{ids.dtype}{ids.shape}, {codes.dtype}{codes.shape}")
            if counts.size and (int(counts.min()) < 1 or int(counts.max()) > m.k
                                or int(counts.sum(dtype=np.int64)) != ids.size):
                raise StoreError(f"{where}: utterance {utt!r}: frame counts must be 1..{m.k} and sum to the "
                                 f"{ids.size} entries")
            if ids.size and int(ids.max()) >= m.vocab_size:
                raise StoreError(f"{where}: utterance {utt!r}: unit id {int(ids.max())} out of range "
                                 f"0..{m.vocab_size - 1}")
            items.append((utt, counts, ids, codes))
        payload, index, blocks, frames = format2.layout_shard(items, m)
        return self._write_payload(shard_id, payload, frames, format2.marker_layout(blocks, m), index)

    def _write_payload(self, shard_id: int, payload: bytes, frames: int, layout: dict[str, Any], index: list[list]
                       ) -> Path:
        """Replace shard ``shard_id`` atomically: its ``.bin`` first, then its marker (the completion record)."""
        self._invalidate()
        base = self.shard_dir / shard_name(shard_id)
        marker_path = base.with_suffix(".json")
        marker_path.unlink(missing_ok=True)  # from here until the new marker lands, the shard is incomplete
        atomic_write_bytes(base.with_suffix(".bin"), payload)
        marker = {
            "format_version": self.meta.format_version,
            "shard": int(shard_id),
            "file": base.with_suffix(".bin").name,
            "bytes": len(payload),
            "frames": int(frames),
            **layout,
            "sha256": hashlib.sha256(payload).hexdigest(),
            "utts": index,
        }
        atomic_write_bytes(marker_path, (json.dumps(marker, separators=(",", ":")) + "\n").encode("utf-8"))
        return marker_path

    # ---------------------------------------------------------------- rejects, finalize
    def write_rejects(self, rejects: Iterable[tuple[str, str]]) -> Path:
        """Append ``(utt, reason)`` lines to ``rejects.tsv`` and fsync (a later line for the same utterance
        wins; ``finalize`` rewrites the file sorted, one line per utterance).

        Appending costs the new lines only, where rewriting the merged file after every shard grew with
        the corpus (quadratic over a run). A line torn by a crash belongs to a shard without a marker,
        which the rerun redoes: the torn tail is cut off before the next append."""
        path = self.out_dir / REJECTS
        lines = []
        for utt, reason in rejects:
            check_utt_id(utt, str(path))
            lines.append(f"{utt}\t{' '.join(str(reason).split()) or 'rejected'}\n")
        if not lines:
            return path
        with open(path, "a+b") as fh:
            end = fh.seek(0, os.SEEK_END)
            if end:
                fh.seek(end - 1)
                if fh.read(1) != b"\n":  # torn tail of an interrupted append: keep whole lines only
                    fh.seek(0)
                    fh.truncate(fh.read().rfind(b"\n") + 1)
            fh.seek(0, os.SEEK_END)
            fh.write("".join(lines).encode("utf-8"))
            fh.flush()
            os.fsync(fh.fileno())
        return path

    def finalize(self, expected_shards: int | None = None) -> StoreMeta:
        """Merge the shard markers into ``index.tsv`` (and its compact form ``index/``, see
        ``asr_kd.targets.index``) and record ``num_shards``; the store becomes readable.

        Refuses gaps in the shard ids 0..N-1 (N = ``expected_shards``, the plan's shard count, or the
        highest complete id + 1) and utterances stored twice. Rejects of utterances that a later run
        did label are dropped from ``rejects.tsv``.
        """
        done = self.completed_shards()
        n = expected_shards if expected_shards is not None else (max(done) + 1 if done else 0)
        expected = set(range(n))
        beyond = sorted(done - expected)
        if beyond:
            raise StoreError(f"{self.out_dir}: shards {beyond[:10]} are beyond the planned {n} shards; the shard plan "
                             "changed between runs — relabel into a new --out dir")
        missing = sorted(expected - done)
        if missing:
            raise StoreError(f"{self.out_dir}: shards {missing[:10]} are missing or incomplete; {RESUME_HINT}")
        entries: dict[str, tuple[int, int, int]] = {}
        shard_bytes = []
        for s in sorted(done):
            marker = read_marker(self.shard_dir / f"{shard_name(s)}.json")
            shard_bytes.append(int(marker["bytes"]))
            for utt, offset, frames, *_ in marker["utts"]:
                if utt in entries:
                    raise StoreError(f"{self.out_dir}: utterance {utt!r} is stored in two shards "
                                     f"({shard_name(entries[utt][0])} and {shard_name(s)}); the shard plan changed "
                                     "between runs — relabel into a new --out dir")
                entries[utt] = (s, int(offset), int(frames))
        rows = "".join(f"{u}\t{s}\t{o}\t{f}\n" for u, (s, o, f) in sorted(entries.items()))
        compact.remove(self.out_dir)  # a reader never pairs a new index.tsv with an old compact index
        atomic_write_bytes(self.out_dir / INDEX, rows.encode("utf-8"))
        utts = sorted(entries)
        ci = compact.CompactIndex.from_entries(utts, [entries[u][0] for u in utts], [entries[u][1] for u in utts],
                                               [entries[u][2] for u in utts], shard_bytes,
                                               source=str(self.out_dir / INDEX))
        ci.write(self.out_dir, compact.tsv_signature(self.out_dir / INDEX), len(done))
        rej_path = self.out_dir / REJECTS
        if rej_path.exists():  # appended during labeling: sorted, one line per utterance, once
            rejects = read_rejects(rej_path)
            relabeled = [u for u in rejects if u in entries]
            if relabeled:
                log.info("%d earlier reject(s) are now labeled; removing them from %s", len(relabeled), rej_path)
            kept = {u: r for u, r in rejects.items() if u not in entries}
            atomic_write_bytes(rej_path, "".join(f"{u}\t{r}\n" for u, r in sorted(kept.items())).encode("utf-8"))
        self.meta = self.meta.model_copy(update={"num_shards": len(done)})
        self._write_meta()
        self._dirty = False
        return self.meta

    def record_measured(self, unmapped_mass: float | None) -> StoreMeta:
        """Record figures measured while labeling (not settings: a resume does not compare them)."""
        self.meta = self.meta.model_copy(update={"unmapped_mass": unmapped_mass})
        self._write_meta()
        return self.meta

