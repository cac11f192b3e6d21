"""Kaldi ``Posterior`` archives <-> soft-target store, with kaldi-io.

A store exports as ``post.ark`` + ``post.scp``: per utterance a Kaldi ``Posterior``
(``vector<vector<pair<int32, float>>>``), one inner vector per stored (output) frame holding the
top-k ``(unit_id, probability)`` pairs, largest first. The ids are **our unit ids** (the ``id``
column of the store's ``tokens.txt``, blank = 0), not Kaldi pdf-ids or transition-ids: a Kaldi
nnet3 recipe must use an output layer over the same units. Probabilities are the decoded stored
values (not renormalized) at the store's temperature, one per 40 ms output frame (``meta.json``
records the shift). kaldi-io writes the ark; it has no scp writer, so the scp offsets are recorded
here from ``ark.tell()`` (offset of the ``\\0B`` binary marker after ``key ``, as Kaldi does).

Ragged frames (format-v2 stores with ``top_p < 1`` keep 1..k units per frame) export as inner
vectors of their own length, which Kaldi's Posterior allows; kaldi-io's ``write_post`` asserts one
length per utterance, so such utterances are written by ``_write_post_ragged`` (same bytes layout,
a few lines of struct/numpy) and kaldi-io reads them back. The zero-probability padding of the
reader's ``(T, k)`` arrays is never exported.

``import_kaldi`` reads such an ark/scp (kaldi-io ``read_post_ark``/``read_post_scp``) back into a
store, taking the settings from an existing store's ``meta.json``; every frame must hold exactly
``k`` pairs, or 1..k pairs when that meta has ``top_p < 1``. Note that kaldiio (a different
package) cannot read Posterior archives.
"""

from __future__ import annotations

import logging
import os
import struct
from pathlib import Path
from typing import Iterator

import numpy as np

from asr_kd.errors import StoreError
from asr_kd.targets.meta import StoreMeta, read_meta
from asr_kd.targets.reader import StoreReader
from asr_kd.targets.writer import StoreWriter

log = logging.getLogger(__name__)


def _kaldi_io():
    """``import kaldi_io`` without its import-time banner.

    kaldi-io 0.9.8 prints an 80-column "path does not exist: KALDI_ROOT" warning to stderr on import
    whenever ``$KALDI_ROOT`` is not an existing directory (we only read and write ark/scp files and need
    no Kaldi binaries), so every command that touched a feature cache printed it. Its stderr is captured
    during the import and logged at DEBUG instead.
    """
    import contextlib
    import io

    banner = io.StringIO()
    with contextlib.redirect_stderr(banner):
        import kaldi_io
    if banner.getvalue().strip():
        log.debug("kaldi-io at import: %s", " ".join(banner.getvalue().split()))
    return kaldi_io


def export_kaldi(reader: StoreReader, out_dir: str | os.PathLike, name: str = "post") -> tuple[Path, Path]:
    """Write ``OUT/post.ark`` and ``OUT/post.scp`` (sorted by utterance id); returns both paths."""
    kio = _kaldi_io()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ark_path = (out / f"{name}.ark").resolve()
    scp_path = out / f"{name}.scp"
    if any(c.isspace() for c in str(ark_path)):
        raise StoreError(f"{ark_path}: Kaldi scp files cannot hold paths with spaces; choose another --out")
    tmp_ark = ark_path.with_name(ark_path.name + ".tmp")
    lines = []
    with open(tmp_ark, "wb") as ark:
        for utt in reader.utt_ids:
            try:
                key_bytes = utt.encode("latin1")
            except UnicodeEncodeError:
                raise StoreError(f"utterance id {utt!r}: kaldi-io writes keys as latin-1; rename it for Kaldi") from None
            ids, probs = reader.get_sparse(utt)
            counts = reader.get_counts(utt)
            start = ark.tell()
            if counts.size and (counts != counts[0]).any():
                _write_post_ragged(ark, utt, ids, probs, counts)
            else:
                width = int(counts[0]) if counts.size else ids.shape[1]
                post = [list(zip(frame_ids.tolist(), frame_probs.tolist()))
                        for frame_ids, frame_probs in zip(ids[:, :width], probs[:, :width])]
                kio.write_post(ark, post, key=utt)
            lines.append(f"{utt} {ark_path}:{start + len(key_bytes) + 1}\n")
        ark.flush()
        os.fsync(ark.fileno())
    os.replace(tmp_ark, ark_path)
    scp_path.write_text("".join(lines), encoding="latin1")
    return ark_path, scp_path


