"""The soft-target store: per-frame top-k teacher distributions, sharded, checksummed, resumable.

On-disk layout (format versions 1 and 2; readers read both)::

    STORE/
      meta.json                  StoreMeta: teachers, units hash, frame rate, k, quantization, T, ...
      shards/shard-00000.bin     v1: frame records, utterances back to back (see asr_kd.targets.quant);
                                 v2: zstd blocks of utterance payloads (see asr_kd.targets.codec)
      shards/shard-00000.json    the shard's index + checksum; written LAST = its completion marker
      index.tsv                  utt <TAB> shard <TAB> offset <TAB> frames   (sorted by utt; finalize)
      index/                     the same, compact and memory-mapped (asr_kd.targets.index; finalize, or
                                 built from index.tsv when an older store is first opened)
      rejects.tsv                utt <TAB> reason   (utterances the labeler refused; appended per shard, sorted by finalize)

Format version 2 (the default of ``asr-kd label``, see ``asr_kd.targets.codec``): variable k per frame
(the fewest units whose mass reaches ``meta.top_p``, at most ``meta.k`` = k_max) and the shard
``.bin`` is a sequence of blocks of whole utterances, each three zstd-compressed columns (counts,
unit ids, codes); the shard's marker lists the blocks (byte offset, the columns' compressed sizes,
frames and entries) and, per utterance, its block, first frame and first entry in the block and
number of kept entries. ``index.tsv`` is the same in both versions (offsets
in frames). A reader hashes a v2 shard (sha256, against its marker) the first time it opens it, so a
truncated or bit-flipped shard is refused naming the file before any of its bytes are decoded.

Version check: ``read_meta`` reads ``format_version`` first and refuses a version it does not know
(a future v3) with a "newer format" error, before validating the rest. (asr-kd releases that only
knew version 1 refuse a v2 ``meta.json`` before reading any shard, as "meta.json: invalid store
meta: teachers: Extra inputs are not permitted; top_p: ..." — an error, not garbage, but one that
does not say "upgrade"; they would also have refused ``format_version`` 2 itself right after.)

Why raw binary shards (version 1): a frame is a fixed-size record (``k`` ids + ``k`` codes, 16 bytes at
top-8 log8), so an utterance is one contiguous slice ``[offset, offset + frames)`` of a numpy ``memmap``:
random access by id costs one page-cache read with no decoding step, sequential training reads
stream whole shards, and the bytes on disk are exactly the payload (no per-row framing). Parquet
would add a dependency, row-group decoding and list-column overhead for no gain here. Offsets in
the index are in *frames* (records), not bytes; output frames are ``meta.frame_shift_ms`` long
(40 ms for our models).

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

Checksums: ``StoreReader.problems()`` (``asr-kd targets verify``) hashes every shard; opening a reader
and ``StoreReader.size_problems()`` (the trainer's start-up check) read no shard bytes.

No pickle anywhere: JSON, TSV, raw little-endian arrays and zstd frames only.
"""

from __future__ import annotations

import collections
import datetime
import hashlib
import json
import logging
import os
import socket
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Literal, Sequence

import numpy as np
import pydantic
from pydantic import Field, model_validator

from asr_kd.atomic import atomic_write_bytes
from asr_kd.config import StrictModel
from asr_kd.errors import StoreError
from asr_kd.targets import codec as v2codec
from asr_kd.targets import index as compact
from asr_kd.targets import quant

log = logging.getLogger(__name__)

FORMAT_VERSION = 2
"""Newest store format this code writes and reads; it also reads version 1 (``READABLE_VERSIONS``)."""
READABLE_VERSIONS = (1, 2)
V2_ONLY_FIELDS = ("top_p", "codec", "zstd_level", "block_frames", "teachers")
META = "meta.json"
INDEX = "index.tsv"
REJECTS = "rejects.tsv"
SHARDS = "shards"
RESUME_HINT = "rerun 'asr-kd label' with the same arguments (it resumes and redoes incomplete shards)"


def _now_info() -> "CreatedInfo":
    from asr_kd import __version__

    return CreatedInfo(time=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                       host=socket.gethostname(), asr_kd_version=__version__)


class CreatedInfo(StrictModel):
    time: str = Field(description="UTC ISO-8601 time the store was started")
    host: str
    asr_kd_version: str


