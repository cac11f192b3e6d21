"""The soft-target store: per-frame teacher distributions, sharded, checksummed, resumable.

A teacher (``asr-kd label``) writes, per utterance and per 40 ms output frame, its most probable
units and their probabilities into a directory of shards; students read them back by utterance id
while training. No pickle anywhere: JSON, TSV, raw little-endian arrays and zstd frames only.
Where each part lives (this module only re-exports the public names):

- ``asr_kd.targets.layout``: the directory (``meta.json``, ``shards/``, ``index.tsv``, ``index/``,
  ``rejects.tsv``), shard markers, ``completed_shards``, ``read_rejects``;
- ``asr_kd.targets.meta``: ``StoreMeta`` (``meta.json``), format versions, ``read_meta`` and the
  checks that a store and a student agree (``check_compatible``, ``fbank_differences``,
  ``teacher_mismatch``);
- ``asr_kd.targets.format1`` / ``asr_kd.targets.format2``: a shard's bytes in format 1 (fixed top-k
  records) and format 2 (top-p, zstd blocks; per-utterance columns in ``asr_kd.targets.codec``);
- ``asr_kd.targets.writer``: ``StoreWriter`` (atomic shards, resume, finalize), ``topk_from_log_probs``;
- ``asr_kd.targets.reader``: ``StoreReader``, ``sparse_to_dense``; several stores as one:
  ``asr_kd.targets.storeset``; the compact index: ``asr_kd.targets.index``;
- ``asr_kd.targets.verify``: checksum verification (``asr-kd targets verify``).
"""

from __future__ import annotations

from asr_kd.targets.layout import completed_shards, read_rejects
from asr_kd.targets.meta import StoreMeta, check_compatible, read_meta, teacher_mismatch
from asr_kd.targets.reader import StoreReader, sparse_to_dense
from asr_kd.targets.verify import store_problems, verify_store
from asr_kd.targets.writer import StoreWriter, topk_from_log_probs

__all__ = ["StoreMeta", "StoreReader", "StoreWriter", "check_compatible", "completed_shards", "read_meta",
           "read_rejects", "sparse_to_dense", "store_problems", "teacher_mismatch", "topk_from_log_probs",
           "verify_store"]
