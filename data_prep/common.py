"""Helpers shared by the corpus preparers: transcript normalization, safe ids, audio headers, rejects.

Every preparer writes absolute audio paths, never drops an input silently (a file it cannot use is a
line in ``rejects.tsv`` with the reason) and ends with a one-line summary.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
from pathlib import Path
from typing import Iterable

import soundfile as sf

from asr_kd.errors import AsrKdError

_SPACE_RE = re.compile(r"\s+")
_TRANSCRIPT_OK = re.compile(r"^[a-z']+( [a-z']+)*$")
_UNSAFE_ID_CHARS = re.compile(r"[^A-Za-z0-9_.-]+")


class PrepareError(AsrKdError):
    """A corpus folder is missing, has an unexpected layout, or yields no usable audio."""


def normalize_transcript(text: str) -> str:
    """Lowercase and collapse whitespace. The result is checked with ``transcript_problem``."""
    return _SPACE_RE.sub(" ", text.strip().lower())


def transcript_problem(text: str) -> str | None:
    """Why a normalized transcript is unusable (empty, characters outside ``a-z'`` and space), or None."""
    if not text:
        return "empty transcript"
    if _TRANSCRIPT_OK.match(text):
        return None
    bad = sorted({c for c in text if not (c.isascii() and (c.islower() or c in "' "))})
    return f"transcript has characters outside a-z, apostrophe and space: {''.join(bad)!r}"


def safe_id(text: str) -> str:
    """``text`` with every run of characters outside ``A-Za-z0-9_.-`` replaced by ``_`` (Kaldi ids
    must not contain whitespace; we also avoid shell-special characters)."""
    out = _UNSAFE_ID_CHARS.sub("_", text).strip("_")
    return out or "_"


def disambiguate(ids: dict[str, str]) -> dict[str, str]:
    """``key -> id`` with colliding ids made unique by appending ``-<8 hex of sha1(key)>``.

    Deterministic and independent of input order: every member of a colliding group gets a suffix.
    """
    groups: dict[str, list[str]] = {}
    for key, value in ids.items():
        groups.setdefault(value, []).append(key)
    out: dict[str, str] = {}
    for value, keys in groups.items():
        if len(keys) == 1:
            out[keys[0]] = value
        else:
            for key in keys:
                out[key] = f"{value}-{hashlib.sha1(key.encode('utf-8')).hexdigest()[:8]}"
    if len(set(out.values())) != len(out):  # only possible with a sha1 prefix collision
        raise PrepareError("could not make utterance ids unique; rename the colliding files")
    return out


@dataclasses.dataclass(frozen=True)
class AudioHeader:
    """What a file header says: ``frames`` in samples per channel, ``sample_rate`` in Hz."""

    frames: int
    sample_rate: int
    channels: int

    @property
    def seconds(self) -> float:
        return self.frames / self.sample_rate


def read_header(path: str | os.PathLike) -> tuple[AudioHeader | None, str | None]:
    """``(header, None)`` for a usable mono file, ``(None, reason)`` otherwise (unreadable, empty,
    multi-channel); reasons match ``asr_kd.errors.AudioError.reason`` names."""
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError, OSError) as exc:
        return None, f"unreadable: {' '.join(str(exc).split())}"
    if info.frames <= 0 or info.samplerate <= 0:
        return None, "empty: 0 samples"
    if info.channels != 1:
        return None, f"multi_channel: {info.channels} channels; downmix with 'sox in.wav -c 1 out.wav'"
    return AudioHeader(int(info.frames), int(info.samplerate), 1), None


def scp_path(path: str | os.PathLike, links_dir: Path, name: str) -> str:
    """An absolute path for ``wav.scp``. A path with whitespace cannot be written there (fields are
    whitespace-separated), so such a file gets a symlink ``links_dir/<name><suffix>`` and the link is
    used instead; the link is replaced if it exists."""
    path = Path(path).resolve()
    if not any(c.isspace() for c in str(path)):
        return str(path)
    links_dir = links_dir.resolve()
    if any(c.isspace() for c in str(links_dir)):
        raise PrepareError(f"{path}: has whitespace in its path and so does the output folder {links_dir}; "
                           "use an output folder without spaces")
    links_dir.mkdir(parents=True, exist_ok=True)
    link = links_dir / f"{name}{path.suffix}"
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(path)
    return str(link)


def write_rejects(path: Path, rows: Iterable[tuple[str, str]], header: str = "item\treason") -> int:
    """Write ``item<TAB>reason`` lines (sorted) to ``path``; remove a stale file when there are none.
    Returns the number of rejects."""
    rows = sorted(rows)
    if not rows:
        path.unlink(missing_ok=True)
        return 0
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(header + "\n")
        for item, reason in rows:
            fh.write(f"{item}\t{' '.join(reason.split())}\n")
    os.replace(tmp, path)
    return len(rows)


def summary_line(command: str, dirs: list[Path], utterances: int, seconds: float, rejects: int,
                 rejects_file: Path | None = None) -> str:
    """The one-line summary every ``prepare`` command ends with."""
    where = ", ".join(str(d) for d in dirs)
    extra = f" (see {rejects_file})" if rejects and rejects_file is not None else ""
    return (f"prepare {command}: wrote {len(dirs)} data dir(s) [{where}]: {utterances} utterances, "
            f"{seconds / 3600.0:.2f} h, {rejects} rejects{extra}")
