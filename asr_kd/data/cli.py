"""``asr-kd data``: validate, combine, subset, split and speed-perturb Kaldi-style data dirs; CMVN; fbank cache.

::

    asr-kd data validate DIR [DIR ...] [--no-check-audio] [--allow-pipes] [--durations]
    asr-kd data combine --out OUT DIR DIR ...
    asr-kd data subset  --out OUT DIR (--utt-list FILE | --first N | --random N | --hours H [--seed S])
    asr-kd data split   --out-dirs A B ... --fractions 0.9 0.1 ... DIR [--seed S]
    asr-kd data cmvn    --out cmvn.json DIR [--max-utts N] [--seed S] [--num-mel-bins F] [--sample-rate R]
    asr-kd data fbank   DIR [DIR ...] [--config TRAIN.yaml]     (feature cache: DIR/feats.scp + DIR/fbank/)
    asr-kd data perturb-speed DIR --out OUT [--factors 0.9,1.0,1.1] [--jobs N]   (Kaldi's 3-way speed perturbation)
    asr-kd data shard   DIR --out SHARD_DIR [--shard-size N] [--shard-seconds S]   (tar shards + index; asr_kd.data.shards)

``validate`` exits 1 if any dir is invalid (each problem printed on stderr as ``file:line: message``),
0 otherwise. The other commands exit 2 with the error on bad input (``asr_kd.cli``).
"""

from __future__ import annotations

import argparse
import os
import random
import sys
from pathlib import Path

