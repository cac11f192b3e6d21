"""What every acoustic model exposes (teacher and students alike).

Input: normalized fbank ``(B, T, 80)`` at 10 ms frames with lengths ``(B,)``; output: CTC
log-probabilities ``(B, T // 4, V)`` at 40 ms frames with lengths ``(B,)``; blank is id 0.
Streaming models also have ``init_state`` / ``forward_chunk`` whose chunk-by-chunk outputs equal the
offline ``forward`` (with the same chunk mask) up to float summation order.
"""

from __future__ import annotations

from torch import nn

INPUT_FRAME_SHIFT_MS = 10.0
FEATURE_LOOKAHEAD_MS = 15.0
"""Audio past the last 10 ms frame shift of a chunk needed to compute its last fbank frame: the 25 ms
window minus the 10 ms shift of the fixed front end (see DESIGN.md)."""


class AcousticModel(nn.Module):
    """Base class: properties shared by all models. Subclasses set ``subsampling`` and ``is_streaming``."""

    is_streaming: bool = False
    subsampling: int = 4

    @property
    def frame_shift_ms(self) -> float:
        """Output frame shift in ms (40 for 4x subsampling of 10 ms frames)."""
        return INPUT_FRAME_SHIFT_MS * self.subsampling

    @property
    def algorithmic_latency_ms(self) -> float | None:
        """Audio (ms) a streaming model must wait for before emitting a chunk's outputs: chunk duration
        plus lookahead (front end: 0 frames; fbank window: 15 ms). None for full-utterance models."""
        return None

    def num_params(self) -> int:
        """Number of trainable parameters."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)
