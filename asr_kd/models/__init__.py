"""Acoustic models: full-context Conformer teacher, streaming Conformer and LSTM students.

``build_model(config, vocab_size)`` makes one from a validated config (see ``asr_kd.models.config``
for presets); ``asr_kd.models.model_dir`` saves and loads them with their units, CMVN and fingerprint.
"""

from __future__ import annotations

from asr_kd.models.base import AcousticModel
from asr_kd.models.config import PRESETS, ConformerConfig, DynamicChunkSampling, LstmConfig, ModelConfig, parse_model_config
from asr_kd.models.conformer import ConformerCTC
from asr_kd.models.lstm import LstmCTC


def build_model(config: ConformerConfig | LstmConfig, vocab_size: int, num_mel_bins: int = 80) -> AcousticModel:
    """Instantiate the model described by ``config`` with ``vocab_size`` CTC outputs (blank = 0)."""
    if vocab_size < 2:
        raise ValueError(f"vocab_size must be >= 2 (blank + at least one unit), got {vocab_size}")
    if isinstance(config, ConformerConfig):
        return ConformerCTC(config, vocab_size, num_mel_bins)
    if isinstance(config, LstmConfig):
        return LstmCTC(config, vocab_size, num_mel_bins)
    raise TypeError(f"unknown model config type {type(config).__name__}")


__all__ = [
    "AcousticModel", "ConformerCTC", "ConformerConfig", "DynamicChunkSampling", "LstmCTC", "LstmConfig",
    "ModelConfig", "PRESETS", "build_model", "parse_model_config",
]