from asr_kd.data.audio import MAX_SEGMENT_OVERSHOOT_S, audio_duration
from asr_kd.data.datadir import (
    DataDir,
    combine_data_dirs,
    is_pipe,
    read_data_dir,
    split_by_speaker,
    write_data_dir,
)
from asr_kd.errors import AsrKdError, AudioError, DataDirError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="data_command", metavar="SUBCOMMAND", required=True)

    p = sub.add_parser("validate", help="check data dirs; print utterances, hours, speakers")
    p.add_argument("dirs", nargs="+", metavar="DIR")
    p.add_argument("--no-check-audio", dest="check_audio", action="store_false",
                   help="do not open the audio files (by default each file must exist and have a readable header)")
    p.add_argument("--allow-pipes", action="store_true", help="accept 'command |' entries in wav.scp")
    p.add_argument("--durations", action="store_true",
                   help="write utt2dur (seconds, from segments or the audio headers) where it is missing")

    p = sub.add_parser("combine", help="union of data dirs with disjoint utterance ids")
    p.add_argument("--out", required=True, help="output data dir")
    p.add_argument("--force", action="store_true", help="overwrite an existing data dir at --out")
    p.add_argument("dirs", nargs="+", metavar="DIR")

    p = sub.add_parser("subset", help="a subset of the utterances of a data dir")
    p.add_argument("--out", required=True, help="output data dir")
    p.add_argument("--force", action="store_true", help="overwrite an existing data dir at --out")
    how = p.add_mutually_exclusive_group(required=True)
    how.add_argument("--utt-list", help="file with one utterance id per line (first field)")
    how.add_argument("--first", type=int, metavar="N", help="the first N utterances in sorted id order")
    how.add_argument("--random", type=int, metavar="N", help="N utterances drawn at random (see --seed)")
    how.add_argument("--hours", type=float, metavar="H",
                     help="the fewest utterances, in a random order fixed by --seed, that reach H hours of audio "
                     "(needs utt2dur): subsets of one dir and seed are nested, the smaller inside the larger")
    p.add_argument("--seed", type=int, default=0, help="random seed for --random and --hours (default 0)")
    p.add_argument("dir", metavar="DIR")

    p = sub.add_parser("split", help="split into speaker-disjoint parts by utterance fractions")
    p.add_argument("--out-dirs", nargs="+", required=True, metavar="OUT")
    # strings, and DIR optional: argparse lets a trailing nargs="+" option swallow the positional DIR
    # ('--fractions 0.9 0.1 DIR'); _split_args takes it back
    p.add_argument("--fractions", nargs="+", required=True, metavar="F", help="one fraction of utterances per dir")
    p.add_argument("--seed", type=int, default=0, help="speaker shuffle seed (default 0)")
    p.add_argument("--force", action="store_true", help="overwrite existing data dirs at --out-dirs")
    p.add_argument("dir", metavar="DIR", nargs="?")

    p = sub.add_parser("cmvn", help="global CMVN stats (cmvn.json) of the fbank of a data dir")
    p.add_argument("--out", required=True, help="output JSON file")
    p.add_argument("--max-utts", type=int, default=None, help="use at most N random utterances")
    p.add_argument("--seed", type=int, default=0, help="seed for --max-utts sampling (default 0)")
    p.add_argument("--num-mel-bins", type=int, default=80)
    p.add_argument("--sample-rate", type=int, default=16000, help="Hz; audio is resampled to this")
    p.add_argument("--allow-pipes", action="store_true", help="accept 'command |' entries in wav.scp")
    p.add_argument("dir", metavar="DIR")


    p = sub.add_parser("fbank", help="feature cache: fbank of every utterance once, reused by training "
                       "(DIR/feats.scp, DIR/fbank/feats.ark, Kaldi layout)")
    p.add_argument("--config", help="training YAML whose fbank section to use (default: the default fbank config)")
    p.add_argument("--allow-pipes", action="store_true", help="accept 'command |' entries in wav.scp")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("dirs", metavar="DIR", nargs="+")


    p = sub.add_parser("perturb-speed", help="speed-perturbed copies (Kaldi's sp0.9-/sp1.0-/sp1.1- ids) and their "
                       "union, the audio rendered to FLAC (asr_kd.data.perturb)")
    p.add_argument("--out", required=True, help="output data dir: the union; each factor's dir under OUT/parts/")
    p.add_argument("--factors", default="0.9,1.0,1.1", help="comma-separated speed factors (default 0.9,1.0,1.1)")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="parallel render processes (default: all cores)")
    p.add_argument("--sample-rate", type=int, default=16000, help="Hz of the rendered audio (input is resampled to it)")
    p.add_argument("--force", action="store_true", help="write into a non-empty --out (rendered audio there is reused)")
    p.add_argument("--allow-pipes", action="store_true", help="accept 'command |' entries in wav.scp")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("dir", metavar="DIR")

    p = sub.add_parser("shard", help="pack the audio of a data dir into tar shards with a per-shard index "
                       "(WebDataset/lhotse Shar style, random access by offset); 'asr-kd label --data SHARD_DIR' reads them")
    p.add_argument("--out", required=True, help="shard dir: shard-NNNNNN.tar + .index.json, manifest.json, rejects.tsv; "
                   "rerunning resumes it")
    p.add_argument("--shard-size", type=int, default=None,
                   help="at most N utterances per shard (default 1000 when --shard-seconds is not given)")
    p.add_argument("--shard-seconds", type=float, default=None, help="at most S seconds of audio per shard")
    p.add_argument("--allow-pipes", action="store_true", help="accept 'command |' entries in wav.scp (run once, here)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("dir", metavar="DIR")


def run(args: argparse.Namespace) -> int:
    return {
        "shard": _shard,
        "perturb-speed": _perturb_speed,
        "fbank": _fbank,
        "validate": _validate,
        "combine": _combine,
        "subset": _subset,
        "split": _split,
        "cmvn": _cmvn,
    }[args.data_command](args)


# ------------------------------------------------------------------------------------------ helpers


def _summary(data: DataDir, seconds: float | None) -> str:
    hours = "? h" if seconds is None else f"{seconds / 3600:.4g} h"
    kind = "labeled" if data.has_text else "unlabeled"
    return f"{len(data)} utts, {hours}, {len(data.spk2utt)} speakers, {kind}"


def _write_utt2dur(path: Path, durations: dict[str, float]) -> None:
    """``utt2dur`` in the format ``write_data_dir`` uses (sorted, 3 decimals), atomically."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        for utt in sorted(durations):
            fh.write(f"{utt} {durations[utt]:.3f}\n")
    os.replace(tmp, path)


def _check_out(path: str, force: bool) -> None:
    out = Path(path)
    if out.exists() and any(out.iterdir()) and not force:
        raise DataDirError("output dir exists and is not empty; pass --force to overwrite it", str(out))


def _audio_seconds(data: DataDir, read_headers: bool, allow_pipes: bool) -> tuple[dict[str, float], list[str]]:
    """Duration of every utterance it can find (utt2dur, segments, else the audio header) and the
    problems found. With ``read_headers`` every recording's header is read (``sf.info``: proves the
    file is audio, not just that it exists) and segments are checked against the recording's length."""
    # a validated data dir is sorted with one entry per line, so line number = sorted position + 1
    root = data.path if data.path is not None else Path(".")
    problems: list[str] = []
    rec_seconds: dict[str, float] = {}
    need_headers = read_headers or any(data.duration(u) is None for u in data.utt_ids)
    if need_headers:
        for lineno, (rec, entry) in enumerate(sorted(data.wav_scp.items()), start=1):
            if is_pipe(entry) and not allow_pipes:
                continue
            try:
                rec_seconds[rec] = audio_duration(entry, allow_pipes=allow_pipes)
            except AudioError as exc:
                problems.append(f"{root / 'wav.scp'}:{lineno}: recording {rec!r}: {exc.reason}: {exc.detail}")
    durations: dict[str, float] = {}
    for lineno, utt in enumerate(data.utt_ids, start=1):
        known = data.duration(utt)
        if data.segments is not None:
            seg = data.segments[utt]
            length = rec_seconds.get(seg.recording)
            if length is not None and seg.end > length + MAX_SEGMENT_OVERSHOOT_S:
                problems.append(f"{root / 'segments'}:{lineno}: segment {utt!r} ends at {seg.end} s but recording "
                                f"{seg.recording!r} is only {length:.3f} s long")
                continue
        elif known is None:
            known = rec_seconds.get(utt)
        if known is not None:
            durations[utt] = known
    return durations, problems


