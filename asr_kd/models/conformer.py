"""Conformer CTC: full-context teacher, or chunk-streaming student with exact chunked inference.

Built from SpeechBrain's ``ConformerEncoder`` (its layers, weights and ``RelPosMHAXL`` relative
position attention) and ``make_transformer_src_mask`` / ``DynChunkTrainConfig`` for the chunk mask.
We drive the layers with our own loop instead of ``ConformerEncoder.forward`` /
``forward_streaming`` for two reasons, both about results that must not depend on how they are run:

1. **Batch padding.** SpeechBrain's ``ConvolutionModule`` convolves over padded frames (it only
   zeroes the module's *output* there), so the last frames of a short utterance change with the
   length of the longest one in the batch. We zero padded frames after the GLU and before the
   depthwise convolution, as WeNet's ``ConvolutionModule`` does (``mask_pad``).
2. **Flat tensor state.** SpeechBrain's streaming context is a mutable Python dataclass whose caches
   start as ``None`` and grow; ``forward_chunk`` here takes and returns a fixed-shape tuple of tensors
   (exportable to ONNX), with a per-stream frame counter that masks the not-yet-filled cache.

Offline masked forward (streaming model, eval): frame ``t`` in chunk ``k = t // chunk_size``
attends to chunks ``k - left_chunks .. k`` (SpeechBrain's chunk mask), and the convolution module sees
the current chunk plus ``(kernel_size - 1) / 2`` frames of left context, zeros to the right (Dynamic
Chunk Convolution). ``forward_chunk`` reproduces exactly this: per layer it caches the attention inputs
of the last ``left_chunks * chunk_size`` frames and the post-GLU convolution inputs of the last
``(kernel_size - 1) / 2`` frames.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from speechbrain.core import Stage
from speechbrain.lobes.models.transformer.Conformer import ConformerEncoder, ConformerEncoderLayer, ConvolutionModule
from speechbrain.lobes.models.transformer.TransformerASR import make_transformer_src_mask
from speechbrain.nnet.attention import RelPosEncXL
from speechbrain.utils.dynamic_chunk_training import DynChunkTrainConfig, DynChunkTrainConfigRandomSampler
from torch import nn

from asr_kd.models.base import FEATURE_LOOKAHEAD_MS, AcousticModel
from asr_kd.models.config import ConformerConfig
from asr_kd.models.frontend import CausalConv2dSubsampling

ConformerState = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]
"""``(frontend_cache (B, 3, F), attention_cache (layers, B, left_chunks * chunk_size, d_model),
conv_cache (layers, B, d_model, (kernel_size - 1) / 2), frames_done (B,) int64)``."""


def _conv_module_offline(conv: ConvolutionModule, x: torch.Tensor, pad_mask: torch.Tensor,
                         chunk_size: int | None) -> torch.Tensor:
    """SpeechBrain's ConvolutionModule (incl. its Dynamic Chunk Convolution when ``chunk_size`` is set)
    with padded frames zeroed before the depthwise conv. ``x (B, T, d)``, ``pad_mask (B, T)`` True = pad."""
    out = conv.bottleneck(conv.layer_norm(x).transpose(1, 2))  # (B, d, T) after pointwise conv + GLU
    out = out.masked_fill(pad_mask[:, None, :], 0.0)
    if chunk_size is None:
        out = conv.conv(out)  # symmetric zero padding, full context
    else:
        # Same layout as SpeechBrain's DCConv: each chunk sees `padding` frames of left context and
        # zeros on its right.
        pad, frames = conv.padding, out.shape[-1]
        right = (-frames) % chunk_size
        out = F.pad(out, (pad, right)).unfold(2, chunk_size + pad, chunk_size)  # (B, d, n, pad + C)
        out = F.pad(out, (0, pad))
        b, d, n, w = out.shape
        out = out.permute(0, 2, 1, 3).reshape(b * n, d, w)
        out = F.conv1d(out, conv.conv.weight, conv.conv.bias, groups=conv.conv.groups)  # (B*n, d, C)
        out = out.reshape(b, n, d, chunk_size).permute(0, 2, 1, 3).reshape(b, d, n * chunk_size)[..., :frames]
    return conv.after_conv(out.transpose(1, 2))


def _conv_module_chunk(conv: ConvolutionModule, x: torch.Tensor, cache: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One chunk through the convolution module: ``x (B, c, d)``, ``cache (B, d, pad)`` post-GLU frames
    before the chunk -> (output ``(B, c, d)``, new cache)."""
    out = conv.bottleneck(conv.layer_norm(x).transpose(1, 2))
    out = torch.cat([cache, out], dim=2)
    new_cache = out[..., out.shape[-1] - conv.padding:]
    out = F.conv1d(F.pad(out, (0, conv.padding)), conv.conv.weight, conv.conv.bias, groups=conv.conv.groups)
    return conv.after_conv(out.transpose(1, 2)), new_cache


