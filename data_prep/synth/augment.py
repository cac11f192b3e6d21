"""Acoustic conditions for synthesized speech: silence trimming, additive noise, synthetic reverberation.

All functions take 1-D float32 signals at one sample rate ``sr`` (Hz) and an explicit
``numpy.random.Generator``; nothing reads global random state, so an utterance is a pure function of
its spec. Hand-written on purpose: the coloured noises and the exponential-decay room response are a
few lines of numpy each, and torchaudio/speechbrain's augmenters need noise/RIR corpora we do not
ship (no downloads at run time).
"""

from __future__ import annotations

import numpy as np
import scipy.signal

FRAME_S = 0.010  # energy frame for silence detection, seconds


def speech_bounds(x: np.ndarray, sr: int, threshold_db: float = -40.0) -> tuple[int, int]:
    """``(start, end)`` sample indexes of the span whose 10 ms frames are within ``threshold_db`` of the
    loudest frame. An all-silent signal gives ``(0, 0)``."""
    hop = max(1, int(round(FRAME_S * sr)))
    n_frames = len(x) // hop
    if n_frames == 0:
        return (0, 0)
    frames = x[: n_frames * hop].reshape(n_frames, hop).astype(np.float64)
    energy = (frames ** 2).mean(axis=1)
    peak = energy.max()
    if peak <= 0:
        return (0, 0)
    active = np.flatnonzero(10.0 * np.log10(energy / peak + 1e-20) > threshold_db)
    return int(active[0] * hop), int(min(len(x), (active[-1] + 1) * hop))


def trim_and_pad(x: np.ndarray, sr: int, lead_s: float, tail_s: float) -> np.ndarray:
    """Cut the engine's own leading/trailing silence and put ``lead_s``/``tail_s`` seconds of digital
    silence around the speech (noise, added later, fills it)."""
    start, end = speech_bounds(x, sr)
    core = x[start:end]
    lead = np.zeros(int(round(lead_s * sr)), dtype=np.float32)
    tail = np.zeros(int(round(tail_s * sr)), dtype=np.float32)
    return np.concatenate([lead, core.astype(np.float32), tail])


def synthetic_rir(sr: int, rt60: float, rng: np.random.Generator) -> np.ndarray:
    """A room impulse response: a direct-path impulse followed, after a 2-8 ms gap, by Gaussian noise
    with an exponential envelope that decays by 60 dB in ``rt60`` seconds. Normalized to unit energy."""
    n = max(2, int(round(rt60 * sr)))
    t = np.arange(n) / sr
    tail = rng.standard_normal(n) * np.exp(-6.9078 * t / rt60)  # ln(1000) = 6.9078: -60 dB at rt60
    gap = int(round(rng.uniform(0.002, 0.008) * sr))
    tail[:gap] = 0.0
    rir = tail * rng.uniform(0.2, 0.6)
    rir[0] = 1.0
    return (rir / np.sqrt((rir ** 2).sum())).astype(np.float32)


def reverberate(x: np.ndarray, rir: np.ndarray) -> np.ndarray:
    """Convolve with ``rir`` keeping the original length (the tail silence holds the reverb tail)."""
    return scipy.signal.fftconvolve(x, rir, mode="full")[: len(x)].astype(np.float32)


def colored_noise(n: int, kind: str, rng: np.random.Generator) -> np.ndarray:
    """``n`` samples of unit-RMS noise: ``white`` (flat), ``pink`` (1/f power) or ``brown`` (1/f^2 power),
    shaped in the frequency domain."""
    white = rng.standard_normal(n)
    if kind == "white":
        noise = white
    elif kind in ("pink", "brown"):
        spec = np.fft.rfft(white)
        f = np.arange(len(spec), dtype=np.float64)
        f[0] = 1.0
        spec = spec / (np.sqrt(f) if kind == "pink" else f)
        noise = np.fft.irfft(spec, n)
    else:
        raise ValueError(f"unknown noise kind {kind!r}")
    rms = np.sqrt(np.mean(noise ** 2))
    return (noise / rms if rms > 0 else noise).astype(np.float32)


def babble(n: int, talkers: list[np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """Babble of ``n`` samples: each talker's speech looped from a random offset, at unit RMS, summed
    and renormalized to unit RMS."""
    out = np.zeros(n, dtype=np.float64)
    for talk in talkers:
        if len(talk) == 0:
            continue
        rms = np.sqrt(np.mean(talk.astype(np.float64) ** 2))
        if rms <= 0:
            continue
        offset = int(rng.integers(0, len(talk)))
        reps = int(np.ceil((n + offset) / len(talk)))
        out += np.tile(talk, reps)[offset: offset + n] / rms
    rms = np.sqrt(np.mean(out ** 2))
    return (out / rms if rms > 0 else out).astype(np.float32)


def add_noise(x: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """``x + g * noise`` with ``g`` chosen so that signal power / noise power is ``snr_db`` dB
    (powers over the whole utterance)."""
    ps = float(np.mean(x.astype(np.float64) ** 2))
    pn = float(np.mean(noise.astype(np.float64) ** 2))
    if ps <= 0 or pn <= 0:
        return x
    gain = np.sqrt(ps / (pn * 10.0 ** (snr_db / 10.0)))
    return (x + gain * noise).astype(np.float32)


def set_level(x: np.ndarray, level_dbfs: float, peak_dbfs: float = -1.0) -> np.ndarray:
    """Scale to an RMS of ``level_dbfs`` dB full scale, then down if the peak exceeds ``peak_dbfs``
    (so 16-bit PCM never clips)."""
    rms = float(np.sqrt(np.mean(x.astype(np.float64) ** 2)))
    if rms <= 0:
        return x
    y = x * (10.0 ** (level_dbfs / 20.0) / rms)
    peak = float(np.max(np.abs(y)))
    limit = 10.0 ** (peak_dbfs / 20.0)
    if peak > limit:
        y = y * (limit / peak)
    return y.astype(np.float32)
