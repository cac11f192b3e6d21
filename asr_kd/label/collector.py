"""The driver's writing side: collect result rows by shard and write each shard once it is complete.

``ShardCollector`` keys the workers' rows by utterance id (a retried Ray task cannot duplicate one) and
writes a shard atomically once all its utterances are back: rejects first, then the teachers' 1-best
transcripts (``pseudo/``), the unmapped teacher mass (``unmapped/``, foreign teachers), the targets, and
last the shard's completion marker (``asr_kd.targets.store``). ``finish_store`` merges ``text.pseudo``
and finalizes the store. The test hook ``STOP_DRIVER_ENV`` is read here.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from asr_kd.label.teacher import TeacherEnsemble

if TYPE_CHECKING:
    from asr_kd.label.pipeline import LabelOptions

log = logging.getLogger(__name__)

STOP_DRIVER_ENV = "ASR_KD_TEST_STOP_AFTER_SHARDS"  # test hook: the driver stops after writing N shards
NOTES_LOGGED = 5  # utterance notes (resampling) logged one by one; the rest are counted


class _Result(NamedTuple):
    """One utterance's result as the driver keeps it until its shard is complete."""

    targets: tuple  # (counts, ids, codes): a format-2 store's compact columns; or (ids, probs) (T, k)
    pseudo: str  # the teachers' 1-best transcript
    max_prob: float  # mean per-frame max probability
    entropy: float  # mean per-frame entropy, nats
    error: str  # reject reason ("" = labeled)
    samples: int  # decoded samples at the teachers' rate
    unmapped: float  # mean per-frame unmapped teacher mass
    note: str  # e.g. "resampled"
    node: str  # IP of the Ray node that labeled it ("" outside Ray)


class ShardCollector:
    """Groups result rows by shard and writes a shard once all its utterances are back."""

    def __init__(self, writer, shards: list[list[str]], options: LabelOptions, sample_rate: int,
                 record_unmapped: bool = False):
        self.record_unmapped = record_unmapped
        self.writer = writer
        self.shards = shards
        self.options = options
        self.sample_rate = sample_rate
        self.pending: dict[int, dict[str, tuple]] = {}
        self.written: list[int] = []
        self._done: set[int] = set()  # shards written by this run (late rows for them are dropped)
        self.labeled = 0
        self.rejected = 0
        self.seconds = 0.0
        self.stop_after = int(os.environ.get(STOP_DRIVER_ENV, "0") or 0)
        self.notes = 0  # utterances with a note (e.g. resampled)
        self.nodes: dict[str, int] = {}  # node IP -> utterances of written shards labeled there (Ray actors)

    def add(self, batch: dict[str, Any]) -> int:
        n = len(batch["utt_id"])
        nodes = batch.get("node")
        encoded = "codes" in batch  # the store's compact columns (format 2) rather than ids and probs
        for i in range(n):
            shard = int(batch["shard"][i])
            if shard in self._done:  # a retried task's rows after their shard was written: already stored
                continue
            utt = str(batch["utt_id"][i])
            targets = (tuple(np.asarray(batch[c][i]) for c in ("counts", "ids", "codes")) if encoded
                       else (np.asarray(batch["ids"][i]), np.asarray(batch["probs"][i], dtype=np.float32)))
            row = _Result(targets, str(batch["pseudo"][i]), float(batch["max_prob"][i]), float(batch["entropy"][i]),
                          str(batch["error"][i]), int(batch["samples"][i]), float(batch["unmapped"][i]),
                          str(batch["note"][i]), str(nodes[i]) if nodes is not None else "")
            if row.note:
                self.notes += 1
                if self.notes <= NOTES_LOGGED:
                    log.warning("label: utterance %s: %s", utt, row.note)
            self.pending.setdefault(shard, {})[utt] = row  # keyed by id: a retried task cannot duplicate
            if len(self.pending[shard]) == len(self.shards[shard]):
                self._write(shard)
        return n

    def _reject_reason(self, row: "_Result") -> str | None:
        o = self.options
        if row.error:
            return row.error
        if o.min_max_prob is not None and row.max_prob < o.min_max_prob:
            return f"low_confidence: mean max probability {row.max_prob:.3f} < {o.min_max_prob}"
        if o.max_entropy is not None and row.entropy > o.max_entropy:
            return f"low_confidence: mean entropy {row.entropy:.3f} nats > {o.max_entropy}"
        return None

    def _write(self, shard: int) -> None:
        rows = self.pending.pop(shard)
        items, rejects, pseudo, unmapped = [], [], [], []
        encoded = False
        for utt in self.shards[shard]:
            row = rows[utt]
            if row.node:
                self.nodes[row.node] = self.nodes.get(row.node, 0) + 1
            reason = self._reject_reason(row)
            if reason is not None:
                rejects.append((utt, reason))
                continue
            encoded = len(row.targets) == 3
            items.append((utt, *row.targets))
            pseudo.append((utt, row.pseudo))
            unmapped.append((utt, int(row.targets[0].shape[0]), row.unmapped))
            self.seconds += row.samples / self.sample_rate
        self.writer.write_rejects(rejects)
        write_pseudo_part(self.writer.out_dir, shard, pseudo)
        if self.record_unmapped:
            write_unmapped_part(self.writer.out_dir, shard, unmapped)
        if encoded:
            self.writer.write_encoded_shard(shard, items)
        else:
            self.writer.write_shard(shard, items)
        self.written.append(shard)
        self._done.add(shard)
        self.labeled += len(items)
        self.rejected += len(rejects)
        if self.stop_after and len(self.written) >= self.stop_after:
            raise KeyboardInterrupt(f"test hook {STOP_DRIVER_ENV}={self.stop_after}")