# ------------------------------------------------------------------------------------------ commands


def _validate(args: argparse.Namespace) -> int:
    status = 0
    for d in args.dirs:
        try:
            data = read_data_dir(d, check_audio=args.check_audio, allow_pipes=args.allow_pipes)
        except DataDirError as exc:
            print(f"{d}: INVALID: {exc}", file=sys.stderr)
            status = 1
            continue
        seconds: float | None = None
        if args.check_audio or args.durations:
            # reading each header also proves the file is audio (sf.info), not just that it exists
            durations, problems = _audio_seconds(data, args.check_audio, args.allow_pipes)
            if problems:
                shown = "\n  ".join(problems[:20])
                more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
                print(f"{d}: INVALID: {len(problems)} audio problem(s):\n  {shown}{more}", file=sys.stderr)
                status = 1
                continue
            if len(durations) == len(data):
                seconds = sum(durations.values())
            if args.durations and data.utt2dur is None:
                if len(durations) != len(data):
                    print(f"{d}: cannot write utt2dur: {len(data) - len(durations)} utterance(s) are pipes "
                          f"(pass --allow-pipes to run them)", file=sys.stderr)
                    status = 1
                    continue
                _write_utt2dur(Path(d) / "utt2dur", durations)
                print(f"{d}: wrote utt2dur ({len(durations)} utts)")
        elif all(data.duration(u) is not None for u in data.utt_ids):
            seconds = data.total_seconds()
        print(f"{d}: OK ({_summary(data, seconds)})")
    return status


def _combine(args: argparse.Namespace) -> int:
    if len(args.dirs) < 2:
        raise DataDirError("combine needs at least two data dirs")
    _check_out(args.out, args.force)
    # allow_pipes=True here only lets pipe entries through to the output; nothing is run
    dirs = [read_data_dir(d, allow_pipes=True) for d in args.dirs]
    combined = combine_data_dirs(dirs)
    write_data_dir(combined, args.out)
    print(f"{args.out}: combined {len(dirs)} dirs ({_summary(combined, _known_seconds(combined))})")
    return 0


def _known_seconds(data: DataDir) -> float | None:
    return data.total_seconds() if all(data.duration(u) is not None for u in data.utt_ids) else None


