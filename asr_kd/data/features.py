"""Kaldi-compatible 80-dim log-mel filterbank features, batched and device-agnostic.

``Fbank`` reproduces ``torchaudio.compliance.kaldi.fbank`` (itself a port of Kaldi's
``compute-fbank-feats``) with ``use_energy=False, use_log_fbank=True, use_power=True`` for every
utterance of a padded batch, on CPU or GPU. ``tests/test_features.py`` checks equality per utterance
within 1e-4 in the log domain.

Sample scale (decided once, here): waveforms come in as floats in [-1, 1] (what ``load_audio`` returns)
and are multiplied by 32768 before framing, i.e. Kaldi's int16 convention. The features are then the
numbers Kaldi computes on the same 16-bit wav file, so Kaldi users can compare features and CMVN stats
one to one, and ``dither`` keeps Kaldi's unit (1.0 = one int16 step). (The only effect of the scale on
log-mel values is an offset of ``2 ln 32768 = 20.79`` and where the log floor bites.)

Frames are 25 ms long every 10 ms (``frame_length_ms`` / ``frame_shift_ms``), i.e. 400 / 160 samples
at 16 kHz. With ``snip_edges=True`` (the default, Kaldi's default) an utterance of ``S`` samples has
``1 + (S - 400) // 160`` frames (0 if ``S < 400``), each computed from its own 400 samples only; so the
fbank of a prefix equals the first frames of the fbank of the whole utterance. The streaming decoder
relies on this (``tests/test_features.py::test_prefix_frames_equal_full_frames``).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torchaudio
from pydantic import Field, model_validator

from asr_kd.config import StrictModel

WAVEFORM_SCALE = 32768.0
"""Float samples in [-1, 1] are multiplied by this before framing (Kaldi's int16 convention)."""

CPU_CHUNK_FRAMES = 1024
"""On CPU, fbank runs on at most this many 10 ms frames at a time (a 2 MiB FFT buffer at 512 points)."""

MEL_BAND_FILTERS = 16
"""On CPU, the mel projection runs per band of this many filters, over only the FFT bins they cover (a
triangular filter is zero outside its neighbours' centres: 1,002 of the 514 x 80 weights are non-zero at
16 kHz): ~20 % of a dense matmul's work; 16 float32 columns fill the AVX-512 lanes (3x faster than the
dense matmul, measured; 8 or 10 filters per band ran slower than 16)."""


class FbankConfig(StrictModel):
    """Options of the log-mel front end, with Kaldi's names and semantics (``compute-fbank-feats``)."""

    sample_rate: int = Field(16000, gt=0, description="Hz; audio is resampled to this on load")
    num_mel_bins: int = Field(80, gt=3, description="number of triangular mel filters (feature dim)")
    frame_length_ms: float = Field(25.0, gt=0, description="analysis window length in milliseconds")
    frame_shift_ms: float = Field(10.0, gt=0, description="hop between frames in milliseconds")
    dither: float = Field(0.0, ge=0, description="Gaussian noise std in int16 units added per sample; 0 = deterministic")
    preemphasis: float = Field(0.97, ge=0.0, le=1.0, description="pre-emphasis coefficient")
    remove_dc_offset: bool = Field(True, description="subtract each frame's mean before pre-emphasis")
    window: Literal["povey", "hanning", "hamming", "rectangular", "blackman"] = "povey"
    low_freq: float = Field(20.0, ge=0, description="Hz, low edge of the first mel filter")
    high_freq: float = Field(0.0, description="Hz, high edge of the last filter; <= 0 means nyquist + high_freq")
    energy_floor: float = Field(0.0, ge=0, description="Kaldi option kept for compatibility; unused (no energy column)")
    snip_edges: bool = Field(True, description="only frames that fit entirely in the audio (needed for streaming)")

    @model_validator(mode="after")
    def _check(self) -> "FbankConfig":
        if self.window_size < 2:
            raise ValueError(f"frame_length_ms={self.frame_length_ms} gives a window of {self.window_size} samples")
        if self.window_shift < 1:
            raise ValueError(f"frame_shift_ms={self.frame_shift_ms} gives a shift of 0 samples")
        nyquist = 0.5 * self.sample_rate
        high = self.high_freq if self.high_freq > 0 else nyquist + self.high_freq
        if not (0.0 <= self.low_freq < high <= nyquist):
            raise ValueError(f"need 0 <= low_freq < high_freq <= nyquist; got low_freq={self.low_freq}, "
                             f"high_freq={self.high_freq} (= {high} Hz), nyquist={nyquist} Hz")
        return self

    @property
    def window_size(self) -> int:
        """Samples per frame, ``int(rate * ms / 1000)`` as Kaldi computes it (400 at 16 kHz, 25 ms)."""
        return int(self.sample_rate * self.frame_length_ms * 0.001)

    @property
    def window_shift(self) -> int:
        """Samples between frame starts (160 at 16 kHz, 10 ms)."""
        return int(self.sample_rate * self.frame_shift_ms * 0.001)

    @property
    def padded_window_size(self) -> int:
        """FFT size: the window size rounded up to a power of two (512 for 400)."""
        return 1 << (self.window_size - 1).bit_length()

    def num_frames(self, num_samples: int) -> int:
        """Frames for ``num_samples`` samples. ``snip_edges``: ``1 + (S - W) // H`` (0 if ``S < W``);
        otherwise Kaldi's ``(S + H // 2) // H``."""
        w, h = self.window_size, self.window_shift
        if self.snip_edges:
            return 0 if num_samples < w else 1 + (num_samples - w) // h
        return (num_samples + h // 2) // h


def _window(kind: str, size: int) -> torch.Tensor:
    """Kaldi's analysis windows in float64, built exactly as torchaudio's ``_feature_window_function``."""
    if kind == "hanning":
        return torch.hann_window(size, periodic=False, dtype=torch.float64)
    if kind == "povey":
        return torch.hann_window(size, periodic=False, dtype=torch.float64).pow(0.85)
    if kind == "hamming":
        return torch.hamming_window(size, periodic=False, alpha=0.54, beta=0.46, dtype=torch.float64)
    if kind == "rectangular":
        return torch.ones(size, dtype=torch.float64)
    a = 2 * math.pi / (size - 1)  # blackman, Kaldi's coefficient 0.42
    n = torch.arange(size, dtype=torch.float64)
    return 0.42 - 0.5 * torch.cos(a * n) + 0.08 * torch.cos(2 * a * n)


class Fbank(torch.nn.Module):
    """Batched Kaldi log-mel fbank: ``(B, S)`` padded float waveforms in [-1, 1] -> ``(B, T, F)``.

    Hand-written framing: ``torchaudio.compliance.kaldi.fbank`` takes one utterance at a time (it
    asserts a ``(channels, samples)`` input and frames one signal) and pads every frame's FFT input on
    its own; here frames are strided views (``unfold``) written once into FFT-sized buffers, then one
    ``rfft`` + one matmul per chunk: the whole batch on an accelerator, each utterance's valid frames
    (at most ``CPU_CHUNK_FRAMES`` at a time) on CPU.
    The mel filterbank itself comes from ``torchaudio.compliance.kaldi.get_mel_banks``.

    Window and mel matrix are non-persistent buffers (they follow ``.to(device)`` but are not part of
    any ``state_dict``). Deterministic when ``dither == 0``.
    """

    def __init__(self, config: FbankConfig | None = None):
        super().__init__()
        self.config = config or FbankConfig()
        c = self.config
        banks, _ = torchaudio.compliance.kaldi.get_mel_banks(
            c.num_mel_bins, c.padded_window_size, float(c.sample_rate), c.low_freq, c.high_freq,
            100.0, -500.0, 1.0)  # vtln_low, vtln_high, vtln_warp: no VTLN
        banks = torch.nn.functional.pad(banks.float(), (0, 1))  # zero column for the Nyquist bin, as fbank does
        # the window in float64 and the mel matrix in float32 (as torchaudio builds them); both are cast to
        # the compute dtype in forward
        self.register_buffer("window", _window(c.window, c.window_size), persistent=False)
        # (2 * fft_bins, F): each bin's row twice (for re^2 and im^2), times WAVEFORM_SCALE ** 2 (= 2^30, exact):
        # |FFT|^2 of [-1, 1] samples -> Kaldi's int16 scale
        pairs = banks.T.repeat_interleave(2, dim=0) * WAVEFORM_SCALE ** 2
        self.register_buffer("mel_banks_pairs", pairs.contiguous(), persistent=False)
        # CPU: the same matrix as bands of MEL_BAND_FILTERS filters, each with the rows (FFT bins) it uses
        self.mel_bands: list[tuple[int, int]] = []  # (first, last + 1) row of each band
        for i, start in enumerate(range(0, c.num_mel_bins, MEL_BAND_FILTERS)):
            cols = pairs[:, start: start + MEL_BAND_FILTERS]
            rows = cols.ne(0).any(dim=1).nonzero().flatten()
            first, end = (int(rows[0]), int(rows[-1]) + 1) if rows.numel() else (0, 1)
            self.mel_bands.append((first, end))
            self.register_buffer(f"mel_band_{i}", cols[first:end].contiguous(), persistent=False)

    @property
    def num_mel_bins(self) -> int:
        return self.config.num_mel_bins

    def frame_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        """Frames per utterance for ``lengths`` samples (the ``snip_edges`` rule), as a long tensor."""
        c = self.config
        if c.snip_edges:
            return torch.where(lengths >= c.window_size, 1 + (lengths - c.window_size) // c.window_shift,
                               torch.zeros_like(lengths)).long()
        return ((lengths + c.window_shift // 2) // c.window_shift).long()

    def forward(self, waveforms: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``waveforms (B, S)`` float in [-1, 1], ``lengths (B,)`` valid samples ->
        ``feats (B, T, F)`` float32 log-mel (10 ms frames; frames past an utterance's end are 0) and
        ``feat_lengths (B,)`` long frames. ``T = max(feat_lengths)``.

        Computed in float32, or in float64 when ``waveforms`` is float64 (output is float32 either way).
        Note that float32 log-mel values of very quiet bins carry rounding noise of a few 1e-4 (the
        FFT's error relative to the loudest bin); torchaudio's single-utterance fbank has the same."""
        if waveforms.dim() != 2:
            raise ValueError(f"Fbank expects (batch, samples) waveforms, got shape {tuple(waveforms.shape)}")
        lengths = lengths.to(device=waveforms.device, dtype=torch.long)
        if lengths.shape != (waveforms.shape[0],):
            raise ValueError(f"lengths must have shape ({waveforms.shape[0]},), got {tuple(lengths.shape)}")
        if bool((lengths < 0).any()) or bool((lengths > waveforms.shape[1]).any()):
            raise ValueError(f"lengths must be in [0, {waveforms.shape[1]}], got {lengths.tolist()}")
        c = self.config
        feat_lengths = self.frame_lengths(lengths)
        batch = waveforms.shape[0]
        num = int(feat_lengths.max()) if batch else 0
        if num == 0:
            return waveforms.new_zeros(batch, 0, c.num_mel_bins, dtype=torch.float32), feat_lengths
        dtype = torch.float64 if waveforms.dtype == torch.float64 else torch.float32
        # Kaldi frames int16-scaled samples; the scale (2^15) is applied to the mel matrix instead (as 2^30 on
        # the power spectrum): scaling by a power of two is exact in floating point, so the result is the
        # same bit for bit, without a pass over the waveform
        x = waveforms.to(dtype)
        if x.device.type == "cpu":
            # On CPU, utterance by utterance in chunks of at most CPU_CHUNK_FRAMES valid frames: the FFT buffers
            # of a whole batch (tens of MB, fresh pages on every call) made it 1.5-2x slower, and padded frames
            # are not computed at all
            feats = torch.empty(batch, num, c.num_mel_bins, dtype=torch.float32)
            for b in range(batch):
                n = int(feat_lengths[b])
                feats[b, n:] = 0.0  # frames past the utterance's end
                if n == 0:
                    continue
                if c.snip_edges:
                    frames = x[b].unfold(0, c.window_size, c.window_shift)[:n]  # (n, W), a view
                else:
                    frames = self._reflected_frames(x[b, : int(lengths[b])], n)
                for start in range(0, n, CPU_CHUNK_FRAMES):
                    end = min(n, start + CPU_CHUNK_FRAMES)
                    feats[b, start:end] = self._frames_to_fbank(frames[start:end])
            return feats, feat_lengths
        if c.snip_edges:
            frames = x.unfold(1, c.window_size, c.window_shift)[:, :num]  # (B, T, W), a view
        else:
            frames = torch.stack([self._reflected_frames(x[b, : int(lengths[b])], num) for b in range(batch)])
        feats = self._frames_to_fbank(frames).float()
        if bool((feat_lengths < num).any()):  # frames past an utterance's end: 0
            valid = torch.arange(num, device=feats.device)[None, :] < feat_lengths[:, None]
            feats.masked_fill_(~valid[:, :, None], 0.0)
        return feats, feat_lengths

    def _reflected_frames(self, x: torch.Tensor, num: int) -> torch.Tensor:
        """``snip_edges=False`` framing of one utterance (Kaldi reflects samples at both ends); padded to
        ``num`` frames with zeros. Per utterance because the reflection depends on each length."""
        c = self.config
        n = c.num_frames(x.shape[0])
        out = x.new_zeros(num, c.window_size)
        if n == 0:
            return out
        w, h = c.window_size, c.window_shift
        pad_left = w // 2 - h // 2  # Kaldi FirstSampleOfFrame: frame t starts at t*h + h/2 - w/2
        pad_right = max(0, (n - 1) * h + w - pad_left - x.shape[0])
        # symmetric reflection (the edge sample repeats: index -1 reads 0, index S reads S-1), as Kaldi's
        # ExtractWindow and torchaudio's _get_strided do
        length = x.shape[0]
        idx = torch.arange(-pad_left, length + pad_right, device=x.device)
        idx = torch.where(idx < 0, -idx - 1, idx)
        idx = torch.where(idx >= length, 2 * length - 1 - idx, idx).clamp(0, length - 1)
        padded = x[idx]
        out[:n] = padded.unfold(0, w, h)[:n]
        return out

    def _frames_to_fbank(self, frames: torch.Tensor) -> torch.Tensor:
        """Kaldi's per-frame pipeline on ``(..., W)`` frames (``(B, T, W)`` or one utterance's ``(T, W)``) ->
        ``(..., F)`` log-mel (same order of operations as ``torchaudio.compliance.kaldi._get_window`` + ``fbank``)."""
        c = self.config
        if c.dither != 0.0:  # in int16 steps; the frames hold samples in [-1, 1]
            frames = frames + (c.dither / WAVEFORM_SCALE) * torch.randn_like(frames)
        if c.remove_dc_offset:
            frames = frames - frames.mean(dim=-1, keepdim=True)
        # The windowed frames are written into an FFT-sized buffer whose tail is zero (what rfft's own
        # zero padding to n=padded_window_size would allocate and copy on every call).
        w, n_fft = frames.shape[-1], c.padded_window_size
        buffer = frames.new_empty(*frames.shape[:-1], n_fft)
        buffer[..., w:] = 0.0
        windowed = buffer[..., :w]
        if c.preemphasis != 0.0:
            # x[i] - c x[i-1], and x[0] - c x[0] (the first sample repeats itself)
            torch.sub(frames[..., 1:], frames[..., :-1], alpha=c.preemphasis, out=windowed[..., 1:])
            torch.mul(frames[..., :1], 1.0 - c.preemphasis, out=windowed[..., :1])
        else:
            windowed.copy_(frames)
        windowed.mul_(self.window.to(frames.dtype))
        spectrum = torch.fft.rfft(buffer, dim=-1)
        # mel = sum_k bank_k (re_k^2 + im_k^2), as one matmul of the squared (re, im) pairs (a contiguous view
        # of the spectrum) with every bank row repeated twice: the strided re/im views of a complex tensor are
        # slow to read, and abs() would take a square root only for pow(2) to undo it
        squares = torch.view_as_real(spectrum).flatten(-2).square_()  # (..., 2 * fft_bins)
        # the banks carry WAVEFORM_SCALE ** 2
        if squares.device.type == "cpu":  # band by band, the non-zero rows only (MEL_BAND_FILTERS)
            mel = torch.cat([torch.matmul(squares[..., first:end], getattr(self, f"mel_band_{i}").to(squares.dtype))
                             for i, (first, end) in enumerate(self.mel_bands)], dim=-1)
        else:
            mel = torch.matmul(squares, self.mel_banks_pairs.to(squares.dtype))
        eps = torch.finfo(torch.float32).eps  # Kaldi's floor: std::numeric_limits<float>::epsilon()
        return mel.clamp_min_(eps).log_()  # in place: mel is this call's own tensor


def compute_fbank(wave: torch.Tensor, config: FbankConfig | None = None) -> torch.Tensor:
    """Log-mel fbank of one utterance: ``wave (S,)`` float in [-1, 1] -> ``(num_frames(S), F)`` float32."""
    if wave.dim() != 1:
        raise ValueError(f"compute_fbank expects 1-D samples, got shape {tuple(wave.shape)}")
    fbank = Fbank(config).to(wave.device)
    feats, _ = fbank(wave[None], torch.tensor([wave.shape[0]], device=wave.device))
    return feats[0]
