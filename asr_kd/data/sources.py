"""Row sources for labeling: where the utterances of ``asr-kd label --data`` come from.

Three inputs give the labeling pipeline the same rows, so planning, the Ray pipeline, resume, rejects
and store writing stay one code path (``asr_kd.label.pipeline``):

=========================  ==========================================================================
a Kaldi-style data dir     ``DataDirSource``: one file per recording (``wav.scp``, optional ``segments``)
an audio shard dir         ``ShardSource`` (``asr_kd.data.shards``): tar shards written by
                           ``asr-kd data shard``, recognised by their ``manifest.json``
a lhotse CutSet manifest   ``CutSetSource`` (``asr_kd.data.lhotse_input``): ``cuts.jsonl.gz`` and friends
=========================  ==========================================================================

A source has sorted ``utt_ids``, a duration in seconds per utterance (``seconds()``: the shard plan
sorts by it, so equal durations give equal plans and equal stores) and a small JSON-able *item* per
utterance, ``[utt, where, start, end, extra]``: ``where`` names the audio in messages (a path, or
``SHARD.tar:MEMBER``), ``start``/``end`` are seconds within the recording (``None`` = whole file) and
``extra`` is ``None`` or a dict that says how to get the bytes (``{"tar", "member", "offset", "size",
"sha256"}`` for a shard member, ``{"cut": {...}}`` for a lhotse cut read by lhotse itself, ``{"error":
reason}`` for an utterance rejected before labeling: the reason goes to the store's ``rejects.tsv``).
Items are decoded by ``read_item`` in the Ray read tasks; the driver never loads audio.
"""

from __future__ import annotations

import bisect
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from asr_kd.data.audio import load_audio_rate
from asr_kd.data.datadir import AudioSource, is_pipe
from asr_kd.errors import AsrKdError

LHOTSE_SUFFIXES = (".jsonl.gz", ".jsonl", ".json.gz", ".json")


class LabelSource(Protocol):
    """What the labeling pipeline needs from its input (see the module docstring)."""

    path: str

    @property
    def utt_ids(self) -> Sequence[str]: ...

    def __len__(self) -> int: ...

    def seconds(self) -> Mapping[str, float]: ...

    def item(self, utt: str) -> list: ...


class ItemTableSource:
    """Base of the sources whose items and durations are built once at open time (audio shards, lhotse
    cuts): a subclass fills ``_items`` (utt -> item), ``_seconds`` (utt -> seconds) and ``_ids`` (sorted)."""

    path: str
    _ids: list[str]
    _items: dict[str, list]
    _seconds: dict[str, float]

    @property
    def utt_ids(self) -> list[str]:
        return self._ids

    def __len__(self) -> int:
        return len(self._ids)

    def seconds(self) -> dict[str, float]:
        return dict(self._seconds)

    def item(self, utt: str) -> list:
        return self._items[utt]


class IdTable(Sequence[str]):
    """Sorted utterance ids held as one UTF-8 blob plus offsets (length + 8 bytes per id, where a list of
    ``str`` costs ~60 more): indexable, iterable, and ``index(utt)`` by binary search."""

    def __init__(self, blob: bytes | bytearray, offsets: np.ndarray):
        self._blob = blob
        self._offsets = offsets  # int64, len(ids) + 1

    @classmethod
    def build(cls, ids: Iterator[str]) -> "IdTable":
        from array import array

        blob, offsets = bytearray(), array("q", [0])
        for utt in ids:
            blob += utt.encode("utf-8")
            offsets.append(len(blob))
        return cls(bytes(blob), np.frombuffer(offsets, dtype=np.int64).copy())

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(i)
        return self._blob[self._offsets[i]: self._offsets[i + 1]].decode("utf-8")

    def index(self, utt: str, start: int = 0, stop: int | None = None) -> int:  # type: ignore[override]
        i = bisect.bisect_left(self, utt)
        if i == len(self) or self[i] != utt:
            raise KeyError(utt)
        return i

    def __contains__(self, utt: object) -> bool:
        try:
            self.index(str(utt))
        except KeyError:
            return False
        return True

    @property
    def nbytes(self) -> int:
        return len(self._blob) + self._offsets.nbytes


class Durations(Mapping[str, float]):
    """utt -> seconds over an ``IdTable`` and a float64 array (no per-utterance Python objects)."""

    def __init__(self, ids: IdTable, seconds: np.ndarray):
        self.ids, self.array = ids, seconds

    def __getitem__(self, utt: str) -> float:
        return float(self.array[self.ids.index(utt)])

    def __iter__(self) -> Iterator[str]:
        return iter(self.ids)

    def __len__(self) -> int:
        return len(self.ids)

    def values(self):  # type: ignore[override]
        return self.array


