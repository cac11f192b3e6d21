"""The directory of a soft-target store: file names, shard markers, ``rejects.tsv`` and which shards are complete.

Layout (format versions 1 and 2)::

    STORE/
      meta.json                  StoreMeta (asr_kd.targets.meta)
      shards/shard-00000.bin     the shard's payload: format 1 (asr_kd.targets.format1) or 2 (asr_kd.targets.format2)
      shards/shard-00000.json    the shard's marker: its index + sha256, written LAST = its completion marker
      index.tsv                  utt <TAB> shard <TAB> offset <TAB> frames   (sorted by utt; finalize)
      index/                     the same, compact and memory-mapped (asr_kd.targets.index)
      rejects.tsv                utt <TAB> reason   (appended per shard, sorted by finalize)

A marker is one JSON object: ``format_version``, ``shard``, ``file``, ``bytes`` (size of the ``.bin``),
``frames`` (40 ms output frames in the shard), the format's layout (``record_bytes`` for format 1;
``blocks`` and ``codec`` for format 2), ``sha256`` of the ``.bin`` and ``utts``, one row per utterance
starting ``[utt, offset, frames, ...]`` (offset and frames in output frames). Both the writer and the
reader use what is here; neither needs the other.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from asr_kd.errors import StoreError

log = logging.getLogger(__name__)

INDEX = "index.tsv"
REJECTS = "rejects.tsv"
SHARDS = "shards"
RESUME_HINT = "rerun 'asr-kd label' with the same arguments (it resumes and redoes incomplete shards)"


def shard_name(shard_id: int) -> str:
    """File stem of shard ``shard_id`` (``shard-00000``) in ``STORE/shards/``."""
    return f"shard-{shard_id:05d}"


def read_marker(path: Path) -> dict[str, Any]:
    """A shard marker, parsed, with the keys its format version needs (StoreError naming the file)."""
    try:
        marker = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise StoreError(f"{path}: unreadable shard index ({exc}); delete it and {RESUME_HINT}") from None
    version = marker.get("format_version", 1)
    keys = ("shard", "bytes", "frames", "sha256", "utts") + (("record_bytes",) if version == 1 else ("blocks",))
    for key in keys:
        if key not in marker:
            raise StoreError(f"{path}: shard index lacks {key!r}; delete it and {RESUME_HINT}")
    return marker


def check_utt_id(utt: str, where: str) -> None:
    """Refuse an utterance id that is empty or holds whitespace (it could not be a TSV field)."""
    if not isinstance(utt, str) or not utt or any(c.isspace() for c in utt):
        raise StoreError(f"{where}: utterance id {utt!r} must be a non-empty string without whitespace")


def completed_shards(store_dir: str | os.PathLike) -> set[int]:
    """Shard ids of the store at ``store_dir`` whose marker exists and whose ``.bin`` has the size the
    marker records (read-only: what a labeling rerun skips)."""
    done = set()
    for marker_path in (Path(store_dir) / SHARDS).glob("shard-*.json"):
        try:
            marker = read_marker(marker_path)
        except StoreError as exc:
            log.warning("%s; the shard will be redone", exc)
            continue
        bin_path = marker_path.with_suffix(".bin")
        if not bin_path.is_file() or bin_path.stat().st_size != marker["bytes"]:
            log.warning("%s: size differs from its index (truncated?); the shard will be redone", bin_path)
            continue
        done.add(int(marker["shard"]))
    return done


def read_rejects(path: str | os.PathLike) -> dict[str, str]:
    """``rejects.tsv`` -> ``{utt: reason}`` (empty when the file does not exist)."""
    p = Path(path)
    if not p.is_file():
        return {}
    out: dict[str, str] = {}
    text = p.read_text(encoding="utf-8")
    lines = text.split("\n")
    if lines and lines[-1]:  # a torn last line (labeling was killed mid-append): its shard is redone
        log.warning("%s: ignoring an incomplete last line %r (an interrupted run; its shard will be redone)", p,
                    lines[-1][:80])
    for lineno, line in enumerate(lines[:-1], 1):
        if not line.strip():
            continue
        utt, _, reason = line.partition("\t")
        if not utt or not reason:
            raise StoreError(f"{p}:{lineno}: expected 'utt<TAB>reason', got {line!r}")
        out[utt] = reason
    return out
