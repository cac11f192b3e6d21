"""Acoustic model configs: a pydantic discriminated union on ``kind``.

Every model maps normalized 80-dim log-mel fbank at 10 ms frames to CTC log-probabilities at
``10 ms x subsampling`` (40 ms by default). Sizes are set here; the presets below are starting points
(parameter counts from ``build_model`` with a 30-symbol character vocabulary; the demo teacher and
students are the models of ``recipes/synth/conf/*.yaml``; latency of the demo student:
15 x 40 ms + 15 ms fbank window = 615 ms).

Presets (YAML ``model:`` sections)::

    # tiny (tests, ~41 k params): conformer
    {kind: conformer, d_model: 32, num_layers: 2, nhead: 2, d_ffn: 64, kernel_size: 7,
     frontend_channels: 8}
    # demo teacher (2.12 M params, recipes/synth/conf/teacher.yaml): full-context conformer
    {kind: conformer, d_model: 144, num_layers: 4, nhead: 4, d_ffn: 576, kernel_size: 15,
     frontend_channels: 32, dropout: 0.1}
    # demo streaming student (0.50 M params, 24 % of the demo teacher; recipes/synth/conf/student_*.yaml):
    # 600 ms chunks
    {kind: conformer, streaming: true, d_model: 72, num_layers: 4, nhead: 4, d_ffn: 256,
     kernel_size: 15, frontend_channels: 16, chunk_size: 15, left_chunks: 2,
     dynamic_chunk_training: true, dropout: 0.0}
    # demo LSTM student (0.48 M params, 23 % of the demo teacher; 175 ms latency; no recipe uses it)
    {kind: lstm, d_model: 96, hidden_size: 176, num_layers: 2, frontend_channels: 16}

``PRESETS`` holds the same dicts for code and tests.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

import pydantic

from asr_kd.config import StrictModel, validate_config


class DynamicChunkSampling(StrictModel):
    """Random chunk/left-context sampling per training batch (WeNet's dynamic chunk training, as in
    SpeechBrain's ``DynChunkTrainConfigRandomSampler``). Sizes are in output frames (40 ms) and chunks."""

    chunkwise_prob: float = pydantic.Field(0.6, ge=0.0, le=1.0)
    """Probability that a batch is trained with a finite chunk (else full context)."""
    chunk_size_min: int = pydantic.Field(4, ge=1)
    chunk_size_max: int = pydantic.Field(16, ge=1)
    limited_left_context_prob: float = pydantic.Field(0.75, ge=0.0, le=1.0)
    """Given a finite chunk, probability that the left context is limited (else unlimited)."""
    left_chunks_min: int = pydantic.Field(2, ge=0)
    left_chunks_max: int = pydantic.Field(8, ge=0)

    @pydantic.model_validator(mode="after")
    def _ranges(self) -> "DynamicChunkSampling":
        if self.chunk_size_min > self.chunk_size_max:
            raise ValueError(f"chunk_size_min {self.chunk_size_min} > chunk_size_max {self.chunk_size_max}")
        if self.left_chunks_min > self.left_chunks_max:
            raise ValueError(f"left_chunks_min {self.left_chunks_min} > left_chunks_max {self.left_chunks_max}")
        return self


class ConformerConfig(StrictModel):
    """Conformer CTC model (SpeechBrain Conformer layers, relative-position attention).

    ``streaming: false`` is the full-context teacher. ``streaming: true`` restricts attention to
    chunks of ``chunk_size`` output frames (40 ms each) plus ``left_chunks`` previous chunks, and the
    convolution module to the current chunk plus its left context (Dynamic Chunk Convolution), so the
    model can run chunk by chunk with bounded latency and memory.
    """

    kind: Literal["conformer"] = "conformer"
    d_model: int = pydantic.Field(144, ge=8)
    num_layers: int = pydantic.Field(8, ge=1)
    nhead: int = pydantic.Field(4, ge=1)
    d_ffn: int = pydantic.Field(576, ge=1)
    kernel_size: int = pydantic.Field(15, ge=1)
    """Depthwise convolution kernel of the conformer convolution module, in output frames (odd)."""
    dropout: float = pydantic.Field(0.1, ge=0.0, lt=1.0)
    subsampling: Literal[2, 4] = 4
    """Input frames (10 ms) per output frame: 4 (40 ms output frames) or 2 (20 ms; twice the encoder
    frames, half the CTC label density)."""
    frontend_channels: int | None = pydantic.Field(None, ge=1)
    """Channels of the two subsampling conv2d layers; None means d_model."""
    streaming: bool = False
    chunk_size: int | None = pydantic.Field(None, ge=1)
    """Output frames per chunk (8 = 320 ms at 40 ms frames, 160 ms at 20 ms). Required when streaming."""
    left_chunks: int | None = pydantic.Field(None, ge=0)
    """Left context in chunks (finite: streaming keeps left_chunks x chunk_size frames per layer)."""
    dynamic_chunk_training: bool = False
    """Sample a random chunk size / left context per batch in training (streaming only)."""
    dynamic_chunk: DynamicChunkSampling = DynamicChunkSampling()

    @pydantic.model_validator(mode="after")
    def _check(self) -> "ConformerConfig":
        if self.d_model % self.nhead:
            raise ValueError(f"d_model {self.d_model} is not divisible by nhead {self.nhead}")
        if self.kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd, got {self.kernel_size}")
        if self.streaming:
            if self.chunk_size is None or self.left_chunks is None:
                raise ValueError("a streaming conformer needs chunk_size (output frames) and left_chunks "
                                 "(finite left context in chunks), e.g. chunk_size: 8, left_chunks: 4")
        elif self.chunk_size is not None or self.left_chunks is not None or self.dynamic_chunk_training:
            raise ValueError("chunk_size / left_chunks / dynamic_chunk_training need streaming: true")
        # compared with the default (not with the keys given), so a resolved model.yaml validates again
        if not self.dynamic_chunk_training and self.dynamic_chunk != DynamicChunkSampling():
            raise ValueError("dynamic_chunk does nothing without dynamic_chunk_training: true; remove it or set "
                             "dynamic_chunk_training: true")
        return self


class LstmConfig(StrictModel):
    """Unidirectional LSTM CTC model after the same causal 4x conv front end (a streaming student)."""

    kind: Literal["lstm"] = "lstm"
    d_model: int = pydantic.Field(128, ge=1)
    """Front-end output size (LSTM input size)."""
    hidden_size: int = pydantic.Field(256, ge=1)
    num_layers: int = pydantic.Field(2, ge=1)
    proj_size: int = pydantic.Field(0, ge=0)
    """LSTM output projection (LSTMP, as in Kaldi/Sak et al. 2014); 0 disables it."""
    dropout: float = pydantic.Field(0.1, ge=0.0, lt=1.0)
    subsampling: Literal[2, 4] = 4
    """Input frames (10 ms) per output frame (see ``ConformerConfig.subsampling``)."""
    frontend_channels: int | None = pydantic.Field(None, ge=1)
    chunk_size: int = pydantic.Field(4, ge=1)
    """Output frames (40 ms) per ``forward_chunk`` call when streaming; does not change the outputs,
    only how often partial results are produced (1 = every 40 ms)."""

    @property
    def streaming(self) -> bool:
        return True

    @pydantic.model_validator(mode="after")
    def _check(self) -> "LstmConfig":
        if self.proj_size >= self.hidden_size:
            raise ValueError(f"proj_size {self.proj_size} must be smaller than hidden_size {self.hidden_size}")
        return self


ModelConfig = Annotated[Union[ConformerConfig, LstmConfig], pydantic.Field(discriminator="kind")]


class _ModelSection(StrictModel):
    model: ModelConfig


def parse_model_config(data: dict[str, Any], source: str = "model config") -> ConformerConfig | LstmConfig:
    """Validate a ``model`` mapping into its config class; ConfigError names any bad or unknown key."""
    return validate_config({"model": data}, _ModelSection, source=source).model


PRESETS: dict[str, dict[str, Any]] = {
    "tiny_conformer": dict(kind="conformer", d_model=32, num_layers=2, nhead=2, d_ffn=64, kernel_size=7,
                           frontend_channels=8, dropout=0.0),
    "tiny_streaming_conformer": dict(kind="conformer", d_model=32, num_layers=2, nhead=2, d_ffn=64,
                                     kernel_size=7, frontend_channels=8, dropout=0.0, streaming=True,
                                     chunk_size=4, left_chunks=2),
    "tiny_lstm": dict(kind="lstm", d_model=32, hidden_size=48, num_layers=2, frontend_channels=8,
                      dropout=0.0, chunk_size=2),
    "demo_teacher": dict(kind="conformer", d_model=144, num_layers=4, nhead=4, d_ffn=576, kernel_size=15,
                         frontend_channels=32, dropout=0.1),
    "demo_student": dict(kind="conformer", streaming=True, d_model=72, num_layers=4, nhead=4, d_ffn=256,
                         kernel_size=15, frontend_channels=16, chunk_size=15, left_chunks=2,
                         dynamic_chunk_training=True, dropout=0.0),
    "demo_lstm": dict(kind="lstm", d_model=96, hidden_size=176, num_layers=2, frontend_channels=16),
}
