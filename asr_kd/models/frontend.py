"""Causal convolutional subsampling front end (two conv2d), shared by all our models.

Input: normalized fbank ``(B, T, F)`` at 10 ms frames. Output: ``(B, T // s, d_model)`` at
``10 ms x s`` with ``s = subsampling``: 4 (40 ms output frames, two stride-2 convolutions, the
default) or 2 (20 ms frames: the second convolution has stride 1 in time).

The input is left-padded with ``context`` zero frames (zero = the global mean after CMVN: 3 for
``s = 4``, 5 for ``s = 2``) and both convolutions are "valid" (no padding), so output frame ``t``
sees input frames ``s*t - context .. s*t + s - 1``:

- receptive field: 7 input frames = 70 ms of frame shifts (85 ms of audio with the 25 ms window);
- it "owns" input frames ``s*t .. s*t + s - 1`` and reads ``context`` frames of history, **no future
  frames** beyond its own ``s``, so a chunk of ``s*n`` input frames yields exactly ``n`` output frames;
- output length is ``T // s`` (trailing frames that cannot fill an output frame are dropped,
  identically offline and streaming).

Streaming: ``forward_chunk`` prepends a cache of the previous ``context`` input frames (zeros before
the first chunk, which is exactly the offline left padding) and returns the new cache, so
chunk-by-chunk output equals the offline output bit for bit up to float summation order. Every
non-final chunk must have a multiple of ``s`` input frames (keeps the stride-2 phase); the final chunk
may have any length.

The teacher uses the same front end so teacher and student output frame ``t`` cover the same audio,
which the frame-level distillation targets rely on.

Hand-written (not SpeechBrain's ``Conv2dWithConstraint``/``ConvolutionFrontEnd``) because those pad
symmetrically ("same"), which reads future frames and breaks exact chunked streaming.
"""

from __future__ import annotations

import torch
from torch import nn

CONTEXT = {4: 3, 2: 5}
"""Input frames of history each chunk needs from the previous one (= left zero padding offline),
per subsampling factor: the receptive field is 7 input frames, of which ``s`` are the frame's own."""
SUBSAMPLING = 4
"""The default subsampling factor (40 ms output frames)."""


class CausalConv2dSubsampling(nn.Module):
    """Conv2d(3x3, stride 2) -> ReLU -> Conv2d(3x3, stride (s/2, 2)) -> ReLU -> Linear, causal in time.

    ``subsampling`` ``s`` is 4 or 2 (time stride of the second convolution 2 or 1; both halve the
    frequency axis, so the parameter count does not depend on ``s``).
    """

    def __init__(self, num_mel_bins: int, d_model: int, channels: int, subsampling: int = SUBSAMPLING):
        super().__init__()
        if subsampling not in CONTEXT:
            raise ValueError(f"subsampling must be one of {sorted(CONTEXT)} (input frames per output frame), got {subsampling}")
        self.num_mel_bins = num_mel_bins
        self.subsampling = subsampling
        self.context = CONTEXT[subsampling]
        self.conv = nn.Sequential(
            nn.Conv2d(1, channels, kernel_size=3, stride=2),
            nn.ReLU(),
            nn.Conv2d(channels, channels, kernel_size=3, stride=(subsampling // 2, 2)),
            nn.ReLU(),
        )
        freq_out = ((num_mel_bins - 1) // 2 - 1) // 2
        self.out = nn.Linear(channels * freq_out, d_model)

    def output_lengths(self, feat_lens: torch.Tensor) -> torch.Tensor:
        """Output frames (``10 ms x s``) for ``feat_lens`` input frames (10 ms): ``T // s``."""
        return torch.div(feat_lens, self.subsampling, rounding_mode="floor")

    def _convolve(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, context + n, F), already left-extended -> (B, n // s, d_model)
        if x.shape[1] < self.context + self.subsampling:  # fewer than s new frames: no output frame yet
            return x.new_zeros(x.shape[0], 0, self.out.out_features)
        y = self.conv(x.unsqueeze(1))  # (B, C, T', F')
        b, c, t, f = y.shape
        return self.out(y.transpose(1, 2).reshape(b, t, c * f))

    def forward(self, feats: torch.Tensor, feat_lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``feats (B, T, F)`` 10 ms frames -> ``(B, T // s, d_model)``, lengths ``feat_lens // s``.

        Frames past an utterance's length never reach its valid outputs (no right context), so batch
        padding does not change results.
        """
        pad = feats.new_zeros(feats.shape[0], self.context, feats.shape[2])
        return self._convolve(torch.cat([pad, feats], dim=1)), self.output_lengths(feat_lens)

    def init_cache(self, batch_size: int, device: torch.device | str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Zero cache ``(B, context, F)`` for the first chunk."""
        return torch.zeros(batch_size, self.context, self.num_mel_bins, device=device, dtype=dtype)

    def forward_chunk(self, feats: torch.Tensor, cache: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``feats (B, n, F)`` with ``cache (B, context, F)`` -> ``(B, n // s, d_model)``, new cache."""
        x = torch.cat([cache, feats], dim=1)
        return self._convolve(x), x[:, x.shape[1] - self.context:]
