"""Causal 4x convolutional subsampling front end (two stride-2 conv2d), shared by all our models.

Input: normalized fbank ``(B, T, F)`` at 10 ms frames. Output: ``(B, T // 4, d_model)`` at 40 ms.

The input is left-padded with ``CONTEXT = 3`` zero frames (zero = the global mean after CMVN) and both
convolutions are "valid" (no padding), so output frame ``t`` sees input frames ``4t-3 .. 4t+3``:

- receptive field: 7 input frames = 70 ms of frame shifts (85 ms of audio with the 25 ms window);
- it "owns" input frames ``4t .. 4t+3`` (40 ms) and reads 3 frames of history, **no future frames**
  beyond its own 4, so a chunk of ``4 n`` input frames yields exactly ``n`` output frames;
- output length is ``T // 4`` (a trailing 1-3 frames that cannot fill an output frame are dropped,
  identically offline and streaming).

Streaming: ``forward_chunk`` prepends a cache of the previous 3 input frames (zeros before the first
chunk, which is exactly the offline left padding) and returns the new cache, so chunk-by-chunk output
equals the offline output bit for bit up to float summation order. Every non-final chunk must have a
multiple of 4 input frames (keeps the stride-2 phase); the final chunk may have any length.

The teacher uses the same front end so teacher and student output frame ``t`` cover the same audio,
which the frame-level distillation targets rely on.

Hand-written (not SpeechBrain's ``Conv2dWithConstraint``/``ConvolutionFrontEnd``) because those pad
symmetrically ("same"), which reads future frames and breaks exact chunked streaming.
"""

from __future__ import annotations

import torch
from torch import nn

CONTEXT = 3
"""Input frames of history each chunk needs from the previous one (= left zero padding offline)."""
SUBSAMPLING = 4


class CausalConv2dSubsampling(nn.Module):
    """Conv2d(3x3, stride 2) -> ReLU -> Conv2d(3x3, stride 2) -> ReLU -> Linear, causal in time."""

    def __init__(self, num_mel_bins: int, d_model: int, channels: int):
        super().__init__()
        self.num_mel_bins = num_mel_bins
        self.conv = nn.Sequential(
            nn.Conv2d(1, channels, kernel_size=3, stride=2),
            nn.ReLU(),
            nn.Conv2d(channels, channels, kernel_size=3, stride=2),
            nn.ReLU(),
        )
        freq_out = ((num_mel_bins - 1) // 2 - 1) // 2
        self.out = nn.Linear(channels * freq_out, d_model)

    @staticmethod
    def output_lengths(feat_lens: torch.Tensor) -> torch.Tensor:
        """Output frames (40 ms) for ``feat_lens`` input frames (10 ms): ``T // 4``."""
        return torch.div(feat_lens, SUBSAMPLING, rounding_mode="floor")

    def _convolve(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, CONTEXT + n, F), already left-extended -> (B, n // 4, d_model)
        if x.shape[1] < CONTEXT + SUBSAMPLING:  # fewer than 4 new frames: no output frame yet
            return x.new_zeros(x.shape[0], 0, self.out.out_features)
        y = self.conv(x.unsqueeze(1))  # (B, C, T', F')
        b, c, t, f = y.shape
        return self.out(y.transpose(1, 2).reshape(b, t, c * f))

    def forward(self, feats: torch.Tensor, feat_lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``feats (B, T, F)`` 10 ms frames -> ``(B, T // 4, d_model)``, lengths ``feat_lens // 4``.

        Frames past an utterance's length never reach its valid outputs (no right context), so batch
        padding does not change results.
        """
        pad = feats.new_zeros(feats.shape[0], CONTEXT, feats.shape[2])
        return self._convolve(torch.cat([pad, feats], dim=1)), self.output_lengths(feat_lens)

    def init_cache(self, batch_size: int, device: torch.device | str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Zero cache ``(B, CONTEXT, F)`` for the first chunk."""
        return torch.zeros(batch_size, CONTEXT, self.num_mel_bins, device=device, dtype=dtype)

    def forward_chunk(self, feats: torch.Tensor, cache: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``feats (B, n, F)`` with ``cache (B, 3, F)`` -> ``(B, n // 4, d_model)``, new cache."""
        x = torch.cat([cache, feats], dim=1)
        return self._convolve(x), x[:, x.shape[1] - CONTEXT:]
