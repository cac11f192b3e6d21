"""Greedy (best path) CTC decoding, offline and incremental across streaming chunks."""

from __future__ import annotations

import torch

BLANK_ID = 0


def greedy_ctc(log_probs: torch.Tensor, lengths: torch.Tensor | None = None, blank_id: int = BLANK_ID) -> list[list[int]]:
    """Best path per frame, repeats collapsed, blanks dropped.

    ``log_probs (B, T, V)`` (any monotone scores work: logits, probs), ``lengths (B,)`` valid frames per
    utterance (default: all T). Returns one list of unit ids per utterance.
    """
    if log_probs.dim() != 3:
        raise ValueError(f"log_probs must be (B, T, V), got shape {tuple(log_probs.shape)}")
    best = log_probs.argmax(dim=-1).cpu()
    lens = [best.shape[1]] * best.shape[0] if lengths is None else lengths.cpu().tolist()
    out: list[list[int]] = []
    for b, n in enumerate(lens):
        ids = torch.unique_consecutive(best[b, : int(n)])
        out.append(ids[ids != blank_id].tolist())
    return out


class GreedyCTCStream:
    """Incremental greedy CTC for one stream: feed consecutive chunks of ``(T_chunk, V)`` scores; the
    ids emitted over all chunks equal ``greedy_ctc`` of the concatenation (the last best id of the
    previous chunk is carried over so a repeat across a chunk boundary is collapsed)."""

    def __init__(self, blank_id: int = BLANK_ID):
        self.blank_id = blank_id
        self.reset()

    def reset(self) -> None:
        self.ids: list[int] = []
        self._last: int = self.blank_id  # so the first non-blank frame always emits

    def accept(self, log_probs: torch.Tensor) -> list[int]:
        """Consume ``(T_chunk, V)`` scores; return the ids newly emitted by this chunk."""
        new: list[int] = []
        for tok in log_probs.argmax(dim=-1).tolist():
            if tok != self._last and tok != self.blank_id:
                new.append(tok)
            self._last = tok
        self.ids.extend(new)
        return new