_PAIR = np.dtype([("isize", "i1"), ("id", "<i4"), ("psize", "i1"), ("p", "<f4")])  # packed, 10 bytes


def _write_post_ragged(ark, key: str, ids: np.ndarray, probs: np.ndarray, counts: np.ndarray) -> None:
    """One binary Kaldi Posterior whose frames hold ``counts[t]`` pairs each (the layout kaldi-io's
    ``write_post`` writes, without its one-length-per-utterance assertion)."""
    ark.write(key.encode("latin1") + b" \0B\4" + struct.pack("<i", len(counts)))
    pairs = np.zeros(ids.shape, dtype=_PAIR)
    pairs["isize"], pairs["psize"] = 4, 4
    pairs["id"], pairs["p"] = ids, probs
    for t, n in enumerate(counts.tolist()):  # per frame: its length, then its pairs
        ark.write(b"\4" + struct.pack("<i", n) + pairs[t, :n].tobytes())


def _read_posts(src: str) -> Iterator[tuple[str, list]]:
    kio = _kaldi_io()
    spec = src
    kind = None
    if spec.startswith(("ark:", "scp:")):
        kind, spec = spec[:3], spec[4:]
    if kind is None:
        kind = "scp" if spec.endswith(".scp") else "ark"
    if not Path(spec).is_file():
        raise StoreError(f"{spec}: Kaldi {kind} file not found")
    try:
        reader = kio.read_post_scp(spec) if kind == "scp" else kio.read_post_ark(spec)
        yield from reader
    except (AssertionError, ValueError, OSError, UnicodeDecodeError) as exc:
        raise StoreError(f"{spec}: not a readable Kaldi Posterior {kind} ({type(exc).__name__}: {exc})") from None


def post_to_topk(utt: str, post: list, k: int, ragged: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """A Kaldi Posterior of one utterance -> ``ids (T, k)``, ``probs (T, k)`` sorted by probability.

    ``ragged``: frames may hold 1..k pairs (padded with id 0, probability 0); else exactly k.
    """
    t = len(post)
    ids = np.zeros((t, k), dtype=np.int64)
    probs = np.zeros((t, k), dtype=np.float64)
    for i, frame in enumerate(post):
        if not (1 <= len(frame) <= k if ragged else len(frame) == k):
            want = f"1..{k} (top-p store, k_max={k})" if ragged else f"exactly k={k}"
            raise StoreError(f"utterance {utt!r} frame {i}: {len(frame)} (id, prob) pairs, the store keeps {want} "
                             "per frame")
        pairs = sorted(((int(a), float(b)) for a, b in frame), key=lambda x: -x[1])
        ids[i, : len(pairs)] = [a for a, _ in pairs]
        probs[i, : len(pairs)] = [b for _, b in pairs]
    return ids, probs


def import_kaldi(src: str, out_store: str | os.PathLike, meta_from: str | os.PathLike, shard_size_utts: int = 256) -> StoreMeta:
    """Build a store at ``out_store`` from a Kaldi Posterior ark/scp, settings from ``meta_from``.

    ``src``: ``X.ark``, ``X.scp`` or ``ark:X`` / ``scp:X``. ``meta_from``: a store dir or a meta JSON
    file (its units, frame rate, k, quantization and temperature are taken as describing the input).
    Utterances are stored in input order, ``shard_size_utts`` per shard. Returns the finalized meta.
    """
    template = read_meta(meta_from)
    meta = StoreMeta.model_validate(template.model_dump(exclude={"created", "num_shards"}))
    out = Path(out_store)
    if (out / "meta.json").exists():
        raise StoreError(f"{out}: a store already exists there; import into a new directory")
    writer = StoreWriter(out, meta, shard_size_utts=shard_size_utts)
    batch: list[tuple[str, np.ndarray, np.ndarray]] = []
    shard = 0
    n = 0
    for utt, post in _read_posts(str(src)):
        batch.append((utt, *post_to_topk(utt, post, meta.k, ragged=meta.top_p < 1.0)))
        n += 1
        if len(batch) == shard_size_utts:
            writer.write_shard(shard, batch, selected=True)
            shard, batch = shard + 1, []
    if batch or shard == 0:
        writer.write_shard(shard, batch, selected=True)
        shard += 1
    final = writer.finalize(expected_shards=shard)
    log.info("imported %d utterances into %d shards at %s", n, shard, out)
    return final
