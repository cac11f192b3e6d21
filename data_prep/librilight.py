"""LibriLight-style long unlabeled recordings -> a segmented Kaldi data dir (no ``text``).

Layout read (as in the LibriLight ``small``/``medium``/``large`` tarballs)::

    ROOT/[<subset>/]<speaker>/<book>/<file>.flac        (one long recording, often 10-30 min)

Each recording is one ``wav.scp`` entry (id ``<speaker>-<book>-<file>``, made safe); speech is found by
energy with ``librosa.effects.split`` (``top_db`` below the loudest 50 ms frame of the file, 10 ms hop)
on the file's native sample rate, read with soundfile (``librosa.load`` would resample to 22050 Hz).
Adjacent voiced intervals are merged while the merged segment stays within ``max_seconds`` and the
pause between them is at most ``max_pause`` seconds; an interval longer than ``max_seconds`` is cut at
its quietest 10 ms frame (keeping both parts at least ``min_seconds``). Segments get ``pad`` seconds
of context on each side (never overlapping their neighbours) and segments shorter than
``min_seconds`` are skipped and listed in ``rejects.tsv``. Segment ids are
``<recording>-<start cs:07d>-<end cs:07d>`` (centiseconds), so they sort by speaker and time. A file
whose path contains whitespace (which ``wav.scp`` cannot hold) is reached through a symlink
``OUT/links/<recording>.flac``.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import multiprocessing
import os
import time
from pathlib import Path

import librosa
import numpy as np
import soundfile as sf
from tqdm import tqdm

from asr_kd.data.datadir import DataDir, Segment, write_data_dir
from data_prep.common import PrepareError, disambiguate, read_header, safe_id, scp_path, summary_line, write_rejects

FRAME_S = 0.050  # analysis frame, seconds
HOP_S = 0.010  # analysis hop, seconds
SILENT_RMS = 10 ** (-70 / 20)  # a file whose loudest frame is below -70 dBFS has no speech


@dataclasses.dataclass(frozen=True)
class SegmentOptions:
    """Segmentation settings; all in seconds except ``top_db`` (dB below the file's loudest frame)."""

    max_seconds: float = 20.0
    min_seconds: float = 1.0
    top_db: float = 30.0
    max_pause: float = 3.0
    pad: float = 0.1

    def __post_init__(self) -> None:
        if not (0 < self.min_seconds and 2 * self.min_seconds <= self.max_seconds):
            raise PrepareError(f"need 0 < --min-seconds and 2 x min-seconds <= --max-seconds, got "
                               f"min {self.min_seconds}, max {self.max_seconds}")
        if self.top_db <= 0 or self.max_pause < 0 or self.pad < 0:
            raise PrepareError(f"need --top-db > 0, max_pause >= 0, pad >= 0; got {self.top_db}, {self.max_pause}, {self.pad}")


def _split_long(start: int, end: int, rms: np.ndarray, hop: int, max_len: int, min_len: int) -> list[tuple[int, int]]:
    """Cut ``[start, end)`` (samples) into pieces of at most ``max_len`` samples, each cut at the
    quietest frame that leaves both sides at least ``min_len`` samples."""
    pieces = []
    while end - start > max_len:
        lo = start + min_len
        hi = min(start + max_len, end - min_len)
        f_lo, f_hi = -(-lo // hop), min(hi // hop, len(rms) - 1)  # frames starting in [lo, hi]
        if f_hi < f_lo:  # window narrower than one hop: cut at the limit
            cut = hi
        else:
            cut = int((f_lo + int(np.argmin(rms[f_lo: f_hi + 1]))) * hop)
        pieces.append((start, cut))
        start = cut
    pieces.append((start, end))
    return pieces


def segment_signal(y: np.ndarray, sr: int, opts: SegmentOptions) -> tuple[list[tuple[float, float]], list[tuple[float, float]]]:
    """Speech segments of a mono signal: ``(kept, too_short)`` lists of ``(start, end)`` seconds."""
    frame, hop = int(round(FRAME_S * sr)), int(round(HOP_S * sr))
    if len(y) < frame:
        return [], [(0.0, len(y) / sr)] if len(y) else []
    rms = librosa.feature.rms(y=y, frame_length=frame, hop_length=hop, center=False)[0]
    if rms.max() < SILENT_RMS:  # split() is relative to the loudest frame: digital silence would pass
        return [], []
    intervals = librosa.effects.split(y, top_db=opts.top_db, frame_length=frame, hop_length=hop)
    max_len, min_len = int(opts.max_seconds * sr), int(opts.min_seconds * sr)
    pieces: list[tuple[int, int]] = []
    for s, e in intervals:
        pieces.extend(_split_long(int(s), int(min(e, len(y))), rms, hop, max_len, min_len))
    merged: list[list[int]] = []
    for s, e in pieces:
        if merged and e - merged[-1][0] <= max_len and s - merged[-1][1] <= opts.max_pause * sr:
            merged[-1][1] = e
        else:
            merged.append([s, e])
    pad = int(opts.pad * sr)
    kept, short = [], []
    for i, (s, e) in enumerate(merged):
        room = max(0, (max_len - (e - s)) // 2)
        left_gap = s - (merged[i - 1][1] if i else 0)
        right_gap = (merged[i + 1][0] if i + 1 < len(merged) else len(y)) - e
        s2 = s - min(pad, room, left_gap if i == 0 else left_gap // 2)
        e2 = e + min(pad, room, right_gap if i + 1 == len(merged) else right_gap // 2)
        # times on a 10 ms grid, rounded inwards so a segment never grows past max_seconds or the file
        seg = (float(np.ceil(s2 * 100 / sr - 1e-6)) / 100, float(np.floor(e2 * 100 / sr + 1e-6)) / 100)
        (kept if (seg[1] - seg[0]) >= opts.min_seconds - 1e-9 else short).append(seg)
    return kept, short


@dataclasses.dataclass
class RecordingResult:
    rec_id: str
    path: str
    speaker: str
    segments: list[tuple[float, float]]
    rejects: list[tuple[str, str]]


def _segment_file(rec_id: str, path: str, speaker: str, opts: SegmentOptions) -> RecordingResult:
    header, reason = read_header(path)
    if header is None:
        return RecordingResult(rec_id, path, speaker, [], [(path, reason or "unreadable")])
    try:
        y, sr = sf.read(path, dtype="float32")
    except (sf.LibsndfileError, RuntimeError) as exc:
        return RecordingResult(rec_id, path, speaker, [], [(path, f"unreadable: {exc}")])
    if not np.all(np.isfinite(y)):
        return RecordingResult(rec_id, path, speaker, [], [(path, "nan_or_inf: audio has NaN or inf samples")])
    kept, short = segment_signal(y, sr, opts)
    rejects = [(f"{rec_id} {s:.2f}-{e:.2f}", f"segment shorter than --min-seconds {opts.min_seconds}") for s, e in short]
    if not kept:
        rejects.append((path, f"no speech segment of at least {opts.min_seconds} s found (top_db {opts.top_db})"))
    return RecordingResult(rec_id, path, speaker, kept, rejects)


def find_recordings(corpus_dir: Path, ext: str = "flac") -> tuple[dict[str, tuple[str, str]], list[tuple[str, str]]]:
    """``rec_id -> (absolute path, speaker)`` of every ``<speaker>/<book>/<file>.<ext>`` under ``corpus_dir``."""
    ids: dict[str, str] = {}
    speakers: dict[str, str] = {}
    rejects: list[tuple[str, str]] = []
    for path in sorted(corpus_dir.rglob(f"*.{ext}")):
        rel = path.relative_to(corpus_dir).parts
        if len(rel) < 3:
            rejects.append((str(path), "not in the <speaker>/<book>/<file> layout; cannot tell its speaker"))
            continue
        # no "-" inside parts: "-" separates them, and keeps <speaker>-... ids in speaker order
        speaker, book, stem = (safe_id(p).replace("-", "_") for p in (rel[-3], rel[-2], path.stem))
        key = str(path)
        ids[key] = f"{speaker}-{book}-{stem}"
        speakers[key] = speaker
    unique = disambiguate(ids)
    return {rec: (key, speakers[key]) for key, rec in unique.items()}, rejects


def prepare_librilight(corpus_dir: str | Path, out_dir: str | Path, opts: SegmentOptions = SegmentOptions(),
                       jobs: int | None = None, progress: bool = True) -> tuple[DataDir, str]:
    """Segment every recording under ``corpus_dir`` and write the data dir; returns it and the summary."""
    t0 = time.time()
    root = Path(corpus_dir).resolve()
    if not root.is_dir():
        raise PrepareError(f"corpus dir not found: {root}")
    recs, rejects = find_recordings(root)
    if not recs:
        raise PrepareError(f"{root}: no <speaker>/<book>/*.flac recordings found ({len(rejects)} files in another layout)")
    jobs = max(1, min(jobs or os.cpu_count() or 1, len(recs)))
    results: list[RecordingResult] = []
    bar = tqdm(total=len(recs), desc="librilight", unit="rec", disable=not progress)
    if jobs == 1:
        for rec, (path, spk) in sorted(recs.items()):
            results.append(_segment_file(rec, path, spk, opts))
            bar.update(1)
    else:
        ctx = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool:
            futs = [pool.submit(_segment_file, rec, path, spk, opts) for rec, (path, spk) in sorted(recs.items())]
            for fut in concurrent.futures.as_completed(futs):
                results.append(fut.result())
                bar.update(1)
    bar.close()

    wav_scp: dict[str, str] = {}
    segments: dict[str, Segment] = {}
    utt2spk: dict[str, str] = {}
    utt2dur: dict[str, float] = {}
    out = Path(out_dir)
    for res in sorted(results, key=lambda r: r.rec_id):
        rejects.extend(res.rejects)
        if not res.segments:
            continue
        wav_scp[res.rec_id] = scp_path(res.path, out / "links", res.rec_id)
        for start, end in res.segments:
            seg_id = f"{res.rec_id}-{int(round(start * 100)):07d}-{int(round(end * 100)):07d}"
            segments[seg_id] = Segment(res.rec_id, start, end)
            utt2spk[seg_id] = res.speaker
            utt2dur[seg_id] = round(end - start, 3)
    if not segments:
        raise PrepareError(f"{root}: no speech segments found in {len(recs)} recording(s); see the rejects: {rejects[:3]}")
    data = DataDir(wav_scp=wav_scp, utt2spk=utt2spk, segments=segments, utt2dur=utt2dur)
    write_data_dir(data, out)
    n_rej = write_rejects(out / "rejects.tsv", rejects)
    line = summary_line("librilight", [out], len(segments), sum(utt2dur.values()), n_rej, out / "rejects.tsv")
    return data, f"{line}; {len(wav_scp)} recordings; {time.time() - t0:.0f} s"
