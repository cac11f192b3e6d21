"""Several soft-target stores read as one: ``kd.store: [STORE_A, STORE_B]``.

A store is immutable once finalized. To train on more data, label the new data into a **new** store
and list both (``kd.store=[exp/targets_2026_11,exp/targets_2026_12]``): no relabeling, no shard plan
to change. The stores must describe the same targets — the checks below refuse, naming the field and
the two stores, any difference in

- units (``units_hash``, ``vocab_size``), output frame rate (``frame_shift_ms``, ``subsampling``) and
  the feature framing (``fbank`` sample rate, window, shift, snip_edges): frame ``t`` must mean the
  same audio and unit ``i`` the same symbol in every store;
- temperature (targets are ``softmax(logits / T)``);
- teacher binding (``teacher_fingerprints`` and ``teacher_weights``): one teacher (or ensemble).

and an utterance id may be in one store only (a duplicate is refused naming both stores and the
utterance). The stores may differ in format version (1 or 2), ``k``, ``top_p``, codec and
quantization: ``get_sparse`` pads the ids/probabilities of a store with a smaller ``k`` with id 0,
probability 0 (the padding every consumer already ignores), so the loss never sees how many stores
there are.

Opening costs what opening each store costs (O(1) with compact indexes) plus, with two or more
stores, one pass over their sorted id arrays for the duplicate check (O(utterances), no shard bytes).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from asr_kd.errors import StoreError
from asr_kd.targets.meta import FRAME_TIMING_KEYS, StoreMeta
from asr_kd.targets.reader import StoreReader
from asr_kd.targets.verify import store_problems

DUP_CHUNK = 1 << 20  # ids compared per searchsorted call (bounds the temporary arrays)


def _binding(meta: StoreMeta) -> dict[str, Any]:
    """The fields every store of a list must agree on, by name (for messages)."""
    return {
        "units_hash": meta.units_hash,
        "vocab_size": meta.vocab_size,
        "frame_shift_ms": meta.frame_shift_ms,
        "subsampling": meta.subsampling,
        "temperature": meta.temperature,
        "teacher_fingerprints": list(meta.teacher_fingerprints),
        "teacher_weights": list(meta.teacher_weights),
        **{f"fbank.{k}": meta.fbank.get(k) for k in FRAME_TIMING_KEYS if k in meta.fbank},
    }


def check_agree(readers: Sequence[StoreReader]) -> None:
    """StoreError naming every field on which a store differs from the first one, and both stores."""
    first = readers[0]
    ref = _binding(first.meta)
    problems = []
    for other in readers[1:]:
        theirs = _binding(other.meta)
        for key in ref:
            if key in theirs and theirs[key] != ref[key]:
                problems.append(f"{key} differs: {first.store_dir} has {ref[key]!r}, {other.store_dir} has {theirs[key]!r}")
    if problems:
        raise StoreError("kd.store: the stores in the list do not describe the same targets (they must come from the "
                         "same teacher(s), units, frame rate and temperature): " + "; ".join(problems))


def duplicate_ids(a: StoreReader, b: StoreReader, limit: int = 5) -> tuple[int, list[str]]:
    """``(count, first few)`` of utterance ids stored in both ``a`` and ``b`` (vectorized over the
    sorted id arrays, in chunks: no Python set of all ids)."""
    ids_a, ids_b = a.index.ids, b.index.ids
    if ids_a.shape[0] > ids_b.shape[0]:
        ids_a, ids_b = ids_b, ids_a
    count, examples = 0, []
    if ids_b.shape[0] == 0:
        return 0, []
    for start in range(0, ids_a.shape[0], DUP_CHUNK):
        chunk = np.asarray(ids_a[start: start + DUP_CHUNK])
        pos = np.minimum(np.searchsorted(ids_b, chunk), ids_b.shape[0] - 1)
        hit = np.asarray(ids_b[pos]) == chunk
        n = int(hit.sum())
        if n:
            count += n
            examples += [x.decode("utf-8") for x in chunk[hit][: max(0, limit - len(examples))].tolist()]
    return count, examples


class StoreSet:
    """One or more finalized stores behind the reader interface the trainer uses: ``meta``, ``in``,
    ``get_sparse``, ``num_frames``, ``rejects``, ``size_problems``, ``problems``. With one store it
    behaves exactly as that store's ``StoreReader``."""

    def __init__(self, store_dirs: str | os.PathLike | Sequence[str | os.PathLike]):
        dirs = [store_dirs] if isinstance(store_dirs, (str, os.PathLike)) else list(store_dirs)
        if not dirs:
            raise StoreError("kd.store: the list of stores is empty")
        resolved = [Path(d).resolve() for d in dirs]
        twice = sorted({str(d) for d in resolved if resolved.count(d) > 1})
        if twice:
            raise StoreError(f"kd.store: {twice[0]} is listed twice")
        self.readers = [StoreReader(d) for d in dirs]
        self.store_dirs = [r.store_dir for r in self.readers]
        check_agree(self.readers)
        for i, a in enumerate(self.readers):
            for b in self.readers[i + 1:]:
                n, examples = duplicate_ids(a, b)
                if n:
                    raise StoreError(f"kd.store: utterance {examples[0]!r} is in both {a.store_dir} and {b.store_dir} "
                                     f"({n} utterance(s) in both, e.g. {examples}); utterance ids must be unique across "
                                     "the stores of kd.store — list each utterance's targets once (drop one store, or "
                                     "label the new data only into the new store)")
        self.k = max(r.meta.k for r in self.readers)
        # the shared settings (checked above); k is the largest of the stores' (get_sparse pads to it)
        self.meta = self.readers[0].meta.model_copy(update={"k": self.k})

    def __repr__(self) -> str:
        return f"StoreSet({[str(d) for d in self.store_dirs]})"

    def __len__(self) -> int:
        return sum(len(r) for r in self.readers)

    def __contains__(self, utt: object) -> bool:
        return any(utt in r for r in self.readers)

    def reader_of(self, utt: str) -> StoreReader:
        """The store holding ``utt`` (StoreError naming the stores when none does)."""
        for r in self.readers:
            if utt in r:
                return r
        if len(self.readers) == 1:
            self.readers[0].num_frames(utt)  # its own "not in the store index; rejected: ..." message
        reasons = self.rejects()
        why = f"it was rejected by the labeler: {reasons[utt]}" if utt in reasons else "label it with 'asr-kd label'"
        raise StoreError(f"utterance {utt!r} is in none of the stores {[str(d) for d in self.store_dirs]}; {why}")

    @property
    def utt_ids(self) -> Iterator[str] | Sequence[str]:
        """The utterance ids of every store (store by store, each sorted)."""
        if len(self.readers) == 1:
            return self.readers[0].utt_ids
        return [u for r in self.readers for u in r.utt_ids]

    @property
    def total_frames(self) -> int:
        return sum(r.total_frames for r in self.readers)

    def num_frames(self, utt: str) -> int:
        """Stored output frames of ``utt`` (each ``meta.frame_shift_ms``, 40 ms)."""
        return self.reader_of(utt).num_frames(utt)

    def get_sparse(self, utt: str) -> tuple[np.ndarray, np.ndarray]:
        """``ids (T, k) int64``, ``probs (T, k) float32`` as ``StoreReader.get_sparse``; ``k`` is the
        largest of the stores' (a store with a smaller k is padded with id 0, probability 0)."""
        ids, probs = self.reader_of(utt).get_sparse(utt)
        pad = self.k - ids.shape[1]
        if pad > 0:
            ids = np.pad(ids, ((0, 0), (0, pad)))
            probs = np.pad(probs, ((0, 0), (0, pad)))
        return ids, probs

    def rejects(self) -> dict[str, str]:
        """Rejects of every store, less utterances another store of the list did label."""
        out: dict[str, str] = {}
        for r in self.readers:
            out.update(r.rejects())
        if len(self.readers) > 1:
            out = {u: why for u, why in out.items() if u not in self}
        return out

    def size_problems(self) -> list[str]:
        """``StoreReader.size_problems`` of every store (one stat per shard, no shard bytes read)."""
        return [p for r in self.readers for p in r.size_problems()]

    def problems(self, checksums: bool = True, progress: Callable[[int], None] | None = None) -> list[str]:
        """``asr_kd.targets.verify.store_problems`` of every store."""
        return [p for r in self.readers for p in store_problems(r, checksums, progress)]

    def pseudo_paths(self) -> list[Path]:
        """``text.pseudo`` of each store (the teacher's 1-best transcripts)."""
        return [d / "text.pseudo" for d in self.store_dirs]