class DataDirSource:
    """A Kaldi-style data dir, streamed and held compactly for labeling at scale: per utterance its id
    (``IdTable``), the byte offset of its ``wav.scp`` (or ``segments``) line and its duration, about
    ``len(id) + 24`` bytes; an item re-reads its line. Items are ``[utt, path, start, end, None]``
    (``segments`` give start/end).

    Checked as ``read_data_dir`` checks those files (sorted, unique, well-formed lines, pipes refused
    unless ``allow_pipes``, segments inside wav.scp, utt2dur ids equal to the utterances); files labeling
    does not read (utt2spk, text) are not checked here. Durations come from ``utt2dur`` or ``segments``,
    else from each file's header (0 when unreadable: the utterance is rejected when labeled)."""

    kind = "data dir"

    def __init__(self, path: str | os.PathLike, allow_pipes: bool = False):
        from asr_kd.data.datadir import check_wav_entry, parse_duration, parse_segment, scan_table
        from asr_kd.errors import DataDirError

        self._handles: dict[Path, Any] = {}  # open files of item(): wav.scp, segments
        self.path = str(path)
        root = Path(path)
        if not root.is_dir():
            raise DataDirError("data dir not found (expected a folder with wav.scp, utt2spk, ...)", str(root))
        self._wav_path = root / "wav.scp"
        if not self._wav_path.is_file():
            raise DataDirError("wav.scp is missing; every data dir needs one", str(root))
        wav_offsets: list[int] = []

        def wav_ids() -> Iterator[str]:
            for lineno, key, fields, offset in scan_table(self._wav_path, 2, None, "<audio path or command |>"):
                check_wav_entry(key, fields[0].strip(), self._wav_path, lineno, allow_pipes)
                wav_offsets.append(offset)
                yield key

        self._recordings = IdTable.build(wav_ids())
        if not len(self._recordings):
            raise DataDirError("wav.scp is empty: the data dir has no utterances", str(self._wav_path))
        self._wav_offsets = np.asarray(wav_offsets, dtype=np.int64)
        wav_offsets.clear()  # the offsets live on as the array above
        self._seg_path = root / "segments"
        self.has_segments = self._seg_path.is_file()
        durations = None
        if self.has_segments:
            seg_offsets, seg_seconds = [], []

            def seg_ids() -> Iterator[str]:
                for lineno, key, fields, offset in scan_table(self._seg_path, 4, 4, "<recording-id> <start> <end>"):
                    rec, start, end = parse_segment(key, fields, self._seg_path, lineno)
                    if rec not in self._recordings:
                        raise DataDirError(f"segment {key!r}: recording {rec!r} is absent from wav.scp", str(self._seg_path), lineno)
                    seg_offsets.append(offset)
                    seg_seconds.append(end - start)
                    yield key

            self._ids = IdTable.build(seg_ids())
            if not len(self._ids):
                raise DataDirError("segments is empty; delete it or list the segments", str(self._seg_path))
            self._line_offsets = np.asarray(seg_offsets, dtype=np.int64)
            durations = np.asarray(seg_seconds, dtype=np.float64)
            del seg_offsets, seg_seconds
        else:
            self._ids, self._line_offsets = self._recordings, self._wav_offsets
        where = "segments" if self.has_segments else "wav.scp"
        dur_path = root / "utt2dur"
        if dur_path.is_file():  # merge-joined with the (sorted) utterance ids: every id once, none foreign
            durations = np.zeros(len(self._ids), dtype=np.float64)
            i = 0
            for lineno, key, fields, _ in scan_table(dur_path, 2, 2, "<seconds>"):
                if i >= len(self._ids) or key != self._ids[i]:
                    if key in self._ids:
                        raise DataDirError(f"utterance {self._ids[i]!r} of {where} has no line here", str(dur_path), lineno)
                    raise DataDirError(f"utterance {key!r} is absent from {where}", str(dur_path), lineno)
                durations[i] = parse_duration(key, fields[0], dur_path, lineno)
                i += 1
            if i != len(self._ids):
                raise DataDirError(f"{len(self._ids) - i} utterance(s) of {where} have no line here, e.g. {self._ids[i]!r}",
                                   str(dur_path))
        if durations is None:  # neither utt2dur nor segments: the file headers
            from asr_kd.data.audio import audio_duration
            from asr_kd.errors import AudioError

            durations = np.zeros(len(self._ids), dtype=np.float64)
            for i in range(len(self._ids)):
                try:
                    durations[i] = audio_duration(self._path_of(i))
                except (AudioError, OSError):
                    durations[i] = 0.0
        self._durations = Durations(self._ids, durations)

    def _line(self, path: Path, offset: int) -> list[str]:
        fh = self._handles.get(path)
        if fh is None:
            fh = self._handles[path] = open(path, "rb")
        fh.seek(int(offset))
        return fh.readline().decode("utf-8").strip().split(None, 1)

    def _path_of(self, recording: int) -> str:
        return self._line(self._wav_path, self._wav_offsets[recording])[1].strip()

    @property
    def utt_ids(self) -> IdTable:
        return self._ids

    def __len__(self) -> int:
        return len(self._ids)

    def seconds(self) -> Durations:
        return self._durations

    def item(self, utt: str) -> list:
        return self.item_at(self._ids.index(utt), utt)

    def item_at(self, i: int, utt: str) -> list:
        """The item of the ``i``-th utterance (id ``utt``), without searching for it."""
        if not self.has_segments:
            return [utt, self._path_of(i), None, None, None]
        from asr_kd.data.datadir import parse_segment

        key, rest = self._line(self._seg_path, self._line_offsets[i])
        rec, start, end = parse_segment(key, rest.split(), self._seg_path, 0)
        return [utt, self._path_of(self._recordings.index(rec)), start, end, None]

    def close(self) -> None:
        for fh in self._handles.values():
            fh.close()
        self._handles.clear()

    def __del__(self) -> None:
        self.close()

    @property
    def nbytes(self) -> int:
        """Bytes of the per-utterance arrays (ids, offsets, durations)."""
        extra = self._recordings.nbytes + self._wav_offsets.nbytes if self.has_segments else 0
        return self._ids.nbytes + self._line_offsets.nbytes + self._durations.array.nbytes + extra


