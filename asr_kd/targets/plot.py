"""Posteriorgram image of one stored utterance (``asr-kd targets plot``).

Rows are the units that occur in the utterance's top-k (all of them would be mostly empty rows; at
most ``MAX_ROWS``), columns are output frames; colour is the stored probability (0 where a unit was
not in the top-k). Rows are labeled with unit symbols (``<blk>``, ``a``, ``'``, ``▁`` for the word
boundary) from ``tokens.txt`` (``symbol id`` per line): ``--tokens`` (the file or a model dir, e.g.
the teacher's), else ``STORE/tokens.txt``; a store records only the units' hash, so without either the
rows show unit ids. The title (utterance id, then the store's settings) is wrapped to the figure width. Matplotlib is
driven through its object API with the Agg canvas, so no display and no global backend switch.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from asr_kd.errors import StoreError
from asr_kd.targets.reader import StoreReader

if TYPE_CHECKING:
    from matplotlib.figure import Figure

log = logging.getLogger(__name__)


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


MAX_ROWS = 48
"""At most this many unit rows (those with the highest peak probability); the rest are counted in the
axis label. Enough for every unit of a character inventory, readable for large BPE inventories."""


def resolve_tokens(store_dir: str | os.PathLike, tokens: str | os.PathLike | None) -> Path | None:
    """The tokens file to label rows with: ``tokens`` (a ``tokens.txt`` or a model dir holding one, e.g.
    the teacher dir), else ``STORE/tokens.txt`` when present, else None (rows show unit ids)."""
    if tokens is not None:
        p = Path(tokens)
        return p / "tokens.txt" if p.is_dir() else p
    beside = Path(store_dir) / "tokens.txt"
    return beside if beside.is_file() else None


def _units_hash(path: Path) -> str | None:
    """The units hash a tokenizer would record for ``path`` (None when it is not a loadable inventory)."""
    from asr_kd.data.units import load_tokenizer
    from asr_kd.errors import UnitsError

    try:
        return load_tokenizer(path.parent).units_hash() if path.name == "tokens.txt" else None
    except (UnitsError, OSError, ValueError):
        return None


def wrap_title(parts: list[str], width_in: float, fontsize: float = 9.0) -> str:
    """Join ``parts`` into lines that fit a figure ``width_in`` inches wide (about 0.6 em per character).
    Each part starts a line; a long part (an utterance id) breaks after ``-``, ``_``, ``.``, ``/`` or a
    space, and mid-word only where a piece alone is longer than a line."""
    import re

    chars = max(20, int(width_in * 72 / (0.6 * fontsize)))
    lines: list[str] = []
    for part in parts:
        line = ""
        for piece in re.findall(r"[^-_./ ]*[-_./ ]|[^-_./ ]+", part) or [""]:
            while len(piece) > chars:  # one piece longer than a line
                if line:
                    lines.append(line.rstrip())
                    line = ""
                lines.append(piece[:chars])
                piece = piece[chars:]
            if len(line) + len(piece) > chars:
                lines.append(line.rstrip())
                line = ""
            line += piece
        lines.append(line.rstrip())
    return "\n".join(lines)


def plot_posteriorgram(reader: StoreReader, utt: str, out_png: str | os.PathLike, tokens: str | os.PathLike | None = None,
                       dpi: int = 100, max_rows: int = MAX_ROWS) -> Path:
    """Write a PNG posteriorgram of ``utt`` (``posteriorgram_figure``); returns its path."""
    fig = posteriorgram_figure(reader, utt, tokens=tokens, max_rows=max_rows)
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi)
    return out


def posteriorgram_figure(reader: StoreReader, utt: str, tokens: str | os.PathLike | None = None,
                         max_rows: int = MAX_ROWS) -> "Figure":
    """The posteriorgram of ``utt`` as a matplotlib ``Figure`` (Agg canvas attached).

    Rows are the units present in the utterance's stored top-k (at most ``max_rows``: those with the
    highest peak probability), labeled with their symbols from ``tokens`` (see ``resolve_tokens``;
    unit ids when there is none). The title is wrapped to the figure's width."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    ids, probs = reader.get_sparse(utt)
    frames, cols = np.nonzero(probs > 0)  # probability-0 entries pad ragged (v2) frames: not units shown
    units, rows = np.unique(ids[frames, cols], return_inverse=True)
    image = np.zeros((len(units), ids.shape[0]), dtype=np.float32)
    image[rows, frames] = probs[frames, cols]
    hidden = 0
    if len(units) > max_rows:
        keep = np.sort(np.argsort(-image.max(axis=1), kind="stable")[:max_rows])
        hidden = len(units) - len(keep)
        units, image = units[keep], image[keep]

    tokens_path = resolve_tokens(reader.store_dir, tokens)
    symbols = read_token_symbols(tokens_path) if tokens_path else {}
    if symbols:
        unknown = [int(u) for u in units if int(u) not in symbols]
        if unknown:
            raise StoreError(f"{tokens_path}: unit ids {unknown[:5]} of utterance {utt!r} are not in the tokens file; "
                             "is it the store's tokens.txt?")
        found = _units_hash(tokens_path)
        if found is not None and found != reader.meta.units_hash:
            log.warning("%s: units hash %s differs from the store's %s: the row labels may name the wrong units",
                        tokens_path, found, reader.meta.units_hash)
    labels = [symbols.get(int(u), str(int(u))) for u in units]

    m = reader.meta
    width = max(6.0, min(24.0, ids.shape[0] / 12))
    fig = Figure(figsize=(width, max(2.5, min(14.0, 0.22 * len(units) + 1.6))))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    mesh = ax.imshow(image, aspect="auto", origin="lower", interpolation="nearest", cmap="magma", vmin=0.0, vmax=1.0)
    ax.set_yticks(range(len(units)))
    ax.set_yticklabels(labels, fontsize=8 if len(units) <= 32 else 6)
    ax.set_xlabel(f"output frame ({m.frame_shift_ms:g} ms)")
    ylabel = "unit" if symbols else "unit id (pass --tokens for symbols)"
    if hidden:
        ylabel += f"\n({hidden} weaker units not shown)"
    ax.set_ylabel(ylabel, fontsize=8)
    ax.set_title(wrap_title([utt, f"top-{m.k} soft targets, T={m.temperature:g}, {m.quantization}"], width * 0.8),
                 fontsize=9)
    fig.colorbar(mesh, ax=ax, label="probability")
    fig.tight_layout()
    return fig
