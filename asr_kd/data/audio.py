"""Audio input: one utterance's samples as a 1-D float32 tensor at the model's sample rate.

Files are decoded with ``soundfile`` (libsndfile: wav, flac, ogg, ...). ``torchaudio.load`` is not used
because torchaudio 2.11 routes it through torchcodec, which we do not depend on. PCM samples come back
as float32 in [-1, 1) (int16 ``x`` becomes ``x / 32768``); float files are returned as stored.

Every problem raises a typed ``AudioError`` subclass (``asr_kd.errors``) that names the utterance and the
file, so callers can reject one utterance with a reason (``exc.reason``) instead of failing a whole job:

=========================  ====================================================================
``AudioMissingError``      the file does not exist
``AudioUnreadableError``   not audio / corrupt / a pipe command that failed or is not allowed
``AudioEmptyError``        0 samples (also: a segment that starts at or after the end of the file)
``AudioSegmentError``      (subclass of ``AudioEmptyError``) a segment that ends more than
                           ``MAX_SEGMENT_OVERSHOOT_S`` past the end of the file
``AudioNonFiniteError``    NaN or inf samples
``AudioChannelError``      more than one channel (we refuse to guess how to downmix)
``AudioRateError``         file rate differs from the wanted rate and resampling is off
``AudioTooLongError``      longer than ``max_seconds``
=========================  ====================================================================
"""

from __future__ import annotations

import io
import shlex
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import soundfile as sf
import torch
import torchaudio

from asr_kd.data.datadir import AudioSource, is_pipe
from asr_kd.errors import (
    AudioError,
    AudioChannelError,
    AudioEmptyError,
    AudioMissingError,
    AudioNonFiniteError,
    AudioRateError,
    AudioTooLongError,
    AudioUnreadableError,
)

if TYPE_CHECKING:
    from asr_kd.data.datadir import DataDir

MAX_SEGMENT_OVERSHOOT_S = 0.5
"""A segment may end at most this many seconds after the end of its recording; the excess is dropped.
Same tolerance and default as Kaldi's ``extract-segments --max-overshoot=0.5``."""

PIPE_TIMEOUT_S = 600.0
"""A ``wav.scp`` pipe command that has not finished after this many seconds is killed."""

# Characters that need a shell: a pipe entry containing any of them runs through ``/bin/sh -c``.
_SHELL_CHARS = set("|&;<>()$`\\\"'*?[]#~=%{}")


class AudioSegmentError(AudioEmptyError):
    """A ``segments`` line points past the end of its recording (beyond the allowed overshoot)."""

    reason = "segment_out_of_range"


def _seconds_to_samples(seconds: float, rate: int) -> int:
    """Seconds -> sample index, rounded to the nearest sample (as lhotse does)."""
    return int(round(seconds * rate))


def _run_pipe(command: str, utt_id: str | None) -> bytes:
    """Run a Kaldi ``wav.scp`` pipe entry (``cmd args |``) and return its stdout (audio file bytes).

    Simple commands run without a shell (argument list from ``shlex.split``); entries that use shell
    syntax (an inner pipe, redirection, variables, quoting) need ``/bin/sh -c``, as Kaldi runs them.
    Either way this only happens when the caller passed ``allow_pipes=True``.
    """
    cmd = command.rstrip()
    assert cmd.endswith("|")
    cmd = cmd[:-1].strip()
    use_shell = any(c in _SHELL_CHARS for c in cmd)
    try:
        proc = subprocess.run(
            cmd if use_shell else shlex.split(cmd),
            shell=use_shell,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            timeout=PIPE_TIMEOUT_S,
            check=False,
        )
    except FileNotFoundError as exc:
        raise AudioUnreadableError(f"pipe command not found: {exc.filename!r} (from {command!r})", utt_id) from None
    except subprocess.TimeoutExpired:
        raise AudioUnreadableError(f"pipe command {command!r} did not finish within {PIPE_TIMEOUT_S:.0f} s", utt_id) from None
    if proc.returncode != 0:
        tail = proc.stderr.decode("utf-8", "replace").strip().splitlines()[-3:]
        raise AudioUnreadableError(f"pipe command {command!r} exited with status {proc.returncode}: {' | '.join(tail)}", utt_id)
    if not proc.stdout:
        raise AudioEmptyError(f"pipe command {command!r} wrote no bytes", utt_id)
    return proc.stdout


