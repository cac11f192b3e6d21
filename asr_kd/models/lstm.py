"""Unidirectional LSTM CTC student: causal conv front end -> LSTM(P) layers -> linear -> log-softmax.

Strictly causal: output frame ``t`` (``s x 10 ms``, 40 ms by default) depends on input fbank frames up to ``s*t + s - 1`` only, so
streaming needs no chunk mask; ``chunk_size`` only sets how many output frames one ``forward_chunk``
call produces (latency = ``chunk_size x frame_shift_ms`` + 15 ms fbank window lookahead).
"""

from __future__ import annotations

import torch
from torch import nn

from asr_kd.models.base import FEATURE_LOOKAHEAD_MS, AcousticModel
from asr_kd.models.config import LstmConfig
from asr_kd.models.frontend import CausalConv2dSubsampling

LstmState = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
"""``(frontend_cache (B, 3, F), h (layers, B, proj_size or hidden_size), c (layers, B, hidden_size))``."""


class LstmCTC(AcousticModel):
    """``forward(feats (B, T, F), feat_lens)`` -> ``(log_probs (B, T // s, V), out_lens)``, ``s = subsampling``.

    Padding is at the end and the LSTM runs forward in time, so valid frames never see padding and no
    packing is needed.
    """

    is_streaming = True

    def __init__(self, config: LstmConfig, vocab_size: int, num_mel_bins: int = 80):
        super().__init__()
        self.config = config
        self.vocab_size = vocab_size
        self.subsampling = config.subsampling
        self.chunk_size = config.chunk_size
        d = config.d_model
        self.frontend = CausalConv2dSubsampling(num_mel_bins, d, config.frontend_channels or d, config.subsampling)
        self.lstm = nn.LSTM(d, config.hidden_size, num_layers=config.num_layers, batch_first=True,
                            dropout=config.dropout if config.num_layers > 1 else 0.0, proj_size=config.proj_size)
        self.dropout = nn.Dropout(config.dropout)
        self.output = nn.Linear(config.proj_size or config.hidden_size, vocab_size)

    @property
    def algorithmic_latency_ms(self) -> float:
        """``chunk_size x frame_shift_ms`` + 15 ms fbank window lookahead."""
        return self.chunk_size * self.frame_shift_ms + FEATURE_LOOKAHEAD_MS

    @property
    def chunk_input_frames(self) -> int:
        """Input fbank frames (10 ms) per full chunk: ``chunk_size x 4``."""
        return self.chunk_size * self.subsampling

    def set_chunking(self, chunk_size: int, left_chunks: int | None = None) -> None:
        """Change output frames per ``forward_chunk`` call (outputs are unaffected); ``left_chunks``
        is accepted for interface parity with the conformer and ignored (an LSTM's history is unbounded)."""
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1 output frames, got {chunk_size}")
        self.chunk_size = chunk_size

    def forward(self, feats: torch.Tensor, feat_lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x, lens = self.frontend(feats, feat_lens)
        if x.shape[1] == 0:
            return x.new_zeros(x.shape[0], 0, self.vocab_size), lens
        y, _ = self.lstm(self.dropout(x))
        return self.output(self.dropout(y)).log_softmax(dim=-1), lens

    def init_state(self, batch_size: int, device: torch.device | str = "cpu") -> LstmState:
        p = next(self.parameters())
        layers, hidden = self.config.num_layers, self.config.hidden_size
        out = self.config.proj_size or hidden
        return (
            self.frontend.init_cache(batch_size, device, p.dtype),
            torch.zeros(layers, batch_size, out, device=device, dtype=p.dtype),
            torch.zeros(layers, batch_size, hidden, device=device, dtype=p.dtype),
        )

    def forward_chunk(self, feats: torch.Tensor, state: LstmState) -> tuple[torch.Tensor, LstmState]:
        """``feats (B, n, F)``, n = ``chunk_size x 4`` (any n for the final chunk) ->
        ``(log_probs (B, n // 4, V), new_state)``; the zero initial state is the offline initial state."""
        fe_cache, h, c = state
        x, fe_cache = self.frontend.forward_chunk(feats, fe_cache)
        if x.shape[1] == 0:
            return x.new_zeros(x.shape[0], 0, self.vocab_size), (fe_cache, h, c)
        y, (h, c) = self.lstm(self.dropout(x), (h, c))
        return self.output(self.dropout(y)).log_softmax(dim=-1), (fe_cache, h, c)