class StoreMeta(StrictModel):
    """``meta.json`` of a store: everything a consumer must agree with before using the targets."""

    format_version: int = Field(FORMAT_VERSION, ge=1, description="1: fixed top-k records; 2: top-p, zstd blocks")
    teacher_fingerprints: list[str] = Field(default_factory=list, description="model-dir fingerprints of the teachers")
    teachers: list[str] = Field(default_factory=list, description="(v2) the teachers' model dirs as given to "
                                "'asr-kd label', for messages; the fingerprints are what binds the store")
    teacher_weights: list[float] = Field(default_factory=list, description="ensemble weights (probabilities averaged)")
    units_hash: str = Field(description="hash of tokens.txt (and BPE model) the ids refer to")
    vocab_size: int = Field(ge=2, le=65536, description="number of units incl. blank (id 0)")
    frame_shift_ms: float = Field(gt=0, description="shift of one stored (output) frame, e.g. 40 ms")
    subsampling: int = Field(4, ge=1, description="output frames = fbank frames // subsampling")
    k: int = Field(ge=1, le=64, description="units stored per frame: exactly k (v1, or v2 with top_p=1), "
                   "at most k = k_max (v2)")
    top_p: float = Field(1.0, description="(v2) keep the fewest units whose probability mass reaches top_p, in (0, 1]")
    codec: Literal["zstd", "none"] | None = Field(None, description="(v2) block compression; v1 stores are raw "
                                                  "records (None)")
    zstd_level: int = Field(v2codec.DEFAULT_ZSTD_LEVEL, ge=1, le=22, description="(v2) zstd level the writer uses")
    block_frames: int = Field(v2codec.DEFAULT_BLOCK_FRAMES, ge=1, description="(v2) a block is closed once it holds "
                              "this many 40 ms frames (whole utterances)")
    quantization: Literal["log8", "float16"] = "log8"
    log8_range: tuple[float, float] = Field(quant.LOG8_RANGE, description="log-odds range (lo, hi) of the log8 codes")
    temperature: float = Field(1.0, gt=0, description="targets are softmax(logits / temperature)")
    fbank: dict[str, Any] = Field(default_factory=dict, description="the teachers' FbankConfig")
    teacher_details: list[dict[str, Any]] = Field(default_factory=list, description="per teacher when not all are asr-kd model "
                                           "dirs: kind, path, frame_shift_ms (its own), frame_conversion, unit_map")
    teacher_precision: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32", description="dtype of the teachers' forward passes ('asr-kd label --precision'); written only when not fp32")
    created: CreatedInfo = Field(default_factory=_now_info)
    num_shards: int | None = Field(None, ge=0, description="set by finalize(); None while being written")
    unmapped_mass: float | None = Field(None, ge=0, le=1, description="measured: mean per-frame probability of teacher "
                                        "units with no student unit (foreign teachers; set when labeling ends)")

    @model_validator(mode="before")
    @classmethod
    def _default_codec(cls, data: Any) -> Any:
        """A v2 meta without a codec gets zstd (v1 metas have none)."""
        if isinstance(data, dict) and data.get("format_version", FORMAT_VERSION) != 1 and data.get("codec") is None:
            data = {**data, "codec": "zstd"}
        return data

    @model_validator(mode="after")
    def _check(self) -> "StoreMeta":
        lo, hi = self.log8_range
        if not lo < 0 < hi:
            raise ValueError(f"log8_range must be (lo < 0, hi > 0) in log-odds, got {self.log8_range}")
        if self.k > self.vocab_size:
            raise ValueError(f"k={self.k} exceeds vocab_size={self.vocab_size}")
        if self.teacher_weights and len(self.teacher_weights) != len(self.teacher_fingerprints):
            raise ValueError(f"{len(self.teacher_weights)} teacher_weights for {len(self.teacher_fingerprints)} teachers")
        if self.format_version not in READABLE_VERSIONS:
            raise ValueError(f"format_version {self.format_version} is not one this asr-kd knows {READABLE_VERSIONS}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1] (fraction of a frame's mass kept), got {self.top_p}")
        if self.format_version == 1:
            if self.top_p != 1.0 or self.codec is not None:
                raise ValueError("format version 1 stores exactly k units per frame, uncompressed: top_p must be 1 and "
                                 "codec unset (use format_version 2 for top-p or zstd)")
        elif self.codec is None:
            raise ValueError("a format version 2 store needs a codec ('zstd' or 'none')")
        return self

    def to_json(self) -> str:
        """``meta.json`` text; a v1 meta leaves out the v2 fields so that older asr-kd still reads it, and
        no meta carries the foreign-teacher fields when it has no foreign teacher, nor ``teacher_precision``
        when it is the default fp32."""
        exclude = set(V2_ONLY_FIELDS) if self.format_version == 1 else set()
        if not self.teacher_details:
            exclude.add("teacher_details")
        if self.unmapped_mass is None:
            exclude.add("unmapped_mass")
        if self.teacher_precision == "fp32":
            exclude.add("teacher_precision")
        return self.model_dump_json(indent=2, exclude=exclude) + "\n"

    @property
    def record_dtype(self) -> np.dtype:
        return quant.record_dtype(self.vocab_size, self.k, self.quantization)

    def settings(self) -> dict[str, Any]:
        """Everything that defines the targets (what a resumed writer must match)."""
        return self.model_dump(mode="json", exclude={"created", "num_shards", "teachers", "unmapped_mass"})