def _open(source: AudioSource, allow_pipes: bool) -> tuple[Any, str | None]:
    """Return something ``soundfile`` can open (a path or a BytesIO) and the file path for messages."""
    if is_pipe(source.path):
        if not allow_pipes:
            raise AudioUnreadableError(
                "wav.scp entry is a pipe command; commands are refused by default because they run "
                "arbitrary programs: convert the audio to files, or pass --allow-pipes / allow_pipes=True",
                source.utt_id, source.path)
        return io.BytesIO(_run_pipe(source.path, source.utt_id)), source.path
    path = Path(source.path)
    if not path.is_file():
        raise AudioMissingError("audio file not found", source.utt_id, source.path)
    return str(path), source.path


_HEADER_ERRORS = (sf.LibsndfileError, RuntimeError, TypeError)  # what soundfile raises for a file it cannot parse


def _unreadable(exc: Exception, utt_id: str | None, path: str | None) -> AudioUnreadableError:
    return AudioUnreadableError(f"not a readable audio file ({exc}); check the file or re-encode it as wav/flac", utt_id, path)


def _info(handle: Any, utt_id: str | None, path: str | None) -> Any:
    try:
        info = sf.info(handle)
    except _HEADER_ERRORS as exc:
        raise _unreadable(exc, utt_id, path) from None
    if isinstance(handle, io.BytesIO):
        handle.seek(0)
    return info


def audio_duration(path: str, allow_pipes: bool = False) -> float:
    """Duration in seconds of a whole audio file from its header (no decoding).

    ``path`` may be a ``wav.scp`` pipe entry when ``allow_pipes``; the command is then run.
    """
    handle, where = _open(AudioSource(utt_id=None, path=path), allow_pipes)  # type: ignore[arg-type]
    info = _info(handle, None, where)
    if info.frames <= 0 or info.samplerate <= 0:
        raise AudioEmptyError("audio file has 0 samples", None, where)
    return info.frames / info.samplerate


def read_samples(
    source: AudioSource,
    sample_rate: int | None = None,
    max_seconds: float | None = None,
    allow_pipes: bool = False,
    dtype: str = "float32",
    data: bytes | None = None,
) -> tuple[np.ndarray, int, Any]:
    """Read one utterance at the file's own rate, with every check of ``load_audio`` but no resampling.

    Returns ``(samples, rate, info)``: 1-D samples of ``source``'s span in ``dtype`` (``float32``: PCM
    scaled to [-1, 1); ``int32``: integer PCM left-aligned, as libsndfile returns it), the file's rate
    in Hz and its header (the closed ``soundfile.SoundFile``: ``samplerate``, ``frames``, ``channels``,
    ``format``, ``subtype``). ``sample_rate`` given: a different file rate raises
    ``AudioRateError``. ``data``: the bytes of an audio file held in memory (e.g. a member of an audio
    shard); ``source.path`` then only names it in messages. NaN/inf is checked for float dtypes.
    """
    utt, where = source.utt_id, source.path
    if data is not None:
        handle: Any = io.BytesIO(data)
    else:
        handle, _ = _open(source, allow_pipes)
    # One open for the header checks and the decoding (sf.info + sf.read would parse the header twice:
    # a third of the read time of a short wav file)
    try:
        sound = sf.SoundFile(handle)
    except _HEADER_ERRORS as exc:
        raise _unreadable(exc, utt, where) from None
    with sound:
        return _read_open(sound, source, sample_rate, max_seconds, dtype)


