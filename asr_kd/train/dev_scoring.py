"""Dev WER during training: every utterance of the dev data dir is scored, as ``asr-kd evaluate`` does.

An utterance that cannot be read or featurized is an empty hypothesis (all deletions), never left out
of the score, so ``train.final: best`` ranks checkpoints on the set ``asr-kd evaluate`` scores. Such
utterances are listed in ``<model_dir>/rejects_dev.tsv`` with their reasons. WER and CER are percent.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

import torch

from asr_kd.data.features import FbankConfig
from asr_kd.data.units import Tokenizer, normalize_text
from asr_kd.decode import greedy_ctc
from asr_kd.scoring import score
from asr_kd.train.batching import plan_batches
from asr_kd.train.data import UtteranceTable, make_loader, write_rejects

log = logging.getLogger(__name__)
DEV_REJECTS = "rejects_dev.tsv"  # dev utterances that could not be decoded (scored as empty hypotheses)


class DevScorer:
    """The dev set of a training run: its utterance table and every utterance's reference text."""

    def __init__(self, dev_dir: str, fbank: FbankConfig, tokenizer: Tokenizer, max_seconds: float, allow_pipes: bool,
                 out_dir: Path, writes: bool):
        self.fbank, self.tokenizer, self.allow_pipes = fbank, tokenizer, allow_pipes
        self.rejects_path = out_dir / DEV_REJECTS
        self.writes = writes  # rank 0 only under DDP
        self.table = UtteranceTable()
        data = self.table.add_dir(dev_dir, fbank, tokenizer, True, 0.0, max_seconds, allow_pipes)
        self.refs = {u: normalize_text(t) for u, t in (data.text or {}).items()}
        if self.table.rejects and writes:
            write_rejects(self.rejects_path, self.table.rejects)
            log.warning("%d dev utterance(s) cannot be decoded and score as empty hypotheses (all deletions, as "
                        "asr-kd evaluate scores them); reasons in %s", len(self.table.rejects), self.rejects_path)

    def score(self, model: torch.nn.Module, cmvn: torch.nn.Module, device: torch.device, max_frames: int,
              autocast: Callable[[], object]) -> tuple[float | None, float | None]:
        """Greedy-CTC dev WER and CER (%) of ``model`` (set back to training mode afterwards)."""
        if not self.table.utts:
            return None, None
        model.eval()
        plan = [("dev", b) for b in plan_batches(self.table.lengths(), max_frames, 0, 0, shuffle=False)]
        hyps: dict[str, str] = {}
        rejects: list[tuple[str, str]] = []
        with torch.no_grad():
            for batch in make_loader(self.table, plan, self.fbank, 0, self.allow_pipes):
                rejects.extend(batch.rejects)
                if not batch.utt_ids:
                    continue
                feats = cmvn(batch.feats.to(device))
                with autocast():
                    log_probs, out_lens = model(feats, batch.feat_lens.to(device))
                for utt, ids in zip(batch.utt_ids, greedy_ctc(log_probs.float().cpu(), out_lens.cpu())):
                    hyps[utt] = self.tokenizer.decode(ids)
        model.train()
        if rejects and self.writes:
            write_rejects(self.rejects_path, rejects)
        report = score(self.refs, {u: hyps.get(u, "") for u in self.refs})
        return report.wer, report.cer
