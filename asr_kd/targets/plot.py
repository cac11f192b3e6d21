"""Posteriorgram image of one stored utterance (``asr-kd targets plot``).

Rows are the units that occur in the utterance's top-k (all of them would be mostly empty rows),
columns are output frames; colour is the stored probability (0 where a unit was not in the top-k).
With ``tokens.txt`` (``symbol id`` per line) the rows are labeled with unit symbols. Matplotlib is
driven through its object API with the Agg canvas, so no display and no global backend switch.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from asr_kd.errors import StoreError
from asr_kd.targets.store import StoreReader


def read_token_symbols(path: str | os.PathLike) -> dict[int, str]:
    """``tokens.txt`` (``symbol id`` per line, as Kaldi/icefall write it) -> ``{id: symbol}``."""
    p = Path(path)
    if not p.is_file():
        raise StoreError(f"{p}: tokens file not found")
    out: dict[int, str] = {}
    for lineno, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split()
        if len(fields) != 2 or not fields[1].lstrip("-").isdigit():
            raise StoreError(f"{p}:{lineno}: expected 'symbol id', got {line!r}")
        out[int(fields[1])] = fields[0]
    return out


def plot_posteriorgram(reader: StoreReader, utt: str, out_png: str | os.PathLike, tokens: str | os.PathLike | None = None,
                       dpi: int = 100) -> Path:
    """Write a PNG posteriorgram of ``utt``; returns its path."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    ids, probs = reader.get_sparse(utt)
    units = np.unique(ids) if ids.size else np.zeros(0, dtype=np.int64)
    row_of = {int(u): i for i, u in enumerate(units)}
    image = np.zeros((len(units), ids.shape[0]), dtype=np.float32)
    for t in range(ids.shape[0]):
        for u, p in zip(ids[t], probs[t]):
            image[row_of[int(u)], t] = p
    symbols = read_token_symbols(tokens) if tokens else {}
    labels = [symbols.get(int(u), str(int(u))) for u in units]
    if symbols:
        unknown = [int(u) for u in units if int(u) not in symbols]
        if unknown:
            raise StoreError(f"{tokens}: unit ids {unknown[:5]} of utterance {utt!r} are not in the tokens file; "
                             "is it the store's tokens.txt?")

    m = reader.meta
    fig = Figure(figsize=(max(6.0, min(24.0, ids.shape[0] / 12)), max(2.5, min(14.0, 0.22 * len(units) + 1.2))))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    mesh = ax.imshow(image, aspect="auto", origin="lower", interpolation="nearest", cmap="magma", vmin=0.0, vmax=1.0)
    ax.set_yticks(range(len(units)))
    ax.set_yticklabels(labels, fontsize=7)
    ax.set_xlabel(f"output frame ({m.frame_shift_ms:g} ms)")
    ax.set_ylabel("unit" if symbols else "unit id")
    ax.set_title(f"{utt}: top-{m.k} soft targets (T={m.temperature:g}, {m.quantization})")
    fig.colorbar(mesh, ax=ax, label="probability")
    fig.tight_layout()
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi)
    return out
