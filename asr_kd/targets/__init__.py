"""Soft-target store: top-k teacher distributions per output frame, sharded and checksummed.

- ``store``: on-disk format, ``StoreMeta``, ``StoreWriter``, ``StoreReader``, ``check_compatible``,
  ``topk_from_log_probs``;
- ``quant``: frame record and probability quantization (``log8``, ``float16``);
- ``codec``: format version 2 — top-p selection per frame, utterance payloads, zstd blocks;
- ``stats``: ``asr-kd targets stats``, ``expected_frames``, ``kl_dense_vs_stored``;
- ``kaldi``: Kaldi Posterior ark/scp export and import (kaldi-io);
- ``plot``: posteriorgram images; ``cli``: the ``asr-kd targets`` command.
"""

from asr_kd.targets.store import StoreMeta, StoreReader, StoreWriter, check_compatible, topk_from_log_probs

__all__ = ["StoreMeta", "StoreReader", "StoreWriter", "check_compatible", "topk_from_log_probs"]