def _read_open(sound: Any, source: AudioSource, sample_rate: int | None, max_seconds: float | None, dtype: str
               ) -> tuple[np.ndarray, int, Any]:
    """``read_samples`` on an open ``soundfile.SoundFile``: its header checked, then its span decoded."""
    utt, where = source.utt_id, source.path
    rate, total = int(sound.samplerate), int(sound.frames)
    if sound.channels != 1:
        raise AudioChannelError(
            f"audio has {sound.channels} channels; asr-kd reads mono only. Downmix it, e.g. "
            f"'sox in.wav -c 1 out.wav' (or pick one channel: 'sox in.wav out.wav remix 1')", utt, where)
    if sample_rate is not None and rate != sample_rate:
        raise AudioRateError(f"sample rate is {rate} Hz, expected {sample_rate} Hz (resampling is off); "
                             f"resample it, e.g. 'sox in.wav -r {sample_rate} out.wav'", utt, where)
    if total <= 0:
        raise AudioEmptyError("audio file has 0 samples", utt, where)

    start = 0 if source.start is None else _seconds_to_samples(source.start, rate)
    stop = total if source.end is None else _seconds_to_samples(source.end, rate)
    if start >= total:
        raise AudioEmptyError(f"segment starts at {source.start:.3f} s but the recording is only {total / rate:.3f} s long",
                              utt, where)
    if stop > total:
        overshoot = (stop - total) / rate
        if overshoot > MAX_SEGMENT_OVERSHOOT_S:
            raise AudioSegmentError(
                f"segment ends at {source.end:.3f} s, {overshoot:.3f} s after the end of the recording "
                f"({total / rate:.3f} s; at most {MAX_SEGMENT_OVERSHOOT_S} s is tolerated); fix the segments file",
                utt, where)
        stop = total
    if stop <= start:
        raise AudioEmptyError(f"segment [{source.start}, {source.end}] s has 0 samples", utt, where)
    seconds = (stop - start) / rate
    if max_seconds is not None and seconds > max_seconds:
        raise AudioTooLongError(f"{seconds:.2f} s is longer than the limit of {max_seconds:g} s; segment long "
                                f"recordings first (e.g. asr-kd prepare librilight) or raise max_seconds", utt, where)

    # 16-bit PCM (WAV, FLAC) as float32: decoded as int16 and scaled here -- bit-identical to libsndfile's own
    # conversion (x / 32768 is exact in float32) and half the time per file (143 vs 77 us for a 2.6 s wav)
    as_int16 = dtype == "float32" and sound.subtype == "PCM_16"
    try:
        if start:
            sound.seek(start)
        samples = sound.read(stop - start, dtype="int16" if as_int16 else dtype)  # mono (checked above): 1-D
    except (sf.LibsndfileError, RuntimeError) as exc:
        raise AudioUnreadableError(f"decoding failed ({exc}); the file is truncated or corrupt", utt, where) from None
    if samples.shape[0] == 0:
        raise AudioEmptyError("decoded 0 samples", utt, where)
    if samples.shape[0] != stop - start:
        # libsndfile stops early on a truncated file whose header claims more frames
        raise AudioUnreadableError(f"header says {stop - start} samples in range but only {samples.shape[0]} "
                                   f"could be decoded; the file is truncated", utt, where)
    if as_int16:
        samples = np.multiply(samples, np.float32(1 / 32768), dtype=np.float32)
    elif samples.dtype.kind == "f" and not bool(np.isfinite(samples).all()):
        bad = int((~np.isfinite(samples)).sum())
        raise AudioNonFiniteError(f"{bad} of {samples.size} samples are NaN or inf", utt, where)
    return samples, rate, sound


