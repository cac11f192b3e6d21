"""Global cepstral mean and variance normalization (CMVN) of fbank features.

One mean and one standard deviation per mel bin, estimated once over (a sample of) the training data
and stored in the model dir as ``cmvn.json``::

    {"mean": [F floats], "std": [F floats], "frames": N, "num_mel_bins": F}

``std`` is floored at ``STD_FLOOR`` so a constant bin cannot divide by zero. Global (not per-speaker
or per-utterance) statistics keep the student streamable: normalizing a frame needs nothing from the
future.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
from pathlib import Path

import torch

from asr_kd.data.audio import load_audio
from asr_kd.data.datadir import DataDir
from asr_kd.data.features import Fbank, FbankConfig
from asr_kd.errors import AsrKdError, AudioError

log = logging.getLogger(__name__)

STD_FLOOR = 1e-5
"""Smallest standard deviation stored (log-mel units)."""


class CMVNError(AsrKdError):
    """CMVN statistics cannot be computed, or a ``cmvn.json`` is malformed."""


class GlobalCMVN(torch.nn.Module):
    """``(feats - mean) / std`` per mel bin. Buffers ``mean`` and ``std`` have shape ``(F,)``."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, frames: int = 0):
        super().__init__()
        mean = torch.as_tensor(mean, dtype=torch.float32).flatten()
        std = torch.as_tensor(std, dtype=torch.float32).flatten()
        if mean.shape != std.shape or mean.numel() == 0:
            raise CMVNError(f"mean and std must be non-empty and the same size, got {tuple(mean.shape)} and {tuple(std.shape)}")
        if not bool(torch.isfinite(mean).all() and torch.isfinite(std).all()):
            raise CMVNError("mean and std must be finite")
        self.register_buffer("mean", mean.clone())
        self.register_buffer("std", std.clamp_min(STD_FLOOR))
        self.frames = int(frames)
        """Frames (10 ms) the statistics were estimated from (0 if unknown)."""

    @property
    def num_mel_bins(self) -> int:
        return int(self.mean.numel())

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """``feats (..., F)`` -> normalized, same shape. With ``lengths (B,)`` and ``feats (B, T, F)``,
        frames at or past each utterance's length are set to 0 (instead of ``-mean / std``)."""
        if feats.shape[-1] != self.num_mel_bins:
            raise CMVNError(f"features have {feats.shape[-1]} bins but the CMVN stats have {self.num_mel_bins}")
        out = (feats - self.mean) / self.std
        if lengths is not None:
            valid = torch.arange(feats.shape[1], device=feats.device)[None, :] < lengths.to(feats.device)[:, None]
            out = out.masked_fill(~valid[:, :, None], 0.0)
        return out

    def to_json(self) -> dict:
        return {"mean": [float(v) for v in self.mean.cpu()], "std": [float(v) for v in self.std.cpu()],
                "frames": self.frames, "num_mel_bins": self.num_mel_bins}

    def save(self, path: str | os.PathLike) -> Path:
        """Write ``cmvn.json`` atomically (temp file + rename)."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.to_json(), indent=1) + "\n", encoding="utf-8")
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "GlobalCMVN":
        """Read ``cmvn.json``; malformed content raises ``CMVNError`` naming the file."""
        path = Path(path)
        if not path.is_file():
            raise CMVNError(f"{path}: CMVN stats file not found")
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise CMVNError(f"{path}: not valid JSON: {exc}") from None
        need = {"mean", "std", "frames", "num_mel_bins"}
        if not isinstance(raw, dict) or need - raw.keys():
            raise CMVNError(f"{path}: expected keys {sorted(need)}, got {sorted(raw) if isinstance(raw, dict) else type(raw).__name__}")
        mean, std, bins = raw["mean"], raw["std"], raw["num_mel_bins"]
        if not (isinstance(mean, list) and isinstance(std, list) and len(mean) == len(std) == bins):
            raise CMVNError(f"{path}: mean and std must be lists of num_mel_bins={bins} numbers")
        if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in mean + std):
            raise CMVNError(f"{path}: mean and std must be finite numbers")
        if any(v <= 0 for v in std):
            raise CMVNError(f"{path}: std must be > 0")
        return cls(torch.tensor(mean), torch.tensor(std), frames=int(raw["frames"]))


def compute_global_cmvn(
    data: DataDir,
    fbank: FbankConfig,
    max_utts: int | None = None,
    seed: int = 0,
    progress: bool = True,
    allow_pipes: bool = False,
) -> GlobalCMVN:
    """Estimate global CMVN over the fbank frames of ``data`` (all utterances, or ``max_utts`` of them
    drawn with ``random.Random(seed)``). Sums are accumulated in float64.

    Utterances whose audio cannot be read (any ``AudioError``) or that are shorter than one frame are
    skipped and listed in one logged warning; if no frame is left, ``CMVNError``.
    """
    utts = data.utt_ids
    if max_utts is not None and len(utts) > max_utts:
        utts = sorted(random.Random(seed).sample(utts, max_utts))
    module = Fbank(fbank)
    total = torch.zeros(fbank.num_mel_bins, dtype=torch.float64)
    total_sq = torch.zeros(fbank.num_mel_bins, dtype=torch.float64)
    frames = 0
    skipped: list[tuple[str, str]] = []
    from tqdm import tqdm  # imported here: only this loop shows a progress bar

    for utt in tqdm(utts, desc="cmvn", unit="utt", disable=not progress):
        try:
            wave = load_audio(data.source(utt), sample_rate=fbank.sample_rate, allow_pipes=allow_pipes)
        except AudioError as exc:
            skipped.append((utt, f"{exc.reason}: {exc.detail}"))
            continue
        with torch.no_grad():
            feats, _ = module(wave[None], torch.tensor([wave.numel()]))
        if feats.shape[1] == 0:
            skipped.append((utt, f"shorter than one frame ({wave.numel()} samples)"))
            continue
        f64 = feats[0].double()
        total += f64.sum(0)
        total_sq += f64.pow(2).sum(0)
        frames += f64.shape[0]
    if skipped:
        listing = "; ".join(f"{u} ({why})" for u, why in skipped[:20])
        more = f"; and {len(skipped) - 20} more" if len(skipped) > 20 else ""
        log.warning("cmvn: skipped %d of %d utterance(s): %s%s", len(skipped), len(utts), listing, more)
    if frames == 0:
        raise CMVNError(f"cmvn: no usable audio in {data.path or 'the data dir'} ({len(skipped)} utterance(s) skipped)")
    mean = total / frames
    var = (total_sq / frames - mean.pow(2)).clamp_min(0.0)
    log.info("cmvn: %d frames from %d utterance(s)", frames, len(utts) - len(skipped))
    return GlobalCMVN(mean.float(), var.sqrt().float(), frames=frames)
