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

import os
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from asr_kd.data.audio import load_audio_rate, utterance_seconds
from asr_kd.data.datadir import AudioSource, DataDir, is_pipe, read_data_dir
from asr_kd.errors import AsrKdError

LHOTSE_SUFFIXES = (".jsonl.gz", ".jsonl", ".json.gz", ".json")


class LabelSource(Protocol):
    """What the labeling pipeline needs from its input (see the module docstring)."""

    path: str

    @property
    def utt_ids(self) -> list[str]: ...

    def __len__(self) -> int: ...

    def seconds(self) -> dict[str, float]: ...

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


class DataDirSource:
    """A Kaldi-style data dir: items are ``[utt, path, start, end, None]`` (segments give start/end)."""

    kind = "data dir"

    def __init__(self, path: str | os.PathLike, allow_pipes: bool = False):
        self.path = str(path)
        self.data: DataDir = read_data_dir(path, allow_pipes=allow_pipes)

    @property
    def utt_ids(self) -> list[str]:
        return self.data.utt_ids

    def __len__(self) -> int:
        return len(self.data)

    def seconds(self) -> dict[str, float]:
        return {u: utterance_seconds(self.data, u) for u in self.data.utt_ids}

    def item(self, utt: str) -> list:
        src = self.data.source(utt)
        return [utt, src.path, src.start, src.end, None]


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
    return wave.numpy().astype(np.float32), note
