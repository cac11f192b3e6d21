"""Training checkpoints: atomic writes, ``weights_only=True`` loads, rotation, best-by-WER, averaging.

Layout under ``<model_dir>/checkpoints/``::

    step-00001200.pt    every ``checkpoint_every_steps`` (the last ``keep_last_checkpoints`` kept)
    epoch-003.pt        at each epoch end (kept: the last ``average_last`` and the ``keep_best`` by dev WER)
    dev-step-00001200.pt  weights scored on dev every ``train.dev_every_steps`` (kept while among the ``keep_best``)

The trainer's weight average (``train.final: average``) is a running sum kept in the checkpoint
state, not rebuilt from saved files; ``averaged_model_state`` averages saved epoch checkpoints.
    best.tsv            epoch checkpoints ranked by dev WER
    latest              name of the newest checkpoint (what ``--resume`` loads)

A checkpoint holds model, optimizer and scheduler state, counters (epoch, step, batch index within
the epoch) and the RNG states, so a resumed run draws the same dropout and SpecAugment masks as an
uninterrupted one. Only tensors and plain containers are saved: loading uses ``weights_only=True``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import torch

from asr_kd.errors import ModelDirError


def atomic_save(obj: Any, path: Path) -> None:
    """torch.save to ``path.tmp``, fsync, rename: a kill never leaves a half-written checkpoint."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        torch.save(obj, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load with ``weights_only=True``; a pickle payload or a corrupt file is a ModelDirError."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for bad files
        raise ModelDirError(f"{path}: cannot load checkpoint ({type(exc).__name__}: {str(exc)[:200]}); "
                            "delete it to resume from the previous one") from None


class CheckpointManager:
    def __init__(self, model_dir: Path, keep_last: int, keep_best: int, average_last: int):
        self.dir = Path(model_dir) / "checkpoints"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.keep_last = keep_last
        self.keep_best = keep_best
        self.average_last = average_last

    # ---------------------------------------------------------------- saving
    def save_step(self, state: dict[str, Any], step: int) -> Path:
        path = self.dir / f"step-{step:08d}.pt"
        atomic_save(state, path)
        self._set_latest(path)
        steps = sorted(self.dir.glob("step-*.pt"))
        for old in steps[: -self.keep_last]:
            old.unlink()
        return path

    def save_epoch(self, state: dict[str, Any], epoch: int, dev_wer: float | None) -> Path:
        path = self.dir / f"epoch-{epoch:03d}.pt"
        atomic_save(state, path)
        self._set_latest(path)
        ranking = self.ranking()
        ranking = [r for r in ranking if r[0] != path.name]
        ranking.append((path.name, dev_wer if dev_wer is not None else float("inf")))
        ranking.sort(key=lambda r: (r[1], r[0]))
        self._write_ranking(ranking)
        keep = {name for name, _ in ranking[: self.keep_best]}
        epochs = sorted(self.dir.glob("epoch-*.pt"))
        keep |= {p.name for p in epochs[-self.average_last:]}
        for p in epochs:
            if p.name not in keep:
                p.unlink()
        return path

    def save_dev_eval(self, model_state: dict[str, Any], step: int, dev_wer: float | None) -> Path | None:
        """Rank the weights scored on dev at ``step`` (``train.dev_every_steps``) beside the epoch
        checkpoints: ``dev-step-NNNNNNNN.pt`` holds ``{"model": ...}`` only and is kept while it is among
        the ``keep_best``; it is never a resume point. Returns its path, or None when it is not kept."""
        path = self.dir / f"dev-step-{step:08d}.pt"
        ranking = [r for r in self.ranking() if r[0] != path.name]
        ranking.append((path.name, dev_wer if dev_wer is not None else float("inf")))
        ranking.sort(key=lambda r: (r[1], r[0]))
        keep = {name for name, _ in ranking[: self.keep_best]}
        if path.name in keep:
            atomic_save({"model": model_state, "step": step}, path)
        self._write_ranking(ranking)
        for p in self.dir.glob("dev-step-*.pt"):
            if p.name not in keep:
                p.unlink()
        return path if path.name in keep else None

    def _set_latest(self, path: Path) -> None:
        tmp = self.dir / "latest.tmp"
        tmp.write_text(path.name + "\n")
        os.replace(tmp, self.dir / "latest")

    def ranking(self) -> list[tuple[str, float]]:
        f = self.dir / "best.tsv"
        if not f.exists():
            return []
        rows = []
        for line in f.read_text().splitlines():
            name, wer = line.split("\t")
            rows.append((name, float(wer)))
        return rows

    def _write_ranking(self, ranking: list[tuple[str, float]]) -> None:
        tmp = self.dir / "best.tsv.tmp"
        tmp.write_text("".join(f"{n}\t{w}\n" for n, w in ranking))
        os.replace(tmp, self.dir / "best.tsv")

    # ---------------------------------------------------------------- loading
    def latest(self) -> Path | None:
        f = self.dir / "latest"
        if f.exists():
            p = self.dir / f.read_text().strip()
            if p.exists():
                return p
        cands = sorted(self.dir.glob("*.pt"), key=lambda p: p.stat().st_mtime)
        return cands[-1] if cands else None

    def best_path(self) -> Path | None:
        for name, _ in self.ranking():
            if (self.dir / name).exists():
                return self.dir / name
        return None

    def averaged_model_state(self, n: int) -> tuple[dict[str, torch.Tensor], list[str]]:
        """Element-wise mean of the model weights of the last ``n`` epoch checkpoints."""
        epochs = sorted(self.dir.glob("epoch-*.pt"), key=lambda p: int(re.findall(r"\d+", p.name)[0]))[-n:]
        if not epochs:
            raise ModelDirError(f"{self.dir}: no epoch checkpoint to average")
        total: dict[str, torch.Tensor] | None = None
        for p in epochs:
            sd = load_checkpoint(p)["model"]
            if total is None:
                total = {k: v.clone().double() if v.is_floating_point() else v.clone() for k, v in sd.items()}
            else:
                for k, v in sd.items():
                    if v.is_floating_point():
                        total[k] += v.double()
        assert total is not None
        ref = load_checkpoint(epochs[-1])["model"]
        avg = {k: (v / len(epochs)).to(ref[k].dtype) if ref[k].is_floating_point() else ref[k] for k, v in total.items()}
        return avg, [p.name for p in epochs]


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