def read_meta(path: str | os.PathLike) -> StoreMeta:
    """``meta.json`` of a store dir (or a meta JSON file) -> StoreMeta, errors naming the file."""
    p = Path(path)
    if p.is_dir():
        p = p / META
    if not p.is_file():
        raise StoreError(f"{p}: not found; is {p.parent} a soft-target store made by 'asr-kd label'?")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise StoreError(f"{p}: not valid JSON ({exc})") from None
    # the version first: a newer format must be refused as such, not as a pile of unknown keys
    version = data.get("format_version") if isinstance(data, dict) else None
    if not isinstance(version, int) or isinstance(version, bool):
        raise StoreError(f"{p}: no integer format_version; is {p.parent} a soft-target store made by 'asr-kd label'?")
    if version > FORMAT_VERSION:
        from asr_kd import __version__

        raise StoreError(f"{p}: store format version {version} is newer than this asr-kd ({__version__}) reads "
                         f"(versions {', '.join(map(str, READABLE_VERSIONS))}); upgrade asr-kd to read it")
    if version not in READABLE_VERSIONS:
        raise StoreError(f"{p}: unknown store format version {version}; this asr-kd reads versions "
                         f"{', '.join(map(str, READABLE_VERSIONS))}")
    if version == 1:
        extra = sorted(set(data) & set(V2_ONLY_FIELDS))
        if extra:
            raise StoreError(f"{p}: invalid store meta: a format version 1 store has no {', '.join(extra)}")
    try:
        return StoreMeta.model_validate(data)
    except pydantic.ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or '<top>'}: {e['msg']}" for e in exc.errors())
        raise StoreError(f"{p}: invalid store meta: {problems}") from None


FRAME_TIMING_KEYS = ("sample_rate", "frame_length_ms", "frame_shift_ms", "snip_edges")
"""FbankConfig fields that decide which audio each feature frame (and so each 40 ms output frame) covers."""


def fbank_differences(store_fbank: dict[str, Any], model_fbank: dict[str, Any]) -> tuple[list[str], list[str]]:
    """``(problems, notes)`` comparing the teachers' FbankConfig (store meta) with a student's.

    The fields in ``FRAME_TIMING_KEYS`` must be equal, or frame ``t`` of the targets would describe other
    audio than the student's frame ``t``: those are problems. Other differences (mel bins, window,
    dither ...) are allowed — the student may use its own features — and returned as notes. Keys one
    side lacks (a store that did not record its features) cannot be compared and are skipped.
    """
    problems: list[str] = []
    notes: list[str] = []
    for key in sorted(set(store_fbank) & set(model_fbank)):
        theirs, ours = store_fbank[key], model_fbank[key]
        if theirs == ours:
            continue
        if key in FRAME_TIMING_KEYS:
            problems.append(f"feature framing differs: fbank.{key} is {theirs} in the store, {ours} in the model "
                            "(set the student's fbank like the teacher's)")
        else:
            notes.append(f"fbank.{key}: teacher {theirs}, student {ours}")
    return problems, notes


def check_compatible(meta: StoreMeta, units_hash: str, frame_shift_ms: float, vocab_size: int, where: str = "store",
                     fbank: dict[str, Any] | None = None) -> list[str]:
    """Refuse targets made for other units, another output frame rate or other feature framing
    (StoreError naming both values); ``fbank`` is the student's FbankConfig as a dict (see
    ``fbank_differences``). Returns notes on allowed feature differences, for a warning."""
    problems, notes = fbank_differences(meta.fbank, fbank) if fbank is not None else ([], [])
    if meta.units_hash != units_hash:
        problems.append(f"units differ (store units_hash {meta.units_hash}, model {units_hash}): the student must "
                        "use the teacher's tokens.txt (units.from_model: TEACHER_DIR)")
    if meta.vocab_size != vocab_size:
        problems.append(f"vocabulary size differs (store {meta.vocab_size}, model {vocab_size})")
    if abs(meta.frame_shift_ms - frame_shift_ms) > 1e-6:
        problems.append(f"output frame shift differs (store {meta.frame_shift_ms:g} ms, model {frame_shift_ms:g} ms): "
                        "relabel with a teacher of the same frame rate")
    if problems:
        raise StoreError(f"{where}: soft targets are incompatible with the model: " + "; ".join(problems))
    return notes


