"""Soft-target store: top-k teacher distributions per output frame, sharded and checksummed.

- ``store``: what the store is and where each part lives; ``layout``: its directory and shard
  markers; ``meta``: ``StoreMeta``, ``read_meta``, ``check_compatible``; ``writer``: ``StoreWriter``,
  ``topk_from_log_probs``; ``reader``: ``StoreReader``; ``storeset``: several stores read as one;
  ``verify``: checksum verification;
- ``format1`` and ``format2``: a shard's bytes in each format version; ``codec``: format 2's per-frame
  top-p selection and per-utterance columns; ``index``: the compact memory-mapped index;
- ``quant``: frame record and probability quantization (``log8``, ``float16``);
- ``stats``: ``asr-kd targets stats``, ``expected_frames``, ``kl_dense_vs_stored``;
- ``kaldi``: Kaldi Posterior ark/scp export and import (kaldi-io);
- ``plot``: posteriorgram images; ``cli``: the ``asr-kd targets`` command.
"""

from asr_kd.targets.meta import StoreMeta, check_compatible
from asr_kd.targets.reader import StoreReader
from asr_kd.targets.writer import StoreWriter, topk_from_log_probs

__all__ = ["StoreMeta", "StoreReader", "StoreWriter", "check_compatible", "topk_from_log_probs"]
