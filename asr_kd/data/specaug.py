"""SpecAugment (Park et al., 2019) on padded fbank batches, respecting each utterance's length.

Hand-written rather than ``torchaudio.transforms.FrequencyMasking/TimeMasking`` or SpeechBrain's
``SpecAugment`` because both draw from torch's global RNG (no ``generator`` argument, so a resumed run
cannot replay the same masks) and both place time masks over the padded length of the batch, so a
short utterance in a batch of long ones gets masks in its padding (i.e. none) or widths scaled to the
longest one. Here every draw comes from ``self.generator`` (seeded; its state is saved in checkpoints)
and time masks and time warp are drawn within each utterance's own length.

Frequency warping (VTLP, ``freq_warp``) is the one augmentation here that is not a mask: it stretches
the mel axis per utterance, which mimics another speaker's vocal tract — a standard remedy when few
voices are labeled (it did not change the CPU demo teacher's test WER within its 18 epochs, so the demo
leaves it off). torchaudio and SpeechBrain have no VTLP on fbank features.

Units: ``freq_width`` in mel bins; time in 10 ms fbank frames; ``time_width_ratio`` in fractions of
the utterance's length. Masked values are set to ``mask_value`` (0.0 = the mean after global CMVN).
Applied only in training mode; ``eval()`` makes it the identity.
"""

from __future__ import annotations

import torch
from pydantic import Field

from asr_kd.config import StrictModel


class SpecAugmentConfig(StrictModel):
    """Masking options. Time warp is off by default: it moves frames in time, which would misalign
    frame-level teacher targets in distillation."""

    freq_masks: int = Field(2, ge=0, description="frequency masks per utterance")
    freq_width: int = Field(27, ge=0, description="max width of a frequency mask in mel bins (drawn uniformly in [0, W])")
    time_masks: int = Field(2, ge=0, description="time masks per utterance (with adaptive_time_mask_rate: the maximum)")
    adaptive_time_mask_rate: float | None = Field(
        None, gt=0, le=1.0,
        description="adaptive SpecAugment (Park et al. 2020): min(time_masks, floor(rate x frames)) masks per utterance")
    time_width_ratio: float = Field(0.05, ge=0.0, le=1.0, description="max width of a time mask as a fraction of the utterance's frames")
    time_width_max: int | None = Field(None, ge=0, description="optional cap on a time mask's width in frames")
    time_warp: int = Field(0, ge=0, description="max time warp distance in frames; 0 = off")
    freq_warp: float = Field(
        0.0, ge=0.0, lt=0.5,
        description="VTLP (Jaitly & Hinton 2013): the mel axis is stretched by a factor drawn uniformly in "
                    "[1 - w, 1 + w] per utterance, like a different vocal tract length; 0 = off. Keeps frames in "
                    "place, so it is safe with frame-level distillation targets")
    mask_value: float = Field(0.0, description="value written into masked cells")


