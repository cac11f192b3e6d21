"""Training metrics: ``metrics.csv`` (one row per logged step or dev evaluation), TensorBoard event
files under ``tb/`` (open with ``tensorboard --logdir <model_dir>/tb``), ``training_curve.png``, and
``progress.json`` (the latest step and dev score, rewritten atomically: what a driver process or another
shell reads to follow a run whose workers print nowhere, e.g. Ray Train workers)."""

from __future__ import annotations

import csv
import json
import os
import threading
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


PROGRESS_FILE = "progress.json"


def write_progress(model_dir: Path, **values: float | int | None) -> None:
    """Replace ``progress.json`` with ``values`` merged into the previous ones (atomic rename)."""
    path = Path(model_dir) / PROGRESS_FILE
    state = read_progress(model_dir)
    state.update({k: v for k, v in values.items() if v is not None})
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state) + "\n")
    os.replace(tmp, path)


def read_progress(model_dir: Path) -> dict:
    """The last ``progress.json`` of a run, or {} before its first logged step."""
    try:
        return json.loads((Path(model_dir) / PROGRESS_FILE).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


class ProgressWatcher:
    """A progress bar (with ETA) in this process that follows another process's ``progress.json``.

    ``asr-kd train --workers N`` runs the trainer in Ray workers whose output is not forwarded; the
    driver shows their progress from the file rank 0 writes every ``log_every_steps`` steps, and prints
    a line per dev evaluation, like single-process training does.
    """

    def __init__(self, model_dir: Path, desc: str, interval_s: float = 1.0, enabled: bool = True):
        self.model_dir = Path(model_dir)
        self.desc = desc
        self.interval_s = interval_s
        self.enabled = enabled
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "ProgressWatcher":
        if self.enabled:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self.enabled:
            self._thread.join()

    def _run(self) -> None:
        from tqdm import tqdm

        bar = None
        last_epoch_reported = read_progress(self.model_dir).get("dev_epoch")
        while True:
            stopping = self._stop.wait(self.interval_s)
            state = read_progress(self.model_dir)
            if state.get("total_steps"):
                if bar is None:
                    bar = tqdm(total=state["total_steps"], initial=state.get("step", 0), desc=self.desc,
                               unit="step", dynamic_ncols=True)
                bar.update(max(0, state.get("step", 0) - bar.n))
                if "loss" in state:
                    bar.set_postfix(loss=f"{state['loss']:.3f}", epoch=state.get("epoch"))
                dev_epoch = state.get("dev_epoch")
                if dev_epoch is not None and dev_epoch != last_epoch_reported and "dev_wer" in state:
                    last_epoch_reported = dev_epoch
                    bar.write(f"epoch {dev_epoch}: step {state.get('dev_step')}, dev WER {state['dev_wer']:.2f}% "
                              f"CER {state.get('dev_cer', float('nan')):.2f}%")
            if stopping:
                break
        if bar is not None:
            bar.close()
