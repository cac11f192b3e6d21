"""Kaldi-style data dirs: read, validate, write, combine, subset, split by speaker.

A data dir holds one utterance per line in each file, sorted by id (byte order, as ``LC_ALL=C sort``):

- ``wav.scp``   ``<recording-id> <path>`` (a path to a wav/flac file; ``<command> |`` pipes are
  refused unless ``allow_pipes=True``). Without ``segments`` recording id = utterance id.
- ``segments``  optional, ``<utt-id> <recording-id> <start-seconds> <end-seconds>``.
- ``text``      optional (absent for unlabeled sets), ``<utt-id> <transcript>``.
- ``utt2spk``   ``<utt-id> <speaker-id>``; ``spk2utt`` is derived from it when written.
- ``utt2dur``   optional, ``<utt-id> <duration-seconds>``.

Relative audio paths are resolved against the current directory, as in Kaldi; our ``prepare``
commands always write absolute paths. Every problem is reported as a ``DataDirError`` naming the file,
the 1-based line number and what is wrong.
"""

from __future__ import annotations

import dataclasses
import os
import random
from pathlib import Path
from typing import Iterable, Iterator

from asr_kd.errors import DataDirError

FILES = ("wav.scp", "segments", "text", "utt2spk", "spk2utt", "utt2dur")


@dataclasses.dataclass(frozen=True)
class Segment:
    """Part of a recording: ``start``/``end`` in seconds from its beginning."""

    recording: str
    start: float
    end: float


@dataclasses.dataclass
class AudioSource:
    """Where one utterance's samples come from: a file (or pipe command) and an optional time span."""

    utt_id: str
    path: str
    start: float | None = None  # seconds
    end: float | None = None  # seconds; None = to the end of the file

    @property
    def is_pipe(self) -> bool:
        return is_pipe(self.path)


def is_pipe(entry: str) -> bool:
    """True for a Kaldi ``wav.scp`` pipe entry such as ``sox in.wav -t wav - |``."""
    return entry.rstrip().endswith("|")


