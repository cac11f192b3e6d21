"""Frame-rate conversion of teacher distributions: e.g. 20 ms SSL frames -> our 40 ms output frames.

Output frame ``t`` of the store covers the ``ratio`` teacher frames ``ratio*t .. ratio*t + ratio - 1``
(``ratio`` = store frame shift / teacher frame shift, an integer: 2 for 20 ms -> 40 ms). The number
of output frames is not ``T_teacher // ratio`` but what our students' data loader expects for the same
audio (``expected_output_frames``: Kaldi fbank frames // subsampling), so the store's frame count
matches the student's feature frames exactly; teacher frames missing at the end (the two front ends
round the tail differently, at most a frame or two) repeat the last teacher frame, extra ones are
dropped.

Conversions (``--frame-conversion``):

- ``peak`` (default): keep the whole distribution of the group's frame with the largest non-blank
  probability (CTC spikes survive at full height; the other frame's information is dropped);
- ``mean``: average the probabilities of the group (a proper distribution, but a spike that sits in
  one frame of the pair is halved and the blank of the other frame usually wins: measured on a
  trained tiny Wav2Vec2ForCTC, greedy decoding of its 40 ms targets had 96.5 % WER with ``mean`` and
  71.8 % with ``peak`` on its own training audio, tests/test_hf_teacher_e2e.py).
"""

from __future__ import annotations

from typing import Literal

import torch

from asr_kd.errors import AsrKdError

FrameConversion = Literal["mean", "peak"]
FRAME_CONVERSIONS = ("mean", "peak")


def conversion_ratio(teacher_frame_ms: float, store_frame_ms: float) -> int:
    """Teacher frames per stored frame; an error unless it is a positive integer."""
    r = store_frame_ms / teacher_frame_ms
    if r < 1 - 1e-6 or abs(r - round(r)) > 1e-6:
        raise AsrKdError(f"label: cannot convert the teacher's {teacher_frame_ms:g} ms frames to the store's "
                         f"{store_frame_ms:g} ms frames (needs a whole number of teacher frames per stored frame)")
    return int(round(r))


def convert_frames(probs: torch.Tensor, lengths: torch.Tensor, out_lengths: torch.Tensor, ratio: int,
                   method: FrameConversion = "mean", blank_id: int = 0) -> torch.Tensor:
    """``probs (B, T_teacher, V)`` with valid ``lengths (B,)`` teacher frames -> ``(B, max(out_lengths), V)``.

    Frames past ``out_lengths[b]`` are zero. See the module docstring for the grouping rule."""
    if method not in FRAME_CONVERSIONS:
        raise AsrKdError(f"label: --frame-conversion must be one of {FRAME_CONVERSIONS}, got {method!r}")
    B, _, V = probs.shape
    T_out = int(out_lengths.max()) if B else 0
    out = probs.new_zeros(B, T_out, V)
    for b in range(B):
        n_in, n_out = int(lengths[b]), int(out_lengths[b])
        if n_out == 0:
            continue
        if n_in == 0:
            out[b, :n_out, blank_id] = 1.0
            continue
        idx = (torch.arange(n_out * ratio, device=probs.device).clamp_max(n_in - 1)).view(n_out, ratio)
        groups = probs[b][idx]  # (n_out, ratio, V)
        if method == "mean" or ratio == 1:
            out[b, :n_out] = groups.mean(1)
        else:
            nonblank = groups.clone()
            nonblank[..., blank_id] = -1.0
            best = nonblank.amax(-1).argmax(-1)  # (n_out,) which frame of each group has the top non-blank peak
            out[b, :n_out] = groups[torch.arange(n_out, device=probs.device), best]
    return out
