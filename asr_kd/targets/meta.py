"""Store meta (``STORE/meta.json``) and the checks that targets and their consumer agree.

``StoreMeta`` records everything a consumer must agree with before using the targets: the teachers
(fingerprints, weights), the units (``units_hash``, ``vocab_size``), the output frame rate
(``frame_shift_ms``, 40 ms for our models, and ``subsampling``), the temperature, the teachers'
feature framing (``fbank``) and the format (version, ``k``, quantization, ``top_p``, codec).
``check_compatible``, ``fbank_differences`` and ``teacher_mismatch`` compare a store with a student;
``asr_kd.targets.storeset`` compares stores with each other.

Format versions: 1 stores exactly ``k`` units per frame as fixed-size records
(``asr_kd.targets.format1``); 2 (the default of ``asr-kd label``) keeps per frame the fewest units
whose mass reaches ``top_p``, at most ``k`` = k_max, in zstd blocks (``asr_kd.targets.format2``).
Readers read both.

Version check: ``read_meta`` reads ``format_version`` first and refuses a version it does not know
(a future v3) with a "newer format" error, before validating the rest. (asr-kd releases that only
knew version 1 refuse a v2 ``meta.json`` before reading any shard, as "meta.json: invalid store
meta: teachers: Extra inputs are not permitted; top_p: ..." — an error, not garbage, but one that
does not say "upgrade"; they would also have refused ``format_version`` 2 itself right after.)
"""

from __future__ import annotations

import datetime
import json
import os
import socket
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pydantic
from pydantic import Field, model_validator

from asr_kd.config import StrictModel
from asr_kd.errors import StoreError
from asr_kd.targets import codec as v2codec
from asr_kd.targets import quant

FORMAT_VERSION = 2
"""Newest store format this code writes and reads; it also reads version 1 (``READABLE_VERSIONS``)."""
READABLE_VERSIONS = (1, 2)
V2_ONLY_FIELDS = ("top_p", "codec", "zstd_level", "block_frames", "teachers")
META = "meta.json"


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
    teacher_details: list[dict[str, Any]] = Field(
        default_factory=list, description="per teacher when not all are asr-kd model "
        "dirs: kind, path, frame_shift_ms (its own), frame_conversion, unit_map")
    teacher_precision: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32", description="dtype of the teachers' forward passes ('asr-kd label --precision'); written only when "
        "not fp32")
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
            raise ValueError(f"{len(self.teacher_weights)} teacher_weights for {len(self.teacher_fingerprints)} "
                             "teachers")
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