@dataclasses.dataclass
class DataDir:
    """An in-memory data dir. Mappings are keyed by id; iteration order is sorted utterance ids."""

    wav_scp: dict[str, str]
    utt2spk: dict[str, str]
    segments: dict[str, Segment] | None = None
    text: dict[str, str] | None = None
    utt2dur: dict[str, float] | None = None
    path: Path | None = None
    # extra per-utterance files carried along by subset/combine (e.g. text.ref, text.pseudo)
    extra: dict[str, dict[str, str]] = dataclasses.field(default_factory=dict)

    @property
    def utt_ids(self) -> list[str]:
        """Sorted utterance ids (segment ids when there is a ``segments`` file)."""
        return sorted(self.segments) if self.segments is not None else sorted(self.wav_scp)

    def __len__(self) -> int:
        return len(self.segments) if self.segments is not None else len(self.wav_scp)

    def __iter__(self) -> Iterator[str]:
        return iter(self.utt_ids)

    def __contains__(self, utt_id: object) -> bool:
        return utt_id in (self.segments if self.segments is not None else self.wav_scp)

    @property
    def has_text(self) -> bool:
        return self.text is not None

    @property
    def spk2utt(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for utt in self.utt_ids:
            out.setdefault(self.utt2spk[utt], []).append(utt)
        return {spk: out[spk] for spk in sorted(out)}

    def source(self, utt_id: str) -> AudioSource:
        """The audio file (and time span, with ``segments``) of one utterance."""
        if self.segments is not None:
            seg = self.segments[utt_id]
            return AudioSource(utt_id, self.wav_scp[seg.recording], seg.start, seg.end)
        return AudioSource(utt_id, self.wav_scp[utt_id])

    def duration(self, utt_id: str) -> float | None:
        """Duration in seconds from ``utt2dur`` or ``segments``; None if neither knows."""
        if self.utt2dur is not None and utt_id in self.utt2dur:
            return self.utt2dur[utt_id]
        if self.segments is not None:
            seg = self.segments[utt_id]
            return seg.end - seg.start
        return None

    def total_seconds(self) -> float:
        return float(sum(self.duration(u) or 0.0 for u in self.utt_ids))

    def subset(self, utt_ids: Iterable[str]) -> "DataDir":
        """A new data dir with only ``utt_ids`` (unknown ids are an error)."""
        keep = sorted(set(utt_ids))
        unknown = [u for u in keep if u not in self]
        if unknown:
            raise DataDirError(f"subset: {len(unknown)} utterance(s) not in the data dir, e.g. {unknown[:3]}", self._where())
        keep_set = set(keep)
        if self.segments is not None:
            segments = {u: self.segments[u] for u in keep}
            recs = {s.recording for s in segments.values()}
            wav_scp = {r: p for r, p in self.wav_scp.items() if r in recs}
        else:
            segments = None
            wav_scp = {u: self.wav_scp[u] for u in keep}
        return DataDir(
            wav_scp=wav_scp,
            utt2spk={u: self.utt2spk[u] for u in keep},
            segments=segments,
            text=None if self.text is None else {u: self.text[u] for u in keep},
            utt2dur=None if self.utt2dur is None else {u: self.utt2dur[u] for u in keep if u in self.utt2dur},
            extra={name: {u: v for u, v in table.items() if u in keep_set} for name, table in self.extra.items()},
        )

    def _where(self) -> str | None:
        return str(self.path) if self.path is not None else None


# --------------------------------------------------------------------------------------- reading


def _iter_lines(path: Path) -> Iterator[tuple[int, str, int]]:
    """Yield ``(line_number, stripped_text, byte_offset)``; non-UTF-8 bytes are an error naming the line."""
    offset = 0
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DataDirError(f"not valid UTF-8 (byte {exc.start}); re-encode the file as UTF-8", str(path), lineno) from None
            yield lineno, line.rstrip("\r\n"), offset
            offset += len(raw)


def scan_table(path: Path, min_fields: int, max_fields: int | None, what: str) -> Iterator[tuple[int, str, list[str], int]]:
    """Stream ``<id> fields...`` lines as ``(line_number, id, fields_after_id, byte_offset)``, checking
    field count, duplicates and sort order line by line (constant memory: sorted order makes a duplicate
    the previous line's id).

    ``max_fields=None`` keeps the rest of the line (after the id) as one field (for text and wav.scp).
    """
    prev: str | None = None
    prev_line = 0
    for lineno, line, offset in _iter_lines(path):
        if not line.strip():
            raise DataDirError("empty line; remove it", str(path), lineno)
        if line != line.strip():
            line = line.strip()
        if max_fields is None:
            parts = line.split(None, 1)
            fields = parts[1:]
            if min_fields > 1 and not fields:
                raise DataDirError(f"expected '<id> {what}', found only an id", str(path), lineno)
        else:
            parts = line.split()
            fields = parts[1:]
            if not (min_fields <= len(parts) <= max_fields):
                raise DataDirError(f"expected '<id> {what}' ({max_fields} fields), found {len(parts)} fields", str(path), lineno)
        key = parts[0]
        if key == prev:
            raise DataDirError(f"duplicate id {key!r} (first on line {prev_line})", str(path), lineno)
        if prev is not None and key < prev:
            raise DataDirError(f"not sorted: {key!r} comes after {prev!r}; sort with 'LC_ALL=C sort'", str(path), lineno)
        prev, prev_line = key, lineno
        yield lineno, key, fields, offset


def _read_table(path: Path, min_fields: int, max_fields: int | None, what: str) -> dict[str, tuple[int, list[str]]]:
    """``scan_table`` into ``id -> (line_number, fields_after_id)``."""
    return {key: (lineno, fields) for lineno, key, fields, _ in scan_table(path, min_fields, max_fields, what)}


def check_wav_entry(key: str, entry: str, path: Path, lineno: int, allow_pipes: bool, check_audio: bool = False) -> None:
    """One ``wav.scp`` entry: a pipe only with ``allow_pipes``, a path without spaces (existing, with ``check_audio``)."""
    if is_pipe(entry):
        if not allow_pipes:
            raise DataDirError(
                f"recording {key!r} is a pipe command; commands in wav.scp are refused by default "
                "(they run arbitrary programs) — convert the audio to files, or pass --allow-pipes",
                str(path), lineno)
    elif len(entry.split()) != 1:
        raise DataDirError(f"recording {key!r}: path contains spaces or extra fields: {entry!r}", str(path), lineno)
    elif check_audio and not Path(entry).is_file():
        raise DataDirError(f"audio file of {key!r} not found: {entry}", str(path), lineno)


def parse_segment(key: str, fields: list[str], path: Path, lineno: int) -> tuple[str, float, float]:
    """``segments`` fields after the id -> ``(recording, start, end)`` seconds, with 0 <= start < end."""
    rec, start_s, end_s = fields
    try:
        start, end = float(start_s), float(end_s)
    except ValueError:
        raise DataDirError(f"segment {key!r}: start/end must be seconds, got {start_s!r} {end_s!r}", str(path), lineno) from None
    if start < 0 or end <= start:
        raise DataDirError(f"segment {key!r}: need 0 <= start < end, got start={start} end={end}", str(path), lineno)
    return rec, start, end


def parse_duration(key: str, field: str, path: Path, lineno: int) -> float:
    """An ``utt2dur`` value: seconds > 0."""
    try:
        dur = float(field)
    except ValueError:
        raise DataDirError(f"utterance {key!r}: duration must be seconds, got {field!r}", str(path), lineno) from None
    if not dur > 0:
        raise DataDirError(f"utterance {key!r}: duration must be > 0, got {dur}", str(path), lineno)
    return dur


def _require_same_ids(
    name: str, path: Path, table: dict[str, tuple[int, list[str]]], utt_ids: set[str], where: str, allow_missing: bool = False
) -> None:
    """Every id in ``table`` must be an utterance; every utterance must be in ``table``."""
    for key, (lineno, _) in table.items():
        if key not in utt_ids:
            raise DataDirError(f"utterance {key!r} is absent from {where}", str(path), lineno)
    if not allow_missing:
        missing = sorted(utt_ids - table.keys())
        if missing:
            raise DataDirError(f"{len(missing)} utterance(s) of {where} have no line here, e.g. {missing[:3]}", str(path))


def read_data_dir(path: str | os.PathLike, check_audio: bool = False, allow_pipes: bool = False) -> DataDir:
    """Read and validate a data dir; the first problem found raises ``DataDirError``.

    ``check_audio=True`` also checks that every audio file exists (labeling leaves this off and
    reports missing files per utterance as rejects instead of failing the whole job).
    """
    root = Path(path)
    if not root.is_dir():
        raise DataDirError("data dir not found (expected a folder with wav.scp, utt2spk, ...)", str(root))
    wav_path = root / "wav.scp"
    if not wav_path.is_file():
        raise DataDirError("wav.scp is missing; every data dir needs one", str(root))
    wav_table = _read_table(wav_path, 2, None, "<audio path or command |>")
    if not wav_table:
        raise DataDirError("wav.scp is empty: the data dir has no utterances", str(wav_path))
    wav_scp = {k: v[1][0].strip() for k, v in wav_table.items()}
    for key, (lineno, fields) in wav_table.items():
        check_wav_entry(key, fields[0].strip(), wav_path, lineno, allow_pipes, check_audio)

    segments = None
    seg_path = root / "segments"
    if seg_path.is_file():
        segments = {}
        for key, (lineno, fields) in _read_table(seg_path, 4, 4, "<recording-id> <start> <end>").items():
            rec, start, end = parse_segment(key, fields, seg_path, lineno)
            if rec not in wav_scp:
                raise DataDirError(f"segment {key!r}: recording {rec!r} is absent from wav.scp", str(seg_path), lineno)
            segments[key] = Segment(rec, start, end)
        if not segments:
            raise DataDirError("segments is empty; delete it or list the segments", str(seg_path))

    utt_ids = set(segments) if segments is not None else set(wav_scp)
    where = "segments" if segments is not None else "wav.scp"

    u2s_path = root / "utt2spk"
    if not u2s_path.is_file():
        raise DataDirError("utt2spk is missing; if speakers are unknown use the utterance id as speaker", str(root))
    u2s_table = _read_table(u2s_path, 2, 2, "<speaker-id>")
    _require_same_ids("utt2spk", u2s_path, u2s_table, utt_ids, where)
    utt2spk = {k: v[1][0] for k, v in u2s_table.items()}

    s2u_path = root / "spk2utt"
    if s2u_path.is_file():
        s2u_table = _read_table(s2u_path, 2, 10**9, "<utt-id> ...")
        derived: dict[str, list[str]] = {}
        for utt, spk in utt2spk.items():
            derived.setdefault(spk, []).append(utt)
        for spk, (lineno, utts) in s2u_table.items():
            if sorted(utts) != sorted(derived.get(spk, [])):
                raise DataDirError(f"speaker {spk!r} does not match utt2spk; regenerate spk2utt from utt2spk", str(s2u_path), lineno)
        missing = sorted(derived.keys() - s2u_table.keys())
        if missing:
            raise DataDirError(f"speakers of utt2spk missing here, e.g. {missing[:3]}", str(s2u_path))

    text = None
    text_path = root / "text"
    if text_path.is_file():
        text = {}
        text_table = _read_table(text_path, 1, None, "<transcript>")
        for key, (lineno, fields) in text_table.items():
            if key not in utt_ids:
                raise DataDirError(f"utterance {key!r} is absent from {where}", str(text_path), lineno)
            transcript = fields[0].strip() if fields else ""
            if not transcript:
                raise DataDirError(f"utterance {key!r} has an empty transcript; remove it or give its text", str(text_path), lineno)
            text[key] = transcript
        missing = sorted(utt_ids - text.keys())
        if missing:
            raise DataDirError(f"{len(missing)} utterance(s) of {where} have no transcript, e.g. {missing[:3]}", str(text_path))

    utt2dur = None
    dur_path = root / "utt2dur"
    if dur_path.is_file():
        utt2dur = {}
        table = _read_table(dur_path, 2, 2, "<seconds>")
        _require_same_ids("utt2dur", dur_path, table, utt_ids, where)
        for key, (lineno, fields) in table.items():
            utt2dur[key] = parse_duration(key, fields[0], dur_path, lineno)

    extra = {}
    for name in ("text.ref", "text.pseudo"):
        p = root / name
        if p.is_file():
            extra[name] = {k: (v[1][0] if v[1] else "") for k, v in _read_table(p, 1, None, "<transcript>").items()}

    return DataDir(wav_scp=wav_scp, utt2spk=utt2spk, segments=segments, text=text, utt2dur=utt2dur, path=root, extra=extra)


def validate_data_dir(path: str | os.PathLike, check_audio: bool = True, allow_pipes: bool = False) -> DataDir:
    """Read with every check on (audio files must exist); raises ``DataDirError`` on the first problem."""
    return read_data_dir(path, check_audio=check_audio, allow_pipes=allow_pipes)


# --------------------------------------------------------------------------------------- writing


def _write_table(path: Path, rows: Iterable[tuple[str, str]]) -> None:
    """Write ``id value`` lines sorted by id, atomically (temp file + rename)."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        for key, value in sorted(rows):
            fh.write(f"{key} {value}\n")
    os.replace(tmp, path)


def write_data_dir(data: DataDir, path: str | os.PathLike) -> Path:
    """Write all files of ``data`` (sorted; ``spk2utt`` derived) into ``path``; returns the path."""
    root = Path(path)
    root.mkdir(parents=True, exist_ok=True)
    for name in FILES + ("text.ref", "text.pseudo"):
        stale = root / name
        if stale.exists():
            stale.unlink()
    _write_table(root / "wav.scp", data.wav_scp.items())
    if data.segments is not None:
        _write_table(root / "segments", ((u, f"{s.recording} {s.start:.3f} {s.end:.3f}") for u, s in data.segments.items()))
    if data.text is not None:
        _write_table(root / "text", data.text.items())
    _write_table(root / "utt2spk", data.utt2spk.items())
    _write_table(root / "spk2utt", ((spk, " ".join(utts)) for spk, utts in data.spk2utt.items()))
    if data.utt2dur is not None:
        _write_table(root / "utt2dur", ((u, f"{d:.3f}") for u, d in data.utt2dur.items()))
    for name, table in data.extra.items():
        _write_table(root / name, table.items())
    data.path = root
    return root


# --------------------------------------------------------------------------------------- combining


def combine_data_dirs(dirs: Iterable[DataDir]) -> DataDir:
    """Union of data dirs with disjoint utterance ids. ``text`` is kept only if every dir has one."""
    dirs = list(dirs)
    if not dirs:
        raise DataDirError("combine: no data dirs given")
    if len({d.segments is None for d in dirs}) != 1:
        raise DataDirError("combine: cannot mix data dirs with and without segments")
    wav_scp: dict[str, str] = {}
    utt2spk: dict[str, str] = {}
    segments: dict[str, Segment] | None = {} if dirs[0].segments is not None else None
    all_text = all(d.text is not None for d in dirs)
    all_dur = all(d.utt2dur is not None for d in dirs)
    text: dict[str, str] | None = {} if all_text else None
    utt2dur: dict[str, float] | None = {} if all_dur else None
    extra: dict[str, dict[str, str]] = {}
    for d in dirs:
        for utt in d.utt_ids:
            if utt in utt2spk:
                raise DataDirError(f"combine: utterance {utt!r} occurs in more than one data dir ({d._where()})")
        for rec, p in d.wav_scp.items():
            if rec in wav_scp and wav_scp[rec] != p:
                raise DataDirError(f"combine: recording {rec!r} has two different paths: {wav_scp[rec]} and {p}")
            wav_scp[rec] = p
        utt2spk.update(d.utt2spk)
        if segments is not None and d.segments is not None:
            segments.update(d.segments)
        if text is not None and d.text is not None:
            text.update(d.text)
        if utt2dur is not None and d.utt2dur is not None:
            utt2dur.update(d.utt2dur)
        for name, table in d.extra.items():
            extra.setdefault(name, {}).update(table)
    return DataDir(wav_scp=wav_scp, utt2spk=utt2spk, segments=segments, text=text, utt2dur=utt2dur, extra=extra)


def split_by_speaker(data: DataDir, fractions: list[float], seed: int = 0) -> list[DataDir]:
    """Split into parts with disjoint speakers, sized by ``fractions`` of the utterance count.

    Speakers are shuffled with ``seed`` and assigned greedily, so each part's utterance count is
    close to its share; no speaker appears in two parts.
    """
    if not fractions or any(f <= 0 for f in fractions):
        raise DataDirError(f"split: fractions must be positive, got {fractions}")
    total = float(sum(fractions))
    spk2utt = data.spk2utt
    speakers = sorted(spk2utt)
    if len(speakers) < len(fractions):
        raise DataDirError(f"split: {len(speakers)} speaker(s) cannot make {len(fractions)} speaker-disjoint parts", data._where())
    random.Random(seed).shuffle(speakers)
    targets = [f / total * len(data) for f in fractions]
    parts: list[list[str]] = [[] for _ in fractions]
    # each part first gets one speaker so none is empty, then the neediest part takes the next speaker
    for i in range(len(fractions)):
        parts[i].extend(spk2utt[speakers[i]])
    for spk in speakers[len(fractions):]:
        need = [targets[i] - len(parts[i]) for i in range(len(parts))]
        parts[max(range(len(parts)), key=lambda i: need[i])].extend(spk2utt[spk])
    return [data.subset(p) for p in parts]