def teacher_mismatch(meta: StoreMeta, model_dir: str | os.PathLike, where: str = "store") -> str | None:
    """A message when the model dir ``model_dir`` (a student config's ``units.from_model``) is not one
    of the teachers that made the store (its ``fingerprint.txt`` is not in ``meta.teacher_fingerprints``);
    None when it is, when the store recorded no fingerprints, or when a foreign teacher made it (then
    ``units.from_model`` is the ``--units-from`` units source, not a teacher)."""
    from asr_kd.models.model_dir import read_fingerprint

    if not meta.teacher_fingerprints:
        return None
    if any(t.get("kind", "asr-kd") != "asr-kd" for t in meta.teacher_details):
        # a store made with a foreign teacher (Hugging Face, ...) is written in the units of --units-from:
        # the student's units.from_model is that units source, not the teacher; the units hash is checked
        return None
    fingerprint = read_fingerprint(model_dir)
    if fingerprint in meta.teacher_fingerprints:
        return None
    made_by = ", ".join(f"{d} ({f})" if d else f for d, f in
                        zip(meta.teachers or [""] * len(meta.teacher_fingerprints), meta.teacher_fingerprints))
    return (f"{where}: the soft targets were made by teacher {made_by}, but units.from_model names {model_dir} "
            f"(fingerprint {fingerprint}); point units.from_model at the teacher that made the store, relabel with "
            f"this teacher, or set kd.allow_other_teacher: true if the other model is intended")


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


def _compressor(name: str | None, level: int):
    """``bytes -> bytes`` block compressor of a v2 codec (a new zstd context per shard: thread-safe)."""
    if name == "none":
        return bytes
    import zstandard

    # content size in the frame header lets the reader check a block's size; no per-frame checksum: the
    # shard's sha256 (checked when a reader opens the shard) already covers every byte
    ctx = zstandard.ZstdCompressor(level=level, write_content_size=True, write_checksum=False)
    return ctx.compress


def shard_name(shard_id: int) -> str:
    return f"shard-{shard_id:05d}"


def _read_marker(path: Path) -> dict[str, Any]:
    try:
        marker = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise StoreError(f"{path}: unreadable shard index ({exc}); delete it and {RESUME_HINT}") from None
    version = marker.get("format_version", 1)
    keys = ("shard", "bytes", "frames", "sha256", "utts") + (("record_bytes",) if version == 1 else ("blocks",))
    for key in keys:
        if key not in marker:
            raise StoreError(f"{path}: shard index lacks {key!r}; delete it and {RESUME_HINT}")
    return marker


def _check_utt_id(utt: str, where: str) -> None:
    if not isinstance(utt, str) or not utt or any(c.isspace() for c in utt):
        raise StoreError(f"{where}: utterance id {utt!r} must be a non-empty string without whitespace")


