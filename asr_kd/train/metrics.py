"""Training metrics: ``metrics.csv`` (one row per logged step or dev evaluation), TensorBoard event
files under ``tb/`` (open with ``tensorboard --logdir <model_dir>/tb``) and ``training_curve.png``."""

from __future__ import annotations

import csv
from pathlib import Path

FIELDS = ["kind", "epoch", "step", "loss", "ctc_loss", "kd_loss", "lr", "grad_norm", "frames_per_s", "dev_loss", "dev_wer", "dev_cer", "wall_s"]


class MetricsLog:
    def __init__(self, model_dir: Path, resume_step: int = 0):
        self.path = Path(model_dir) / "metrics.csv"
        # on resume drop rows past the checkpoint so the curve has no duplicated steps
        rows = []
        if self.path.exists() and resume_step > 0:
            with open(self.path, newline="") as fh:
                rows = [r for r in csv.DictReader(fh) if int(r["step"] or 0) <= resume_step]
        with open(self.path, "w", newline="") as fh:
            w = csv.DictWriter(fh, FIELDS)
            w.writeheader()
            w.writerows(rows)
        self._tb = None
        try:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(Path(model_dir) / "tb"), purge_step=resume_step or None)
        except ImportError:  # tensorboard is a pinned dependency; tolerate its absence in stripped installs
            self._tb = None

    def log(self, kind: str, epoch: int, step: int, **values: float | None) -> None:
        row = {"kind": kind, "epoch": epoch, "step": step, **{k: ("" if v is None else f"{v:.6g}") for k, v in values.items()}}
        with open(self.path, "a", newline="") as fh:
            csv.DictWriter(fh, FIELDS).writerow(row)
        if self._tb is not None:
            for k, v in values.items():
                if v is not None:
                    self._tb.add_scalar(f"{kind}/{k}", v, step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def read_metrics(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def plot_training_curve(model_dir: Path, title: str | None = None) -> Path:
    """Loss per step (train) and WER per epoch (dev) side by side, written to training_curve.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(Path(model_dir) / "metrics.csv")
    train = [r for r in rows if r["kind"] == "train"]
    dev = [r for r in rows if r["kind"] == "dev"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    for key, label in (("loss", "total"), ("ctc_loss", "CTC"), ("kd_loss", "KD")):
        pts = [(int(r["step"]), float(r[key])) for r in train if r[key]]
        if pts:
            ax1.plot(*zip(*pts), label=label)
    ax1.set_xlabel("step")
    ax1.set_ylabel("training loss")
    ax1.legend()
    ax1.grid(alpha=0.3)
    pts = [(int(r["epoch"]), float(r["dev_wer"])) for r in dev if r["dev_wer"]]
    if pts:
        ax2.plot(*zip(*pts), marker="o")
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("dev WER (%)")
    ax2.grid(alpha=0.3)
    fig.suptitle(title or Path(model_dir).name)
    fig.tight_layout()
    out = Path(model_dir) / "training_curve.png"
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