def check_file(source: AudioSource, block_seconds: float = 60.0) -> Any:
    """Decode a whole audio file in blocks of ``block_seconds`` with the checks of ``read_samples`` (same
    errors, same messages) without holding it in memory; returns its ``soundfile`` info.

    For files whose bytes are kept as they are (audio shards): a 10-hour recording costs one block."""
    utt, where = source.utt_id, source.path
    handle, _ = _open(source, allow_pipes=False)
    info = _info(handle, utt, where)
    rate, total = int(info.samplerate), int(info.frames)
    if info.channels != 1:
        raise AudioChannelError(
            f"audio has {info.channels} channels; asr-kd reads mono only. Downmix it, e.g. "
            f"'sox in.wav -c 1 out.wav' (or pick one channel: 'sox in.wav out.wav remix 1')", utt, where)
    if total <= 0:
        raise AudioEmptyError("audio file has 0 samples", utt, where)
    decoded = bad = 0
    try:
        for block in sf.blocks(handle, blocksize=max(1, int(block_seconds * rate)), dtype="float32", always_2d=True):
            decoded += block.shape[0]
            bad += int((~np.isfinite(block[:, 0])).sum())
    except (sf.LibsndfileError, RuntimeError) as exc:
        raise AudioUnreadableError(f"decoding failed ({exc}); the file is truncated or corrupt", utt, where) from None
    if decoded == 0:
        raise AudioEmptyError("decoded 0 samples", utt, where)
    if decoded != total:
        raise AudioUnreadableError(f"header says {total} samples in range but only {decoded} "
                                   f"could be decoded; the file is truncated", utt, where)
    if bad:
        raise AudioNonFiniteError(f"{bad} of {decoded} samples are NaN or inf", utt, where)
    return info


def load_audio_rate(
    source: AudioSource,
    sample_rate: int = 16000,
    allow_resample: bool = True,
    max_seconds: float | None = None,
    allow_pipes: bool = False,
    data: bytes | None = None,
) -> tuple[torch.Tensor, int]:
    """``load_audio`` that also returns the file's own sample rate (Hz) before resampling."""
    samples, rate, _ = read_samples(source, None if allow_resample else sample_rate, max_seconds, allow_pipes,
                                    dtype="float32", data=data)
    wave = torch.from_numpy(samples)
    if rate != sample_rate:
        wave = torchaudio.functional.resample(wave, orig_freq=rate, new_freq=sample_rate)
    return wave, rate


def load_audio(
    source: AudioSource,
    sample_rate: int = 16000,
    allow_resample: bool = True,
    max_seconds: float | None = None,
    allow_pipes: bool = False,
    data: bytes | None = None,
) -> torch.Tensor:
    """Read one utterance: 1-D float32 samples at ``sample_rate`` Hz (PCM scaled to [-1, 1)).

    ``source.start`` / ``source.end`` (seconds) select a segment; only that frame range is read from
    the file. ``max_seconds`` bounds the duration of what is read (checked from the header before
    decoding, so a 10-hour file is refused without reading it). Resampling uses
    ``torchaudio.functional.resample`` (windowed sinc) when the file rate differs; with
    ``allow_resample=False`` a different rate raises ``AudioRateError``. ``data``: the file's bytes
    already in memory (an audio-shard member); ``source.path`` then only names it in messages.
    """
    return load_audio_rate(source, sample_rate, allow_resample, max_seconds, allow_pipes, data)[0]


def utterance_seconds(data: "DataDir", utt: str) -> float:
    """Duration in seconds from utt2dur/segments, else from the file header; 0 when unreadable
    (labeling plans shards by it and rejects the utterance later)."""
    d = data.duration(utt)
    if d is not None:
        return d
    try:
        return audio_duration(data.source(utt).path)
    except (AudioError, OSError):
        return 0.0


def load_utterance(data: "DataDir", utt_id: str, **kwargs: Any) -> torch.Tensor:
    """``load_audio`` of one utterance of a data dir (its file, and its segment if any)."""
    return load_audio(data.source(utt_id), **kwargs)