def _read_utt_list(path: str) -> list[str]:
    p = Path(path)
    if not p.is_file():
        raise DataDirError("utterance list not found", str(p))
    utts = []
    for lineno, line in enumerate(p.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            raise DataDirError("empty line; remove it", str(p), lineno)
        utts.append(line.split()[0])
    if not utts:
        raise DataDirError("utterance list is empty", str(p))
    return utts


def _subset(args: argparse.Namespace) -> int:
    _check_out(args.out, args.force)
    data = read_data_dir(args.dir, allow_pipes=True)
    ids = data.utt_ids
    if args.utt_list is not None:
        keep = _read_utt_list(args.utt_list)
    elif args.hours is not None:
        keep = _first_hours(data, args.dir, args.hours, args.seed)
    else:
        n = args.first if args.first is not None else args.random
        if not 1 <= n <= len(ids):
            raise DataDirError(f"subset: N must be in 1..{len(ids)} (the number of utterances), got {n}", args.dir)
        keep = ids[:n] if args.first is not None else random.Random(args.seed).sample(ids, n)
    subset = data.subset(keep)
    write_data_dir(subset, args.out)
    from asr_kd.data.feature_cache import carry_feature_cache

    cached = carry_feature_cache(args.dir, args.out, subset.utt_ids)
    print(f"{args.out}: subset of {args.dir} ({_summary(subset, _known_seconds(subset))}"
          + (f"; its feature cache: {cached} entries" if cached else "") + ")")
    return 0


def _first_hours(data: DataDir, where: str, hours: float, seed: int) -> list[str]:
    """The shortest prefix of one seeded shuffle of the utterances that holds ``hours`` of audio. The
    shuffle depends only on the ids and the seed, so a smaller request is a prefix of a larger one."""
    if not hours > 0:
        raise DataDirError(f"subset: --hours must be > 0, got {hours:g}", where)
    unknown = [u for u in data.utt_ids if data.duration(u) is None]
    if unknown:
        raise DataDirError(f"subset --hours needs the duration of every utterance; {len(unknown)} have none "
                           f"(first: {unknown[0]}); run 'asr-kd data validate --durations {where}'", where)
    order = sorted(data.utt_ids)
    random.Random(seed).shuffle(order)
    total = data.total_seconds() / 3600
    if total < hours:
        raise DataDirError(f"subset: {hours:.2f} h requested but the dir holds {total:.2f} h in {len(order)} "
                           f"utterances; synthesize or add {hours - total:.2f} h more", where)
    keep, seconds = [], 0.0
    for utt in order:
        if seconds >= hours * 3600:
            break
        keep.append(utt)
        seconds += data.duration(utt)
    return keep


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _split_args(args: argparse.Namespace) -> tuple[str, list[str], list[float]]:
    """``(DIR, out dirs, fractions)``, recovering DIR when a ``nargs="+"`` option took it."""
    outs, fracs, src = list(args.out_dirs), list(args.fractions), args.dir
    if src is None:
        if fracs and not _is_number(fracs[-1]):
            src = fracs.pop()
        elif len(outs) == len(fracs) + 1:
            src = outs.pop()
        else:
            raise DataDirError("split: give the data dir to split (DIR) after the options")
    bad = [f for f in fracs if not _is_number(f)]
    if bad:
        raise DataDirError(f"split: --fractions must be numbers, got {bad}")
    if len(outs) != len(fracs):
        raise DataDirError(f"split: {len(outs)} --out-dirs but {len(fracs)} --fractions; give one fraction per dir")
    return src, outs, [float(f) for f in fracs]


def _split(args: argparse.Namespace) -> int:
    src, outs, fractions = _split_args(args)
    for out in outs:
        _check_out(out, args.force)
    data = read_data_dir(src, allow_pipes=True)
    parts = split_by_speaker(data, fractions, seed=args.seed)
    for out, part in zip(outs, parts):
        write_data_dir(part, out)
        print(f"{out}: {_summary(part, _known_seconds(part))}")
    return 0


def _cmvn(args: argparse.Namespace) -> int:
    from asr_kd.data.cmvn import compute_global_cmvn
    from asr_kd.data.features import FbankConfig
    from asr_kd.config import validate_config

    if args.max_utts is not None and args.max_utts < 1:
        raise AsrKdError(f"--max-utts must be >= 1, got {args.max_utts}")
    fbank = validate_config({"num_mel_bins": args.num_mel_bins, "sample_rate": args.sample_rate}, FbankConfig,
                            source="command line")
    data = read_data_dir(args.dir, allow_pipes=args.allow_pipes)
    cmvn = compute_global_cmvn(data, fbank, max_utts=args.max_utts, seed=args.seed,
                               progress=sys.stderr.isatty(), allow_pipes=args.allow_pipes)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    cmvn.save(args.out)
    print(f"{args.out}: CMVN over {cmvn.frames} frames ({cmvn.frames / 360000:.3f} h), {cmvn.num_mel_bins} bins")
    return 0


def _fbank(args: argparse.Namespace) -> int:
    from asr_kd.config import load_config
    from asr_kd.data.feature_cache import build_feature_cache
    from asr_kd.data.features import FbankConfig

    fbank = FbankConfig()
    if args.config:
        from asr_kd.train.config import TrainConfig

        fbank = load_config(args.config, TrainConfig).fbank
    for d in args.dirs:
        summary = build_feature_cache(d, fbank, progress=not args.no_progress and sys.stderr.isatty(),
                                      allow_pipes=args.allow_pipes)
        note = f", {summary.rejects} unreadable (see {summary.path / 'rejects.tsv'})" if summary.rejects else ""
        print(f"{d}: fbank cache of {summary.cached} utterances, {summary.frames / 360000:.3f} h{note} -> {d}/feats.scp")
    return 0


def _perturb_speed(args: argparse.Namespace) -> int:
    from asr_kd.data.perturb import parse_factors, perturb_speed

    factors = parse_factors(args.factors)
    if args.jobs < 1:
        raise AsrKdError(f"--jobs must be >= 1, got {args.jobs}")
    _check_out(args.out, args.force)
    summary = perturb_speed(args.dir, args.out, factors, jobs=args.jobs, sample_rate=args.sample_rate,
                            progress=not args.no_progress and sys.stderr.isatty(), allow_pipes=args.allow_pipes)
    print(summary.line())
    return 0


def _shard(args: argparse.Namespace) -> int:
    from asr_kd.data.shards import write_shards

    summary = write_shards(args.dir, args.out, shard_size=args.shard_size, shard_seconds=args.shard_seconds,
                           allow_pipes=args.allow_pipes, progress=not args.no_progress and sys.stderr.isatty())
    print(summary.line() + (f" (see {Path(args.out) / 'rejects.tsv'})" if summary.rejects else ""))
    return 0