def open_source(path: str | os.PathLike, allow_pipes: bool = False) -> LabelSource:
    """The row source for ``--data PATH``: an audio shard dir (it has ``manifest.json`` of
    ``asr-kd data shard``), a lhotse CutSet manifest (a ``.jsonl.gz``/``.jsonl``/``.json(.gz)`` file),
    else a Kaldi-style data dir."""
    from asr_kd.data.shards import MANIFEST, ShardSource

    p = Path(path)
    if p.is_dir() and (p / MANIFEST).is_file():
        return ShardSource(p)
    if p.name.endswith(LHOTSE_SUFFIXES) and not p.is_dir():
        if not p.is_file():
            raise AsrKdError(f"{p}: lhotse CutSet manifest not found")
        from asr_kd.data.lhotse_input import CutSetSource

        return CutSetSource(p)
    if p.is_dir() and not (p / "wav.scp").exists() and any(p.glob("shard-*.index.json")):
        raise AsrKdError(f"{p}: an audio shard dir without manifest.json: 'asr-kd data shard' did not finish; "
                         "rerun it (it resumes) before labeling")
    return DataDirSource(p, allow_pipes=allow_pipes)


def read_item(item: list, sample_rate: int, max_seconds: float | None, allow_pipes: bool) -> tuple[np.ndarray, str]:
    """Decode one item to float32 samples at ``sample_rate`` Hz; returns ``(wave, note)``.

    Raises ``AudioError`` for bad audio (the caller rejects the utterance with its reason) and
    ``ShardIntegrityError`` (not an ``AudioError``: the run stops) when a shard disagrees with its index.
    """
    from asr_kd.errors import AudioError

    utt, where, start, end = item[:4]
    extra: dict[str, Any] | None = item[4] if len(item) > 4 else None
    data = None
    if extra and "error" in extra:
        reason, _, detail = str(extra["error"]).partition(": ")
        err = AudioError(detail, utt, None)
        err.reason = reason  # the reason recorded when the input was prepared, verbatim
        raise err
    if extra and "cut" in extra:
        from asr_kd.data.lhotse_input import load_cut_audio

        return load_cut_audio(extra["cut"], utt, sample_rate, max_seconds), ""
    if extra and "tar" in extra:
        from asr_kd.data.shards import read_member

        data = read_member(extra)
    wave, rate = load_audio_rate(AudioSource(utt, where, start, end), sample_rate=sample_rate, max_seconds=max_seconds,
                                 allow_pipes=allow_pipes, data=data)
    note = ""
    if rate != sample_rate and not is_pipe(where):
        note = f"file {where} is {rate} Hz: resampled to {sample_rate} Hz for the teachers"
    return np.asarray(wave.numpy(), dtype=np.float32), note  # no copy: float32 already