def completed_shards(store_dir: str | os.PathLike) -> set[int]:
    """Shard ids of the store at ``store_dir`` whose marker exists and whose ``.bin`` has the size the
    marker records (read-only: what a labeling rerun skips)."""
    done = set()
    for marker_path in (Path(store_dir) / SHARDS).glob("shard-*.json"):
        try:
            marker = _read_marker(marker_path)
        except StoreError as exc:
            log.warning("%s; the shard will be redone", exc)
            continue
        bin_path = marker_path.with_suffix(".bin")
        if not bin_path.is_file() or bin_path.stat().st_size != marker["bytes"]:
            log.warning("%s: size differs from its index (truncated?); the shard will be redone", bin_path)
            continue
        done.add(int(marker["shard"]))
    return done


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
        self._record = self.meta.record_dtype
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
            utts = {row[0] for row in _read_marker(self.shard_dir / f"{shard_name(s)}.json")["utts"]}
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
            + ("" if finished else f" (or, to relabel everything, use a new --out dir; {self.out_dir} was never finished)"))

    def _encode(self, shard_id: int, items: Sequence[tuple[str, Any, Any]]) -> tuple[Any, list[list]]:
        """Validate ``items``; v1: ``(records, index)``, v2: ``(validated items, index)``."""
        m = self.meta
        where = f"{self.out_dir}: shard {shard_id}"
        seen: set[str] = set()
        parts, index, offset = [], [], 0
        for utt, ids, probs in items:
            _check_utt_id(utt, where)
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
            if m.format_version >= 2:
                parts.append((utt, ids, probs))
                continue
            rec = np.empty(ids.shape[0], dtype=self._record)
            rec["ids"] = ids
            rec["codes"] = quant.encode(probs, m.quantization, m.log8_range)
            parts.append(rec)
            index.append([utt, offset, int(ids.shape[0])])
            offset += ids.shape[0]
        if m.format_version >= 2:
            return parts, index  # validated (utt, ids, probs); _encode_v2 lays them out
        data = np.concatenate(parts) if parts else np.empty(0, dtype=self._record)
        return data, index

    def encoder_params(self) -> dict[str, Any]:
        """Keyword arguments of ``asr_kd.targets.codec.encode_entries`` for this (version 2) store: what a
        labeling worker needs to send ``write_encoded_shard`` its compact columns."""
        m = self.meta
        return dict(top_p=m.top_p, vocab_size=m.vocab_size, quantization=m.quantization, log8_range=tuple(m.log8_range))

    def _encode_v2(self, items: list[tuple[str, np.ndarray, np.ndarray]], top_p: float
                   ) -> tuple[bytes, list[list], list[list], int]:
        """Validated items -> ``(payload, utts, blocks, frames)`` of a v2 shard (see ``asr_kd.targets.codec``)."""
        m = self.meta
        return self._layout_v2([(utt, *v2codec.encode_entries(ids, probs, top_p, m.vocab_size, m.quantization, m.log8_range))
                                for utt, ids, probs in items])

    def _layout_v2(self, encoded: list[tuple[str, np.ndarray, np.ndarray, np.ndarray]]
                   ) -> tuple[bytes, list[list], list[list], int]:
        """Encoded items ``(utt, counts, kept ids, kept codes)`` -> ``(payload, utts, blocks, frames)`` of a v2 shard.

        ``utts`` rows: ``[utt, frame_offset, frames, block, frame_in_block, entry_in_block, entries]``;
        ``blocks`` rows: ``[byte_offset, [counts_bytes, ids_bytes, codes_bytes], frames, entries]``
        (compressed sizes of the three columns, which follow each other from ``byte_offset``).
        """
        m = self.meta
        compress = _compressor(m.codec, m.zstd_level)
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
            if block_frames >= m.block_frames:
                close_block()
        if cols[0]:
            close_block()
        return b"".join(chunks), utts, blocks, offset

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
        data, index = self._encode(shard_id, items)
        if self.meta.format_version >= 2:
            payload, index, blocks, frames = self._encode_v2(data, 1.0 if selected else self.meta.top_p)
            layout = {"blocks": blocks, "codec": self.meta.codec}
        else:
            payload, frames = data.tobytes(), int(data.shape[0])
            layout = {"record_bytes": self._record.itemsize}
        return self._write_payload(shard_id, payload, frames, layout, index)

    def write_encoded_shard(self, shard_id: int, encoded: Sequence[tuple[str, np.ndarray, np.ndarray, np.ndarray]]) -> Path:
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
            _check_utt_id(utt, where)
            if utt in seen:
                raise StoreError(f"{where}: utterance {utt!r} appears twice in the shard")
            seen.add(utt)
            counts, ids, codes = np.asarray(counts), np.asarray(ids), np.asarray(codes)
            if (counts.dtype != np.uint8 or ids.dtype != id_dtype or codes.dtype != code_dtype or counts.ndim != 1
                    or ids.shape != codes.shape or ids.ndim != 1):
                raise StoreError(f"{where}: utterance {utt!r}: encoded columns must be counts (T,) uint8, ids and codes "
                                 f"(entries,) {id_dtype} and {code_dtype}; got {counts.dtype}{counts.shape}, "
                                 f"{ids.dtype}{ids.shape}, {codes.dtype}{codes.shape}")
            if counts.size and (int(counts.min()) < 1 or int(counts.max()) > m.k or int(counts.sum(dtype=np.int64)) != ids.size):
                raise StoreError(f"{where}: utterance {utt!r}: frame counts must be 1..{m.k} and sum to the {ids.size} entries")
            if ids.size and int(ids.max()) >= m.vocab_size:
                raise StoreError(f"{where}: utterance {utt!r}: unit id {int(ids.max())} out of range 0..{m.vocab_size - 1}")
            items.append((utt, counts, ids, codes))
        payload, index, blocks, frames = self._layout_v2(items)
        return self._write_payload(shard_id, payload, frames, {"blocks": blocks, "codec": m.codec}, index)

    def _write_payload(self, shard_id: int, payload: bytes, frames: int, layout: dict[str, Any], index: list[list]) -> Path:
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
            _check_utt_id(utt, str(path))
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
            marker = _read_marker(self.shard_dir / f"{shard_name(s)}.json")
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
                                               [entries[u][2] for u in utts], shard_bytes, source=str(self.out_dir / INDEX))
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