class SpecAugment(torch.nn.Module):
    """``forward(feats (B, T, F), lengths (B,) frames) -> feats`` with masks (training mode only).

    Random numbers come from ``self.generator`` (a CPU ``torch.Generator`` seeded with ``seed``) and
    are moved to the features' device, so results are identical on CPU and GPU for a seed.
    """

    def __init__(self, config: SpecAugmentConfig | None = None, seed: int = 0):
        super().__init__()
        self.config = config or SpecAugmentConfig()
        self.generator = torch.Generator().manual_seed(seed)

    def _uniform(self, *shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=self.generator, dtype=torch.float64)

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return feats
        if feats.dim() != 3:
            raise ValueError(f"SpecAugment expects (batch, frames, bins), got shape {tuple(feats.shape)}")
        batch, frames, bins = feats.shape
        if batch == 0 or frames == 0:
            return feats
        c = self.config
        lengths_cpu = lengths.detach().to("cpu", torch.long).clamp(0, frames)
        if c.time_warp > 0:
            feats = self._time_warp(feats, lengths_cpu)
        if c.freq_warp > 0:
            feats = self._freq_warp(feats, lengths_cpu)
        mask = torch.zeros(batch, frames, bins, dtype=torch.bool)
        if c.freq_masks > 0 and c.freq_width > 0:
            width = (self._uniform(batch, c.freq_masks) * (min(c.freq_width, bins) + 1)).floor().long()
            start = (self._uniform(batch, c.freq_masks) * (bins - width + 1)).floor().long()
            f = torch.arange(bins)[None, None, :]
            fmask = ((f >= start[..., None]) & (f < (start + width)[..., None])).any(dim=1)  # (B, F)
            mask |= fmask[:, None, :]
        if c.time_masks > 0 and c.time_width_ratio > 0:
            mask |= self._time_mask(lengths_cpu, frames)[:, :, None]
        # never touch padding: frames past an utterance's length keep their values
        valid = torch.arange(frames)[None, :] < lengths_cpu[:, None]
        mask &= valid[:, :, None]
        return feats.masked_fill(mask.to(feats.device), c.mask_value)

    def _time_mask(self, lengths: torch.Tensor, frames: int) -> torch.Tensor:
        """``(B, T)`` bool: per utterance, masks of width in ``[0, ratio x length]`` inside ``[0, length)``."""
        c = self.config
        batch, m = lengths.shape[0], c.time_masks
        lf = lengths.double()
        max_w = (lf * c.time_width_ratio).floor()
        if c.time_width_max is not None:
            max_w = max_w.clamp_max(c.time_width_max)
        width = (self._uniform(batch, m) * (max_w[:, None] + 1)).floor().long()
        start = (self._uniform(batch, m) * (lf[:, None] - width + 1).clamp_min(1)).floor().long()
        count = torch.full((batch,), m, dtype=torch.long)
        if c.adaptive_time_mask_rate is not None:
            count = torch.minimum(count, (lf * c.adaptive_time_mask_rate).floor().long())
        used = torch.arange(m)[None, :] < count[:, None]  # (B, M): draws beyond the count are unused
        width = width * used
        t = torch.arange(frames)[None, None, :]
        return ((t >= start[..., None]) & (t < (start + width)[..., None])).any(dim=1)

    def _time_warp(self, feats: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Per utterance: pick a centre ``c`` in ``[W, L - W)`` and a shift ``w`` in ``[-W, W]``; stretch
        ``[0, c)`` to ``c + w`` frames and squeeze ``[c, L)`` to ``L - c - w`` (bilinear), as in the
        SpecAugment paper. Utterances shorter than ``2W + 1`` frames are left as they are."""
        window = self.config.time_warp
        out = feats.clone()
        draws = self._uniform(lengths.shape[0], 2)
        for b, length in enumerate(lengths.tolist()):
            if length <= 2 * window:
                continue
            centre = window + int(draws[b, 0] * (length - 2 * window))
            shift = int(draws[b, 1] * (2 * window + 1)) - window
            new_centre = min(max(centre + shift, 1), length - 1)
            x = feats[b, :length].T[None, None]  # (1, 1, F, L)
            left = torch.nn.functional.interpolate(x[..., :centre], size=(x.shape[2], new_centre), mode="bilinear", align_corners=False)
            right = torch.nn.functional.interpolate(x[..., centre:], size=(x.shape[2], length - new_centre), mode="bilinear", align_corners=False)
            out[b, :length] = torch.cat([left, right], dim=-1)[0, 0].T
        return out

    def _freq_warp(self, feats: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Vocal tract length perturbation on the mel axis: output bin ``i`` takes the (linearly
        interpolated) value at bin ``i * a`` of the input, with ``a`` drawn per utterance in ``[1 - w, 1 + w]``
        and positions past the last bin clamped to it. Padding frames keep their values."""
        batch, frames, bins = feats.shape
        factor = 1.0 + (self._uniform(batch) * 2.0 - 1.0) * self.config.freq_warp  # (B,)
        src = (torch.arange(bins, dtype=torch.float64)[None, :] * factor[:, None]).clamp(0, bins - 1)  # (B, F)
        lo = src.floor().long()
        hi = (lo + 1).clamp_max(bins - 1)
        frac = (src - lo).to(feats.dtype).to(feats.device)[:, None, :]
        lo_idx = lo.to(feats.device)[:, None, :].expand(batch, frames, bins)
        hi_idx = hi.to(feats.device)[:, None, :].expand(batch, frames, bins)
        warped = feats.gather(2, lo_idx) * (1 - frac) + feats.gather(2, hi_idx) * frac
        valid = (torch.arange(frames)[None, :] < lengths[:, None]).to(feats.device)[:, :, None]
        return torch.where(valid, warped, feats)
