"""Run a TTS engine for one sentence and return 16 kHz (or any rate) mono float32 samples."""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from asr_kd.errors import AsrKdError
from data_prep.synth.voices import Voice

TTS_TIMEOUT_S = 60


class TTSFailedError(AsrKdError):
    """The engine exited with an error, timed out or produced no audible audio."""


def synthesize(voice: Voice, text: str, sample_rate: int, tmp_dir: str | Path | None = None) -> np.ndarray:
    """Speak ``text`` with ``voice``; returns mono float32 samples at ``sample_rate`` Hz.

    The engine writes a wav into a private temporary file (espeak-ng: 22050 Hz, flite: 16 kHz or
    8 kHz), which is read with soundfile and resampled with soxr (``HQ``, deterministic).
    """
    fd, tmp = tempfile.mkstemp(suffix=".wav", dir=tmp_dir)
    os.close(fd)
    try:
        cmd = voice.command(text, tmp)
        try:
            proc = subprocess.run(cmd, capture_output=True, timeout=TTS_TIMEOUT_S, check=False)
        except subprocess.TimeoutExpired:
            raise TTSFailedError(f"{voice.engine} timed out after {TTS_TIMEOUT_S} s for voice {voice.speaker_id}") from None
        except OSError as exc:
            raise TTSFailedError(f"cannot run {cmd[0]}: {exc}") from None
        if proc.returncode != 0:
            err = proc.stderr.decode("utf-8", "replace").strip()[:300]
            raise TTSFailedError(f"{voice.engine} exited with {proc.returncode} for voice {voice.speaker_id}: {err}")
        try:
            audio, sr = sf.read(tmp, dtype="float32", always_2d=True)
        except (sf.LibsndfileError, RuntimeError) as exc:
            raise TTSFailedError(f"{voice.engine} wrote an unreadable wav for voice {voice.speaker_id}: {exc}") from None
    finally:
        Path(tmp).unlink(missing_ok=True)
    audio = audio.mean(axis=1) if audio.shape[1] > 1 else audio[:, 0]
    if audio.size == 0 or not np.any(audio):
        raise TTSFailedError(f"{voice.engine} produced no audio for voice {voice.speaker_id}")
    if sr != sample_rate:
        audio = soxr.resample(audio, sr, sample_rate, quality="HQ")
    return np.ascontiguousarray(audio, dtype=np.float32)