def write_pseudo_part(store_dir: Path, shard: int, rows: list[tuple[str, str]]) -> None:
    """Teacher 1-best transcripts of one shard, ``pseudo/shard-NNNNN.txt`` (written before the shard)."""
    d = Path(store_dir) / "pseudo"
    d.mkdir(parents=True, exist_ok=True)
    tmp = d / f"shard-{shard:05d}.txt.tmp"
    tmp.write_text("".join(f"{u} {t}\n" for u, t in rows), encoding="utf-8")
    os.replace(tmp, d / f"shard-{shard:05d}.txt")


def write_unmapped_part(store_dir: Path, shard: int, rows: list[tuple[str, int, float]]) -> None:
    """Per utterance of one shard: stored frames and mean per-frame unmapped teacher mass,
    ``unmapped/shard-NNNNN.tsv``."""
    d = Path(store_dir) / "unmapped"
    d.mkdir(parents=True, exist_ok=True)
    tmp = d / f"shard-{shard:05d}.tsv.tmp"
    tmp.write_text("".join(f"{u}\t{n}\t{m:.6g}\n" for u, n, m in rows), encoding="utf-8")
    os.replace(tmp, d / f"shard-{shard:05d}.tsv")


def merge_unmapped(store_dir: Path) -> float | None:
    """Frame-weighted mean unmapped mass over the stored utterances (``None`` when nothing was recorded)."""
    frames = 0
    mass = 0.0
    parts = sorted((Path(store_dir) / "unmapped").glob("shard-*.tsv"))
    if not parts:
        return None
    for part in parts:
        for line in part.read_text(encoding="utf-8").splitlines():
            _, n, m = line.split("\t")
            frames += int(n)
            mass += int(n) * float(m)
    return mass / frames if frames else 0.0


def finish_store(writer, out_dir: str, n_shards: int, ensemble: TeacherEnsemble) -> None:
    """Finalize the store, merge text.pseudo and record the measured unmapped mass in its meta."""
    writer.finalize(expected_shards=n_shards)
    merge_pseudo(Path(out_dir))
    if ensemble.has_foreign:
        mass = merge_unmapped(Path(out_dir))
        writer.record_measured(unmapped_mass=mass)
        log.info("label: mean unmapped teacher mass %.4f per frame (rule %s; per utterance in %s/unmapped/)",
                 mass or 0.0, ensemble.unmapped_rule, out_dir)


def merge_pseudo(store_dir: Path) -> Path:
    """Merge the per-shard 1-best files into ``text.pseudo`` (Kaldi text format, sorted by id)."""
    lines = []
    for part in sorted((Path(store_dir) / "pseudo").glob("shard-*.txt")):
        lines.extend(line for line in part.read_text(encoding="utf-8").splitlines() if line)
    out = Path(store_dir) / "text.pseudo"
    out.write_text("".join(line + "\n" for line in sorted(lines)), encoding="utf-8")
    return out


def encoder_of(writer) -> dict[str, Any] | None:
    """What the workers need to send a format-2 store its compact columns (None: format 1, ids and probs)."""
    return writer.encoder_params() if writer.meta.format_version >= 2 else None


def open_writer(out_dir: str, ensemble_meta: dict[str, Any], options: LabelOptions):
    """The store writer of ``out_dir`` (created, or reopened to resume) with the meta of this run."""
    from asr_kd.targets.meta import StoreMeta
    from asr_kd.targets.writer import StoreWriter

    meta = StoreMeta(**ensemble_meta)
    return StoreWriter(out_dir, meta, shard_size_utts=options.shard_size)