def read_rejects(path: str | os.PathLike) -> dict[str, str]:
    """``rejects.tsv`` -> ``{utt: reason}`` (empty when the file does not exist)."""
    p = Path(path)
    if not p.is_file():
        return {}
    out: dict[str, str] = {}
    text = p.read_text(encoding="utf-8")
    lines = text.split("\n")
    if lines and lines[-1]:  # a torn last line (labeling was killed mid-append): its shard is redone
        log.warning("%s: ignoring an incomplete last line %r (an interrupted run; its shard will be redone)", p, lines[-1][:80])
    for lineno, line in enumerate(lines[:-1], 1):
        if not line.strip():
            continue
        utt, _, reason = line.partition("\t")
        if not utt or not reason:
            raise StoreError(f"{p}:{lineno}: expected 'utt<TAB>reason', got {line!r}")
        out[utt] = reason
    return out


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

    OPEN_SHARDS = 64  # shard memmaps / v2 shard indexes kept open (least recently used closed)
    MARKERS = 256  # parsed shard markers kept

    def __init__(self, store_dir: str | os.PathLike):
        self.store_dir = Path(store_dir)
        self.meta = read_meta(self.store_dir)
        if self.meta.num_shards is None or not (self.store_dir / INDEX).is_file():
            raise StoreError(f"{self.store_dir}: the store was not finalized (labeling did not finish); {RESUME_HINT}")
        self._record = self.meta.record_dtype
        self._index = self._open_index()
        self._utt_ids = compact.UttIds(self._index.ids)
        self._maps: collections.OrderedDict[int, np.ndarray] = collections.OrderedDict()
        self._markers: collections.OrderedDict[int, dict[str, Any]] = collections.OrderedDict()
        # v2: verified shard bytes and decompressed blocks, a few of each (least recently used dropped)
        self._v2_shards: collections.OrderedDict[int, tuple[np.ndarray, dict[str, tuple[int, int, int, int, int]], str]] = \
            collections.OrderedDict()
        self._v2_verified: set[int] = set()  # shards whose sha256 matched (not hashed again when reopened)
        self._v2_blocks: collections.OrderedDict[tuple[int, int], tuple[np.ndarray, np.ndarray, np.ndarray]] = \
            collections.OrderedDict()
        self._decompress = None

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
                shard_bytes.append(int(_read_marker(self.store_dir / SHARDS / f"{shard_name(s)}.json")["bytes"]))
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
        found = self._markers[shard] = _read_marker(path)
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
        why = f"it was rejected by the labeler: {reason}" if reason else f"label it with 'asr-kd label' ({RESUME_HINT})"
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
        arr = self._maps.get(shard)
        if arr is not None:
            self._maps.move_to_end(shard)
            return arr
        path = self.shard_path(shard)
        marker = self.marker(shard)
        if not path.is_file():
            raise StoreError(f"{path}: shard file is missing; delete {path.with_suffix('.json').name} and {RESUME_HINT}")
        size = path.stat().st_size
        if size != marker["bytes"] or marker["record_bytes"] != self._record.itemsize:
            raise StoreError(f"{path}: shard is truncated or corrupt ({size} bytes on disk, its index says "
                             f"{marker['bytes']} bytes of {marker['record_bytes']}-byte frames, this store's frames are "
                             f"{self._record.itemsize} bytes); delete {path.with_suffix('.json').name} and {RESUME_HINT}")
        arr = np.memmap(path, dtype=self._record, mode="r") if size else np.empty(0, dtype=self._record)
        self._maps[shard] = arr
        _trim(self._maps, self.OPEN_SHARDS)
        return arr

    # ------------------------------------------------------------ version 2
    V2_BLOCK_CACHE = 8  # decompressed blocks kept (sequential reads decompress each block once)

    def _v2_shard(self, shard: int) -> tuple[np.ndarray, dict[str, tuple[int, int, int, int, int]], str]:
        """A v2 shard as a read-only memmap, checked against its marker (size, then sha256 of every
        byte) the first time it is opened — before any of it is decoded —, its
        ``{utt: (block, frame_in_block, entry_in_block, frames, entries)}`` and its path for messages. Kept open after,
        like v1's memmaps (the page cache holds the bytes, not this process); the last ``OPEN_SHARDS``
        stay open, and a shard reopened after that is size-checked but not hashed again."""
        cached = self._v2_shards.get(shard)
        if cached is not None:
            self._v2_shards.move_to_end(shard)
            return cached
        path = self.shard_path(shard)
        marker = self.marker(shard)
        fix = f"delete {path.with_suffix('.json').name} and {RESUME_HINT}"
        if not path.is_file():
            raise StoreError(f"{path}: shard file is missing; {fix}")
        size = path.stat().st_size
        if size != marker["bytes"]:
            raise StoreError(f"{path}: shard is truncated or corrupt ({size} bytes on disk, its index says "
                             f"{marker['bytes']} bytes); {fix}")
        data = np.memmap(path, dtype=np.uint8, mode="r") if size else np.empty(0, dtype=np.uint8)
        if shard not in self._v2_verified:
            if hashlib.sha256(data).hexdigest() != marker["sha256"]:
                raise StoreError(f"{path}: sha256 mismatch (the file changed after it was written: disk or copy error); {fix}")
            self._v2_verified.add(shard)
        locs = {row[0]: (int(row[3]), int(row[4]), int(row[5]), int(row[2]), int(row[6])) for row in marker["utts"]}
        found = self._v2_shards[shard] = (data, locs, str(path))
        _trim(self._v2_shards, self.OPEN_SHARDS)
        return found

    def _v2_block(self, shard: int, block: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The ``(counts, ids, codes)`` columns of one block, decompressed and size-checked."""
        key = (shard, block)
        cols = self._v2_blocks.get(key)
        if cols is not None:
            self._v2_blocks.move_to_end(key)
            return cols
        data, _, path = self._v2_shard(shard)
        blocks = self.marker(shard)["blocks"]
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
                    raise StoreError(f"{path}: block {block} does not decompress ({exc}); the shard is corrupt — delete "
                                     f"{Path(path).with_suffix('.json').name} and {RESUME_HINT}") from None
            if len(raw) != length * dtype.itemsize:
                raise StoreError(f"{path}: block {block} holds {len(raw)} bytes in a column, its index says "
                                 f"{length} x {dtype.itemsize}; {RESUME_HINT}")
            out.append(np.frombuffer(raw, dtype=dtype))
        cols = (out[0], out[1], out[2])
        self._v2_blocks[key] = cols
        if len(self._v2_blocks) > self.V2_BLOCK_CACHE:
            self._v2_blocks.popitem(last=False)
        return cols

    def _v2_get(self, shard: int, utt: str, with_counts: bool = False):
        _, locs, path = self._v2_shard(shard)
        if utt not in locs:
            raise StoreError(f"{path}: utterance {utt!r} is in index.tsv but not in the shard's index; "
                             f"{RESUME_HINT} to rebuild the index")
        block, f0, e0, frames, entries = locs[utt]
        counts, ids, codes = self._v2_block(shard, block)
        if f0 + frames > counts.shape[0] or e0 + entries > ids.shape[0]:
            raise StoreError(f"{path}: utterance {utt!r} lies beyond its block {block}; the shard index does not match "
                             f"the shard — {RESUME_HINT}")
        m = self.meta
        out = v2codec.decode_utterance(counts[f0: f0 + frames], ids[e0: e0 + entries], codes[e0: e0 + entries], m.k,
                                       m.vocab_size, m.quantization, m.log8_range, where=(path, utt))
        return out if with_counts else out[:2]

    def _records(self, utt: str) -> np.ndarray:
        shard, offset, frames = self._entry(utt)
        arr = self._shard(shard)
        if offset + frames > arr.shape[0]:
            raise StoreError(f"{self.shard_path(shard)}: utterance {utt!r} (frames {offset}..{offset + frames}) lies beyond "
                             f"the shard's {arr.shape[0]} frames; the index does not match the shard — {RESUME_HINT}")
        return arr[offset: offset + frames]

    def _decode(self, rec: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        ids = rec["ids"].astype(np.int64)
        probs = quant.decode(rec["codes"], self.meta.quantization, self.meta.log8_range)
        return ids.reshape(-1, self.meta.k), probs.reshape(-1, self.meta.k)

    def get_sparse(self, utt: str) -> tuple[np.ndarray, np.ndarray]:
        """Top-k of ``utt``: ``ids (T, k) int64`` and ``probs (T, k) float32`` (largest first, as stored),
        ``T`` output frames of ``meta.frame_shift_ms`` (40 ms).

        ``probs`` are the decoded stored values, not renormalized: they sum to the teacher's kept mass
        (<= 1 up to quantization error). Version 2 stores keep 1..k units per frame (``k`` = k_max):
        the entries beyond a frame's count are padding, id 0 with probability 0, which the KD loss,
        ``sparse_to_dense`` and the KL ignore.
        """
        if self.meta.format_version >= 2:
            return self._v2_get(self._entry(utt)[0], utt)
        return self._decode(self._records(utt))

    def get_counts(self, utt: str) -> np.ndarray:
        """Units stored per frame of ``utt``, ``(T,) int64`` (always ``k`` for version 1)."""
        if self.meta.format_version >= 2:
            return self._v2_get(self._entry(utt)[0], utt, with_counts=True)[2]
        return np.full(self.num_frames(utt), self.meta.k, dtype=np.int64)

    def get_dense(self, utt: str, vocab_size: int | None = None, fill: Literal["zero", "uniform"] = "zero") -> np.ndarray:
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
    def iter_shards(self, shuffle_buffer: int = 0, seed: int = 0, shards: Sequence[int] | None = None
                    ) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
        """Yield ``(utt, ids, probs)`` reading shards sequentially (one memmap pass each).

        ``shuffle_buffer=0``: shard order, then order within each shard. ``shuffle_buffer=N``: shard
        order permuted and a buffer of ``N`` utterances from which a random one is emitted as each new
        one arrives (the usual streaming shuffle); deterministic for a given ``seed``. Every utterance
        is yielded exactly once either way.
        """
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

        rng = np.random.default_rng(seed)
        if shuffle_buffer > 0:
            order = [order[i] for i in rng.permutation(len(order))]

        def sequential() -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
            for s in order:
                entries = entries_of(s)
                if not entries:
                    continue
                if self.meta.format_version >= 2:
                    for _, _, utt in entries:
                        yield (utt, *self._v2_get(s, utt))
                    continue
                arr = self._shard(s)
                for o, f, utt in entries:
                    if o + f > arr.shape[0]:
                        raise StoreError(f"{self.shard_path(s)}: utterance {utt!r} lies beyond the shard's end; {RESUME_HINT}")
                    ids, probs = self._decode(arr[o: o + f])
                    yield utt, ids, probs

        if shuffle_buffer <= 0:
            yield from sequential()
            return
        buf: list[tuple[str, np.ndarray, np.ndarray]] = []
        for item in sequential():
            if len(buf) < shuffle_buffer:
                buf.append(item)
                continue
            j = int(rng.integers(len(buf)))
            out, buf[j] = buf[j], item
            yield out
        while buf:
            j = int(rng.integers(len(buf)))
            buf[j], buf[-1] = buf[-1], buf[j]
            yield buf.pop()

    # ---------------------------------------------------------------- verification
    def problems(self, checksums: bool = True, progress: Callable[[int], None] | None = None) -> list[str]:
        """Every inconsistency found: shard files vs markers (size, sha256), index vs markers.

        ``checksums=False`` skips hashing (sizes and indexes only: reads every marker, no shard bytes).
        ``progress(n)`` is called with the number of shard bytes hashed after each 4 MiB read (and with
        a shard's size when it is not hashed), e.g. a tqdm bar's ``update``. O(store bytes) with
        checksums: this is ``asr-kd targets verify``, not something a trainer runs at start-up.
        """
        found: list[str] = []
        ix = self._index
        n = len(ix)
        first_shard = np.full(n, -1, dtype=np.int32)  # the shard whose marker listed each indexed utterance
        outside: dict[str, int] = {}  # utterances in a marker but not in index.tsv (few: a damaged index)
        shard_dir = self.store_dir / SHARDS
        on_disk = {int(p.stem.split("-")[1]) for p in shard_dir.glob("shard-*.json") if p.stem.split("-")[1].isdigit()}
        extra = sorted(on_disk - set(self.shard_ids))
        if extra:
            found.append(f"shards {extra} exist but meta.json says num_shards={self.meta.num_shards}; {RESUME_HINT}")
        for s in self.shard_ids:
            path = self.shard_path(s)
            try:
                marker = self.marker(s)
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
                    found.append(f"{path}: sha256 mismatch (the file changed after it was written: disk or copy error); {fix}")
            elif progress is not None:
                progress(size)
        for i in np.flatnonzero(first_shard < 0).tolist():
            found.append(f"utterance {ix.ids[i].decode('utf-8')!r} is in index.tsv but in no shard's index; {RESUME_HINT}")
        return found

    def shard_bytes_total(self) -> int:
        """Sum of the shard sizes the markers recorded (the bytes ``problems()`` hashes)."""
        sizes = np.asarray(self._index.shard_bytes)
        if (sizes >= 0).all():
            return int(sizes.sum())
        return sum(int(self.marker(s)["bytes"]) if sizes[s] < 0 else int(sizes[s]) for s in self.shard_ids)

    def verify(self, checksums: bool = True) -> None:
        """Raise StoreError listing every problem ``problems()`` finds."""
        found = self.problems(checksums)
        if found:
            raise StoreError(f"{self.store_dir}: {len(found)} problem(s):\n  " + "\n  ".join(found))


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
