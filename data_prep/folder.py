"""Any folder of audio files -> an unlabeled Kaldi data dir (one utterance per file, no ``text``).

Every file whose extension is in ``exts`` (case-insensitive) is found recursively. The utterance id is
the path relative to the folder without its extension, ``/`` -> ``-``, ``-`` and other unsafe
characters -> ``_`` (``spk1/day 2/a.wav`` -> ``spk1-day_2-a``); ids that would collide (``a.wav`` and ``a.flac``)
get ``-<8 hex of sha1(relative path)>`` appended. With ``speaker_from_dir`` the speaker is the first
folder below the audio dir (the id starts with it, so utt2spk and spk2utt sort alike); otherwise each
utterance is its own speaker (Kaldi's convention when speakers are unknown). Unreadable, empty or
multi-channel files are listed in ``OUT/rejects.tsv`` with the reason and skipped. A file whose path
contains whitespace (which ``wav.scp`` cannot hold) is reached through a symlink ``OUT/links/<utt>.<ext>``.
"""

from __future__ import annotations

import time
from pathlib import Path

from tqdm import tqdm

from asr_kd.data.datadir import DataDir, write_data_dir
from data_prep.common import PrepareError, disambiguate, read_header, safe_id, scp_path, summary_line, write_rejects


def id_part(name: str) -> str:
    """One path component as an id part: safe characters, and ``-`` -> ``_`` because ``-`` joins parts.

    With no ``-`` inside a speaker id, ``<speaker>-...`` utterance ids sort in speaker order even
    when one speaker id is a prefix of another (``-`` sorts before every other allowed character).
    """
    return safe_id(name).replace("-", "_")


def utt_id_for(rel: Path) -> str:
    """Id of a relative path: parts made safe and joined with ``-``, extension dropped."""
    parts = list(rel.parts[:-1]) + [rel.stem]
    return "-".join(id_part(p) for p in parts)


def prepare_folder(audio_dir: str | Path, out_dir: str | Path, exts: list[str] | None = None,
                   speaker_from_dir: bool = False, progress: bool = True) -> tuple[DataDir, str]:
    """Write the data dir of every audio file under ``audio_dir``; returns it and the summary line."""
    t0 = time.time()
    root = Path(audio_dir).resolve()
    if not root.is_dir():
        raise PrepareError(f"audio dir not found: {root}")
    wanted = {"." + e.lower().lstrip(".") for e in (exts or ["wav", "flac"])}
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in wanted)
    if not files:
        raise PrepareError(f"{root}: no files with extension {sorted(wanted)} found")
    ids = disambiguate({str(p.relative_to(root)): utt_id_for(p.relative_to(root)) for p in files})

    out = Path(out_dir)
    wav_scp: dict[str, str] = {}
    utt2spk: dict[str, str] = {}
    utt2dur: dict[str, float] = {}
    rejects: list[tuple[str, str]] = []
    for path in tqdm(files, desc="folder", unit="file", disable=not progress):
        rel = path.relative_to(root)
        header, reason = read_header(path)
        if header is None:
            rejects.append((str(path), reason or "unreadable"))
            continue
        utt = ids[str(rel)]
        if speaker_from_dir and len(rel.parts) > 1:
            speaker = id_part(rel.parts[0])
        else:
            speaker = utt
        wav_scp[utt] = scp_path(path, out / "links", utt)
        utt2spk[utt] = speaker
        utt2dur[utt] = header.seconds
    if not wav_scp:
        raise PrepareError(f"{root}: none of the {len(files)} audio files is usable; e.g. {rejects[:2]}")
    data = DataDir(wav_scp=wav_scp, utt2spk=utt2spk, utt2dur=utt2dur)
    write_data_dir(data, out)
    n_rej = write_rejects(out / "rejects.tsv", rejects, header="path\treason")
    line = summary_line("folder", [out], len(wav_scp), sum(utt2dur.values()), n_rej, out / "rejects.tsv")
    return data, f"{line}; {time.time() - t0:.0f} s"
