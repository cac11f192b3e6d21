"""Speed perturbation of a data dir, as Kaldi's ``utils/data/perturb_data_dir_speed_3way.sh``, with the audio
written out instead of piped through sox.

Kaldi's script writes ``sp0.9-REC sox -t wav REC.wav -t wav - speed 0.9 |`` into ``wav.scp`` and every
reader runs that command. asr-kd refuses shell commands from data files unless ``--allow-pipes`` (README,
Security), so each perturbed recording is rendered once: ``torchaudio.functional.speed`` resamples by
``1/factor`` — tempo and pitch change together, as with sox's ``speed`` — and the result is written as
16-bit FLAC at the data's sample rate. Factor 1.0 reuses the original audio.

Conventions (those of Kaldi's scripts, so Kaldi users find what they expect):

- utterance, speaker and recording ids get the prefix ``sp<factor>-`` with the factor as written
  (``sp0.9-``, ``sp1.0-``, ``sp1.1-``); every utterance of factor 1.0 is prefixed too;
- ``segments`` start/end times and ``utt2dur`` are divided by the factor (durations in seconds);
  ``text`` and the extra per-utterance files (``text.ref``) are copied under the new ids;
- ``OUT`` is the union of the factors (what a recipe trains on, Kaldi's ``data/train_sp``), and
  ``OUT/parts/sp<factor>`` each factor's own data dir; the rendered audio lies under
  ``OUT/parts/sp<factor>/audio/``.

A recording that cannot be read is listed in ``OUT/rejects.tsv`` with the reason and its utterances left
out of that factor; the others go on. A rerun (``--force``: the output dir is no longer empty) renders
only what is missing (files appear by rename, so one that exists is complete).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import multiprocessing
import os
from pathlib import Path

from asr_kd.data.datadir import AudioSource, DataDir, Segment, combine_data_dirs, read_data_dir, write_data_dir
from asr_kd.errors import AsrKdError, AudioError

PARTS = "parts"
MIN_FACTOR, MAX_FACTOR = 0.5, 2.0


@dataclasses.dataclass
class PerturbSummary:
    out: Path
    factors: list[str]
    utterances: int
    seconds: float
    rendered: int  # recordings rendered by this call
    reused: int  # recordings found already rendered
    rejects: int  # recordings (x factor) that could not be read

    def line(self) -> str:
        rej = f", {self.rejects} rejected (see {self.out / 'rejects.tsv'})" if self.rejects else ""
        return (f"{self.out}: speed-perturbed x {', '.join(self.factors)}: {self.utterances} utterances, "
                f"{self.seconds / 3600:.3f} h; rendered {self.rendered} recordings, reused {self.reused}{rej}")


def parse_factors(text: str) -> list[str]:
    """``"0.9,1.0,1.1"`` -> ``["0.9", "1.0", "1.1"]`` (kept as written: they become id prefixes)."""
    factors = [f.strip() for f in text.split(",") if f.strip()]
    if not factors:
        raise AsrKdError("--factors: give comma-separated speed factors, e.g. 0.9,1.0,1.1")
    for f in factors:
        try:
            value = float(f)
        except ValueError:
            raise AsrKdError(f"--factors: {f!r} is not a number (e.g. 0.9,1.0,1.1)") from None
        if not MIN_FACTOR <= value <= MAX_FACTOR:
            raise AsrKdError(f"--factors: {f} is outside [{MIN_FACTOR}, {MAX_FACTOR}]")
    if len({float(f) for f in factors}) != len(factors):
        raise AsrKdError(f"--factors: {text!r} names a factor twice")
    return factors


def _render(rec: str, path: str, out_path: str, factor: float, sample_rate: int) -> tuple[str, int, str | None]:
    """Render one recording at ``factor``; returns ``(rec, samples, error)``."""
    import soundfile as sf
    import torch
    import torchaudio

    from asr_kd.data.audio import load_audio

    torch.set_num_threads(1)
    try:
        wave = load_audio(AudioSource(rec, path), sample_rate=sample_rate)
    except AudioError as exc:
        return rec, 0, f"{exc.reason}: {exc.detail}"
    fast, _ = torchaudio.functional.speed(wave.unsqueeze(0), sample_rate, factor)
    samples = fast.squeeze(0).clamp(-1.0, 1.0).numpy()
    target = Path(out_path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    sf.write(tmp, samples, sample_rate, subtype="PCM_16", format="FLAC")
    os.replace(tmp, target)
    return rec, int(len(samples)), None


def _factor_dir(data: DataDir, factor: str, wav_scp: dict[str, str], seconds: dict[str, float],
                bad_recordings: set[str]) -> DataDir:
    """``data`` under ``sp<factor>-`` ids: ``wav_scp`` the new recordings, ``seconds`` their durations."""
    f = float(factor)
    p = f"sp{factor}-"
    keep = [u for u in data.utt_ids
            if (data.segments[u].recording if data.segments is not None else u) not in bad_recordings]
    kept = set(keep)
    segments = None
    if data.segments is not None:
        segments = {p + u: Segment(p + data.segments[u].recording, data.segments[u].start / f, data.segments[u].end / f)
                    for u in keep}
    utt2dur = {}
    for u in keep:
        if segments is not None:
            utt2dur[p + u] = segments[p + u].end - segments[p + u].start
        elif data.duration(u) is not None:
            utt2dur[p + u] = data.duration(u) / f
        else:
            utt2dur[p + u] = seconds[u]
    return DataDir(
        wav_scp={p + r: wav_scp[r] for r in wav_scp if r not in bad_recordings},
        utt2spk={p + u: p + data.utt2spk[u] for u in keep},
        segments=segments,
        text=None if data.text is None else {p + u: data.text[u] for u in keep},
        utt2dur=utt2dur,
        extra={name: {p + u: v for u, v in table.items() if u in kept} for name, table in data.extra.items()},
    )


def perturb_speed(data_dir: str, out_dir: str, factors: list[str], jobs: int = 1, sample_rate: int = 16000,
                  progress: bool = False, allow_pipes: bool = False) -> PerturbSummary:
    """Write the speed-perturbed copies of ``data_dir`` (see the module docstring) and their union."""
    from tqdm import tqdm

    from asr_kd.data.audio import audio_duration

    data = read_data_dir(data_dir, allow_pipes=allow_pipes)
    out = Path(out_dir)
    recs = dict(data.wav_scp)  # recording id (= utterance id without segments) -> wav.scp entry
    todo: list[tuple[str, str, str, float]] = []  # (factor, rec, source, target)
    targets: dict[str, dict[str, str]] = {}
    for factor in factors:
        if float(factor) == 1.0:
            targets[factor] = dict(recs)
            continue
        audio = (out / PARTS / f"sp{factor}" / "audio").resolve()
        targets[factor] = {r: str(audio / f"{r}.flac") for r in recs}
        todo.extend((factor, r, recs[r], targets[factor][r]) for r in recs if not Path(targets[factor][r]).is_file())
    reused = sum(1 for f in factors if float(f) != 1.0 for r in recs if Path(targets[f][r]).is_file())
    samples: dict[tuple[str, str], int] = {}
    errors: dict[tuple[str, str], str] = {}
    ctx = multiprocessing.get_context("spawn")  # no forked torch state in the workers
    with concurrent.futures.ProcessPoolExecutor(max_workers=max(1, jobs), mp_context=ctx) as pool:
        futures = {pool.submit(_render, r, src, dst, float(f), sample_rate): (f, r) for f, r, src, dst in todo}
        bar = tqdm(total=len(futures), desc="perturb-speed", unit="rec", disable=not progress, dynamic_ncols=True)
        for fut in concurrent.futures.as_completed(futures):
            f, r = futures[fut]
            _, n, err = fut.result()
            if err is None:
                samples[(f, r)] = n
            else:
                errors[(f, r)] = err
            bar.update(1)
        bar.close()
    parts = []
    for factor in factors:
        f = float(factor)
        bad = {r for (g, r) in errors if g == factor}
        seconds: dict[str, float] = {}
        if data.segments is None:
            for u in data.utt_ids:
                if u in bad or data.duration(u) is not None:
                    continue
                if f == 1.0:
                    try:
                        seconds[u] = audio_duration(recs[u], allow_pipes)
                    except AudioError as exc:
                        errors[(factor, u)] = f"{exc.reason}: {exc.detail}"
                        bad.add(u)
                elif (factor, u) in samples:
                    seconds[u] = samples[(factor, u)] / sample_rate
                else:  # rendered by an earlier run
                    seconds[u] = audio_duration(targets[factor][u])
        part = _factor_dir(data, factor, targets[factor], seconds, bad)
        write_data_dir(part, out / PARTS / f"sp{factor}")
        parts.append(part)
    union = combine_data_dirs(parts)
    write_data_dir(union, out)
    rejects = out / "rejects.tsv"
    if errors:
        rejects.write_text("".join(f"sp{f}-{r}\t{reason}\n" for (f, r), reason in sorted(errors.items())),
                           encoding="utf-8")
    else:
        rejects.unlink(missing_ok=True)
    return PerturbSummary(out, list(factors), len(union), union.total_seconds(), len(samples), reused, len(errors))


__all__ = ["PerturbSummary", "parse_factors", "perturb_speed"]
