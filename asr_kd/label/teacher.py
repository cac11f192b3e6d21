"""One or more teachers turned into per-frame soft targets (used by the Ray actors and the local loop).

``TeacherEnsemble`` loads teacher model dirs, checks that they agree on units, output frame rate and
front end (a mismatch is an error naming both values), and maps a batch of waveforms to, per
utterance, the top-k unit ids and probabilities of the weighted average of the teachers'
temperature-``T`` distributions, plus the 1-best (greedy CTC) pseudo transcript and confidence
figures. Fbank is computed once per batch; each teacher applies its own CMVN.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import torch

from asr_kd.decode import greedy_ctc
from asr_kd.errors import AsrKdError
from asr_kd.models.model_dir import LoadedModel, load_model_dir


@dataclasses.dataclass
class SoftTargets:
    """Targets of one utterance at the teachers' output frame rate (40 ms frames)."""

    utt_id: str
    ids: torch.Tensor  # (T, k) int64 unit ids, most probable first
    probs: torch.Tensor  # (T, k) float32 probabilities at the labeling temperature
    pseudo_text: str  # greedy CTC 1-best of the (averaged) distribution
    mean_max_prob: float  # mean over frames of the largest probability (confidence)
    mean_entropy: float  # mean per-frame entropy in nats of the full averaged distribution


class TeacherEnsemble:
    def __init__(self, model_dirs: list[str], weights: list[float] | None = None, device: str = "cpu",
                 top_k: int = 8, temperature: float = 1.0):
        if not model_dirs:
            raise AsrKdError("label: give at least one --model teacher dir")
        weights = list(weights) if weights else [1.0] * len(model_dirs)
        if len(weights) != len(model_dirs) or any(w <= 0 for w in weights):
            raise AsrKdError(f"label: --weights needs one positive weight per --model ({len(model_dirs)}), got {weights}")
        total = sum(weights)
        self.weights = [w / total for w in weights]
        self.teachers: list[LoadedModel] = [load_model_dir(d, device=device) for d in model_dirs]
        check_teachers_agree(self.teachers)
        first = self.teachers[0]
        if not 1 <= top_k <= min(64, first.tokenizer.vocab_size):
            raise AsrKdError(f"label: --top-k must be in 1..{min(64, first.tokenizer.vocab_size)}, got {top_k}")
        if temperature <= 0:
            raise AsrKdError(f"label: temperature must be > 0, got {temperature}")
        self.top_k = top_k
        self.temperature = temperature
        self.tokenizer = first.tokenizer
        self.fbank = first.fbank
        self.fbank_config = first.fbank_config
        self.frame_shift_ms = first.frame_shift_ms
        self.subsampling = first.model.subsampling
        self.fingerprints = [t.fingerprint for t in self.teachers]
        self.device = first.device

    @torch.no_grad()
    def __call__(self, utt_ids: list[str], waveforms: list[torch.Tensor]) -> list[SoftTargets]:
        """Label one batch (waveforms: 1-D float tensors at the teachers' sample rate)."""
        lengths = torch.tensor([w.numel() for w in waveforms], dtype=torch.long)
        padded = torch.zeros(len(waveforms), int(lengths.max()))
        for i, w in enumerate(waveforms):
            padded[i, : w.numel()] = w
        feats, feat_lens = self.fbank(padded.to(self.device), lengths.to(self.device))
        probs = None
        out_lens = None
        for weight, teacher in zip(self.weights, self.teachers):
            log_probs, lens = teacher.model(teacher.cmvn(feats), feat_lens)
            p = torch.softmax(log_probs.float() / self.temperature, dim=-1) * weight
            probs = p if probs is None else probs + p
            out_lens = lens
        assert probs is not None and out_lens is not None
        probs, out_lens = probs.cpu(), out_lens.cpu()
        hyps = greedy_ctc(probs.clamp_min(1e-30).log(), out_lens)
        out = []
        for b, utt in enumerate(utt_ids):
            n = int(out_lens[b])
            p = probs[b, :n]
            top_p, top_i = torch.topk(p, self.top_k, dim=-1)
            entropy = -(p * p.clamp_min(1e-30).log()).sum(-1)
            out.append(SoftTargets(
                utt, top_i, top_p.float(), self.tokenizer.decode(hyps[b]),
                float(top_p[:, 0].mean()) if n else math.nan, float(entropy.mean()) if n else math.nan,
            ))
        return out


def check_teachers_agree(teachers: list[LoadedModel]) -> None:
    """All teachers must share units, output frame rate and front end; else an error naming both."""
    first = teachers[0]
    for t in teachers[1:]:
        problems = []
        if t.tokenizer.units_hash() != first.tokenizer.units_hash():
            problems.append(f"units {t.tokenizer.units_hash()} vs {first.tokenizer.units_hash()}")
        if t.frame_shift_ms != first.frame_shift_ms:
            problems.append(f"frame shift {t.frame_shift_ms} ms vs {first.frame_shift_ms} ms")
        if t.fbank_config != first.fbank_config:
            problems.append("fbank configs differ")
        if problems:
            raise AsrKdError(f"label: teacher {Path(t.path)} disagrees with {Path(first.path)}: {'; '.join(problems)}; "
                             "teachers combined in one store must share units, frame rate and features")