def _layer_offline(layer: ConformerEncoderLayer, x: torch.Tensor, attn_mask: torch.Tensor | None,
                   pad_mask: torch.Tensor, pos: torch.Tensor, chunk_size: int | None) -> torch.Tensor:
    """``ConformerEncoderLayer.forward`` with the padding-safe convolution module."""
    x = x + 0.5 * layer.ffn_module1(x)
    h = layer.norm1(x)
    h, _ = layer.mha_layer(h, h, h, attn_mask=attn_mask, key_padding_mask=pad_mask, pos_embs=pos)
    x = x + h
    x = x + _conv_module_offline(layer.convolution_module, x, pad_mask, chunk_size)
    return layer.norm2(x + 0.5 * layer.ffn_module2(x))


class ConformerCTC(AcousticModel):
    """Causal conv front end -> SpeechBrain Conformer layers -> linear -> log-softmax (CTC, blank 0).

    ``forward(feats (B, T, F), feat_lens (B,))`` -> ``(log_probs (B, T // s, V), out_lens (B,))`` with ``s = subsampling``.
    A streaming model applies its chunk mask (``chunk_size``, ``left_chunks``) in ``forward``; in
    training with ``dynamic_chunk_training`` each call samples a random chunk configuration instead.
    """

    def __init__(self, config: ConformerConfig, vocab_size: int, num_mel_bins: int = 80):
        super().__init__()
        self.config = config
        self.vocab_size = vocab_size
        self.subsampling = config.subsampling
        self.is_streaming = config.streaming
        d = config.d_model
        self.frontend = CausalConv2dSubsampling(num_mel_bins, d, config.frontend_channels or d, config.subsampling)
        self.frontend_dropout = nn.Dropout(config.dropout)
        self.pos_enc = RelPosEncXL(d)
        # causal=False: streaming comes from the chunk mask + DCConv, not causal convolutions (a causal
        # ConvolutionModule refuses chunked masks in SpeechBrain).
        self.encoder = ConformerEncoder(
            num_layers=config.num_layers, d_model=d, d_ffn=config.d_ffn, nhead=config.nhead,
            kernel_size=config.kernel_size, dropout=config.dropout, causal=False, attention_type="RelPosMHAXL",
        )
        self.output = nn.Linear(d, vocab_size)
        self.chunk_size: int | None = config.chunk_size
        self.left_chunks: int | None = config.left_chunks
        self._sampler: DynChunkTrainConfigRandomSampler | None = None
        if config.dynamic_chunk_training:
            s = config.dynamic_chunk
            self._sampler = DynChunkTrainConfigRandomSampler(
                chunkwise_prob=s.chunkwise_prob, chunk_size_min=s.chunk_size_min, chunk_size_max=s.chunk_size_max,
                limited_left_context_prob=s.limited_left_context_prob,
                left_context_chunks_min=s.left_chunks_min, left_context_chunks_max=s.left_chunks_max,
            )

    # ---------------------------------------------------------------- properties
    @property
    def algorithmic_latency_ms(self) -> float | None:
        """Streaming: ``chunk_size x frame_shift_ms`` + 15 ms fbank window lookahead (e.g. 8 x 40 ms -> 335 ms)."""
        if not self.is_streaming:
            return None
        return self.chunk_size * self.frame_shift_ms + FEATURE_LOOKAHEAD_MS

    @property
    def chunk_input_frames(self) -> int:
        """Input fbank frames (10 ms) per full chunk: ``chunk_size x 4``."""
        self._require_streaming()
        return self.chunk_size * self.subsampling

    def set_chunking(self, chunk_size: int, left_chunks: int | None = None) -> None:
        """Change the inference chunk size (output frames). ``left_chunks=None`` keeps the left context
        duration as close as possible to the configured one (at least one chunk)."""
        self._require_streaming()
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1 output frames, got {chunk_size}")
        if left_chunks is None:
            frames = self.config.left_chunks * self.config.chunk_size
            left_chunks = max(1, round(frames / chunk_size))
        self.chunk_size, self.left_chunks = chunk_size, left_chunks

    def _require_streaming(self) -> None:
        if not self.is_streaming:
            raise RuntimeError("this conformer is not a streaming model (config streaming: false)")

    def chunk_config(self) -> DynChunkTrainConfig | None:
        """Chunk configuration ``forward`` uses now: None = full context."""
        if not self.is_streaming:
            return None
        if self.training and self._sampler is not None:
            return self._sampler(Stage.TRAIN)
        return DynChunkTrainConfig(self.chunk_size, self.left_chunks)

    # ---------------------------------------------------------------- offline
    def forward(self, feats: torch.Tensor, feat_lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x, lens = self.frontend(feats, feat_lens)
        x = self.frontend_dropout(x)
        frames = x.shape[1]
        if frames == 0:
            return x.new_zeros(x.shape[0], 0, self.vocab_size), lens
        pad_mask = torch.arange(frames, device=x.device)[None, :] >= lens[:, None]
        dct = self.chunk_config()
        attn_mask = make_transformer_src_mask(x, dynchunktrain_config=dct)
        pos = self.pos_enc(x)
        chunk = dct.chunk_size if dct is not None else None
        for layer in self.encoder.layers:
            x = _layer_offline(layer, x, attn_mask, pad_mask, pos, chunk)
        x = self.encoder.norm(x)
        return self.output(x).log_softmax(dim=-1), lens

    # ---------------------------------------------------------------- streaming
    def init_state(self, batch_size: int, device: torch.device | str = "cpu") -> ConformerState:
        """Zero caches for ``batch_size`` new streams (see ``ConformerState``)."""
        self._require_streaming()
        p = next(self.parameters())
        layers, d = len(self.encoder.layers), self.config.d_model
        left = self.left_chunks * self.chunk_size
        pad = self.encoder.layers[0].convolution_module.padding
        return (
            self.frontend.init_cache(batch_size, device, p.dtype),
            torch.zeros(layers, batch_size, left, d, device=device, dtype=p.dtype),
            torch.zeros(layers, batch_size, d, pad, device=device, dtype=p.dtype),
            torch.zeros(batch_size, dtype=torch.long, device=device),
        )

    def forward_chunk(self, feats: torch.Tensor, state: ConformerState) -> tuple[torch.Tensor, ConformerState]:
        """One chunk: ``feats (B, n, F)`` with ``n = chunk_size x 4`` input frames (10 ms); the final
        chunk of a stream may be shorter (any n). Returns ``(log_probs (B, n // 4, V), new_state)``.

        The first chunk needs no special handling: the zero front-end cache is the offline left padding
        and the empty attention cache is masked by the frame counter. Runs in eval mode semantics
        (call ``model.eval()``); dropout would make chunks differ from offline.
        """
        fe_cache, att_cache, conv_cache, done = state
        x, fe_cache = self.frontend.forward_chunk(feats, fe_cache)
        batch, c = x.shape[0], x.shape[1]
        if c == 0:
            return x.new_zeros(batch, 0, self.vocab_size), (fe_cache, att_cache, conv_cache, done)
        left = att_cache.shape[2]
        # True = masked: cache slots not yet filled for this stream (fewer than `left` frames done).
        cache_pad = torch.arange(left, device=x.device)[None, :] < (left - done)[:, None]
        key_pad = torch.cat([cache_pad, torch.zeros(batch, c, dtype=torch.bool, device=x.device)], dim=1)
        pos = self.pos_enc.make_pe(left + c)
        new_att, new_conv = [], []
        for i, layer in enumerate(self.encoder.layers):
            x = x + 0.5 * layer.ffn_module1(x)
            kv = torch.cat([att_cache[i], x], dim=1)  # (B, left + c, d)
            new_att.append(kv[:, c:])
            h = layer.norm1(kv)
            h, _ = layer.mha_layer(h, h, h, key_padding_mask=key_pad, pos_embs=pos)
            x = (kv + h)[:, left:]
            conv_out, cache = _conv_module_chunk(layer.convolution_module, x, conv_cache[i])
            new_conv.append(cache)
            x = x + conv_out
            x = layer.norm2(x + 0.5 * layer.ffn_module2(x))
        x = self.encoder.norm(x)
        log_probs = self.output(x).log_softmax(dim=-1)
        return log_probs, (fe_cache, torch.stack(new_att), torch.stack(new_conv), done + c)
