"""lhotse CutSet manifests as labeling input: ``asr-kd label --data cuts.jsonl.gz``.

The manifest is read with lhotse itself (``CutSet.from_jsonl_lazy`` for ``.jsonl``/``.jsonl.gz``, streamed,
``CutSet.from_file`` for ``.json``/``.json.gz``). One cut = one utterance: the cut id is the utterance id,
``cut.start``/``cut.duration`` (seconds) select the span of its recording, supervisions are not needed
for labeling but must lie inside the cut.

How a cut's audio is read: a mono cut of a recording with one ``file`` source and no transforms is read
by asr-kd's own ``load_audio`` from that file and span, exactly as a data dir's ``wav.scp`` + ``segments``
line would be, so the store equals the store of the equivalent data dir. Any other recording (URL,
command, in-memory or Shar sources, lhotse transforms such as speed perturbation) is read with lhotse's
``cut.load_audio()`` in the Ray read task.

Cuts that cannot be labeled are rejected, one line per cut in the store's ``rejects.tsv`` with the
cut id and the reason, and the rest is labeled:

- ``unsupported_cut``: a MixedCut or PaddingCut (labeling reads one recording per utterance);
- ``multi_channel``: a MultiCut, or a recording with more than one channel (asr-kd reads mono only);
- ``no_recording``: a cut without a recording (features only);
- ``segment_out_of_range``: the cut starts before 0 or ends more than ``MAX_SEGMENT_OVERSHOOT_S``
  after the end of its recording;
- ``supervision_out_of_range``: a supervision starts before the cut or ends after it (more than
  ``SUPERVISION_TOLERANCE_S``);
- and, when the audio is read, the reasons of ``asr_kd.data.audio`` (``missing`` file, ``unreadable``, ...).
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import numpy as np

from asr_kd.data.audio import MAX_SEGMENT_OVERSHOOT_S
from asr_kd.data.sources import ItemTableSource
from asr_kd.errors import (
    AsrKdError,
    AudioChannelError,
    AudioEmptyError,
    AudioMissingError,
    AudioNonFiniteError,
    AudioTooLongError,
    AudioUnreadableError,
)

SUPERVISION_TOLERANCE_S = 0.001  # a supervision may stick out of its cut by this much (float rounding of times)


def _reject(reason: str, detail: str) -> dict[str, str]:
    return {"error": f"{reason}: {detail}"}


def read_cuts(path: str | os.PathLike):
    """The CutSet of a manifest file, lazily for JSONL (``lhotse`` must be installed)."""
    try:
        from lhotse import CutSet
    except ImportError:  # pragma: no cover - lhotse is a dependency
        raise AsrKdError(f"{path}: reading a lhotse CutSet needs the lhotse package (pip install lhotse)") from None
    p = str(path)
    try:
        if p.endswith((".jsonl", ".jsonl.gz")):
            return CutSet.from_jsonl_lazy(p)
        return CutSet.from_file(p)
    except Exception as exc:  # lhotse raises ValueError/KeyError/JSONDecodeError on bad manifests
        raise AsrKdError(f"{p}: not a readable lhotse CutSet manifest ({type(exc).__name__}: {exc})") from None


def cut_item(cut: Any) -> tuple[list, float]:
    """The labeling item of one cut (``asr_kd.data.sources``) and its duration in seconds."""
    from lhotse.cut import MonoCut, MultiCut

    utt = cut.id
    seconds = float(cut.duration)
    if isinstance(cut, MultiCut):
        return [utt, None, None, None, _reject("multi_channel", f"cut is a MultiCut of channels {cut.channel}; asr-kd "
                                               "labels mono audio (make one MonoCut per channel, or downmix)")], seconds
    if not isinstance(cut, MonoCut):
        return [utt, None, None, None, _reject("unsupported_cut", f"cut is a {type(cut).__name__}; asr-kd labels "
                                               "MonoCuts of one recording")], seconds
    rec = cut.recording
    if rec is None:
        return [utt, None, None, None, _reject("no_recording", "cut has no recording (features only?)")], seconds
    if rec.num_channels != 1:
        return [utt, None, None, None, _reject("multi_channel", f"recording {rec.id!r} has {rec.num_channels} channels; "
                                               "asr-kd reads mono only (downmix it, e.g. 'sox in.wav -c 1 out.wav')")], seconds
    start, end = float(cut.start), float(cut.start) + float(cut.duration)
    if start < 0 or end > rec.duration + MAX_SEGMENT_OVERSHOOT_S or cut.duration <= 0:
        return [utt, None, None, None, _reject("segment_out_of_range", f"cut spans [{start:.3f}, {end:.3f}] s of recording "
                                               f"{rec.id!r}, which is {rec.duration:.3f} s long")], seconds
    for sup in cut.supervisions:
        if sup.start < -SUPERVISION_TOLERANCE_S or sup.end > cut.duration + SUPERVISION_TOLERANCE_S:
            return [utt, None, None, None, _reject(
                "supervision_out_of_range", f"supervision {sup.id!r} spans [{sup.start:.3f}, {sup.end:.3f}] s of the cut, "
                f"outside the cut's [0, {cut.duration:.3f}] s")], seconds
    src = rec.sources[0] if len(rec.sources) == 1 else None
    if src is not None and src.type == "file" and not rec.transforms and list(src.channels) == [0]:
        path = str(Path(src.source).absolute())  # read tasks may run in another working directory
        whole = start == 0 and abs(cut.duration - rec.duration) < 0.5 / rec.sampling_rate
        return [utt, path, None if whole else start, None if whole else end, None], seconds
    return [utt, f"cut {utt!r} (read by lhotse)", None, None, {"cut": cut.to_dict()}], seconds


class CutSetSource(ItemTableSource):
    """Labeling rows from a lhotse CutSet manifest (``asr_kd.data.sources``). The driver keeps one small
    item per cut (where the audio is), never the audio."""

    kind = "lhotse cuts"

    def __init__(self, path: str | os.PathLike):
        self.path = str(Path(path).resolve())
        self._items: dict[str, list] = {}
        self._seconds: dict[str, float] = {}
        cuts = iter(read_cuts(path))
        for n in range(1, 1 << 62):
            try:
                cut = next(cuts)
            except StopIteration:
                break
            except Exception as exc:  # lhotse reads a lazy manifest while iterating
                raise AsrKdError(f"{self.path}: not a readable lhotse CutSet manifest: item {n}: "
                                 f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}") from None
            if cut.id in self._items:
                raise AsrKdError(f"{self.path}: cut id {cut.id!r} occurs twice; cut ids are the utterance ids of the store")
            item, seconds = cut_item(cut)
            self._items[cut.id], self._seconds[cut.id] = item, seconds
        if not self._items:
            raise AsrKdError(f"{self.path}: the CutSet is empty")
        self._ids = sorted(self._items)


def load_cut_audio(cut_dict: dict[str, Any], utt: str, sample_rate: int, max_seconds: float | None) -> np.ndarray:
    """Read a cut with lhotse (``cut.load_audio()``): float32 mono samples resampled to ``sample_rate`` Hz.

    Raises the ``AudioError`` subclasses of ``asr_kd.data.audio`` with the cut named."""
    import torch
    import torchaudio
    from lhotse.serialization import deserialize_item

    where = f"cut {utt!r}"
    cut = deserialize_item(copy.deepcopy(cut_dict))  # lhotse pops keys from the dict it reads
    if max_seconds is not None and cut.duration > max_seconds:
        raise AudioTooLongError(f"{cut.duration:.2f} s is longer than the limit of {max_seconds:g} s", utt, where)
    try:
        samples = cut.load_audio()
    except FileNotFoundError as exc:
        raise AudioMissingError(f"audio not found ({exc})", utt, where) from None
    except Exception as exc:  # lhotse wraps backend errors in its own types
        raise AudioUnreadableError(f"lhotse could not load it ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})",
                                   utt, where) from None
    if samples is None or samples.size == 0:
        raise AudioEmptyError("lhotse decoded 0 samples", utt, where)
    if samples.ndim == 2 and samples.shape[0] != 1:
        raise AudioChannelError(f"lhotse returned {samples.shape[0]} channels; asr-kd reads mono only", utt, where)
    wave = np.ascontiguousarray(samples.reshape(-1), dtype=np.float32)
    if not np.isfinite(wave).all():
        raise AudioNonFiniteError(f"{int((~np.isfinite(wave)).sum())} of {wave.size} samples are NaN or inf", utt, where)
    rate = int(cut.sampling_rate)
    if rate != sample_rate:
        wave = torchaudio.functional.resample(torch.from_numpy(wave), orig_freq=rate, new_freq=sample_rate).numpy()
    return wave.astype(np.float32)
