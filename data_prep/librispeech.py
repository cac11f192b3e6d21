"""LibriSpeech -> one Kaldi data dir per subset (``train-clean-100`` -> ``OUT/train_clean_100``).

Layout read (as distributed on openslr.org, resource 12)::

    ROOT/LibriSpeech/<subset>/<speaker>/<chapter>/<speaker>-<chapter>-<nnnn>.flac
    ROOT/LibriSpeech/<subset>/<speaker>/<chapter>/<speaker>-<chapter>.trans.txt   (UTT TEXT, upper case)

``ROOT`` may also be the ``LibriSpeech`` folder itself. Utterance ids are the corpus ids
(``103-1240-0000``: already prefixed by the speaker and sortable), speakers the LibriSpeech speaker
ids, transcripts lowercased. ``utt2dur`` comes from the flac headers. With ``unlabeled=True`` the
transcripts go to ``text.ref`` (kept for analysis) and no ``text`` is written.

A transcript line without a flac, a flac without a transcript line, an unreadable/empty/multi-channel
flac or a transcript with unexpected characters is listed in ``OUT/<dir>/rejects.tsv`` — never
dropped silently.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from tqdm import tqdm

from asr_kd.data.datadir import DataDir, write_data_dir
from data_prep.common import (PrepareError, normalize_transcript, read_header, scp_path, summary_line, transcript_problem,
                              write_rejects)


@dataclasses.dataclass
class SubsetResult:
    """One written data dir: utterance count, audio seconds, rejects."""

    subset: str
    out_dir: Path
    utterances: int
    seconds: float
    rejects: int


def find_subset_dir(corpus_dir: Path, subset: str) -> Path:
    """``ROOT/LibriSpeech/<subset>`` or ``ROOT/<subset>``; a missing subset is a ``PrepareError``."""
    for cand in (corpus_dir / "LibriSpeech" / subset, corpus_dir / subset):
        if cand.is_dir():
            return cand
    raise PrepareError(
        f"LibriSpeech subset {subset!r} not found under {corpus_dir} (looked for {corpus_dir / 'LibriSpeech' / subset} "
        f"and {corpus_dir / subset}); download and untar it from https://www.openslr.org/12")


def read_transcripts(trans_path: Path) -> tuple[dict[str, str], list[tuple[str, str]]]:
    """``utt -> raw text`` of one ``*.trans.txt``, plus malformed lines as rejects."""
    texts: dict[str, str] = {}
    rejects: list[tuple[str, str]] = []
    for lineno, line in enumerate(trans_path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.strip().split(None, 1)
        if len(parts) != 2:
            rejects.append((f"{trans_path}:{lineno}", "transcript line has an id but no text"))
            continue
        if parts[0] in texts:
            rejects.append((f"{trans_path}:{lineno}", f"duplicate utterance id {parts[0]}"))
            continue
        texts[parts[0]] = parts[1]
    return texts, rejects


def prepare_subset(corpus_dir: str | Path, subset: str, out_root: str | Path, unlabeled: bool = False,
                   progress: bool = True) -> SubsetResult:
    """Write ``out_root/<subset with _>`` from one LibriSpeech subset."""
    src = find_subset_dir(Path(corpus_dir).resolve(), subset)
    out_dir = Path(out_root) / subset.replace("-", "_")
    wav_scp: dict[str, str] = {}
    utt2spk: dict[str, str] = {}
    text: dict[str, str] = {}
    utt2dur: dict[str, float] = {}
    rejects: list[tuple[str, str]] = []
    trans_files = sorted(src.glob("*/*/*.trans.txt"))
    if not trans_files:
        raise PrepareError(f"{src}: no <speaker>/<chapter>/*.trans.txt files; is this a LibriSpeech subset folder?")
    for trans in tqdm(trans_files, desc=f"librispeech {subset}", unit="chapter", disable=not progress):
        chapter_dir = trans.parent
        texts, bad = read_transcripts(trans)
        rejects.extend(bad)
        flacs = {p.stem: p for p in chapter_dir.glob("*.flac")}
        for stem in sorted(set(flacs) - set(texts)):
            rejects.append((str(flacs[stem]), "no transcript line in " + trans.name))
        for utt, raw in sorted(texts.items()):
            flac = flacs.get(utt)
            if flac is None:
                rejects.append((utt, f"audio file {chapter_dir / (utt + '.flac')} not found"))
                continue
            transcript = normalize_transcript(raw)
            problem = transcript_problem(transcript)
            if problem:
                rejects.append((utt, problem))
                continue
            header, reason = read_header(flac)
            if header is None:
                rejects.append((utt, f"{flac}: {reason}"))
                continue
            speaker = utt.split("-", 1)[0]
            if speaker != chapter_dir.parent.name:
                rejects.append((utt, f"utterance id does not start with its speaker folder {chapter_dir.parent.name!r}"))
                continue
            wav_scp[utt] = scp_path(flac, out_dir / "links", utt)
            utt2spk[utt] = speaker
            text[utt] = transcript
            utt2dur[utt] = header.seconds
    if not wav_scp:
        raise PrepareError(f"{src}: no usable utterances ({len(rejects)} rejects, e.g. {rejects[:2]})")
    data = DataDir(wav_scp=wav_scp, utt2spk=utt2spk, text=None if unlabeled else text, utt2dur=utt2dur,
                   extra={"text.ref": text} if unlabeled else {})
    write_data_dir(data, out_dir)
    n_rej = write_rejects(out_dir / "rejects.tsv", rejects)
    return SubsetResult(subset, out_dir, len(wav_scp), sum(utt2dur.values()), n_rej)


def prepare_librispeech(corpus_dir: str | Path, subsets: list[str], out_root: str | Path, unlabeled: bool = False,
                        progress: bool = True) -> tuple[list[SubsetResult], str]:
    """Prepare every subset; returns the results and the one-line summary."""
    t0 = time.time()
    results = [prepare_subset(corpus_dir, s, out_root, unlabeled, progress) for s in subsets]
    line = summary_line("librispeech", [r.out_dir for r in results], sum(r.utterances for r in results),
                        sum(r.seconds for r in results), sum(r.rejects for r in results))
    return results, f"{line}; {time.time() - t0:.0f} s"
