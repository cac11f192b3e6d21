"""``asr-kd targets stats|verify|export-kaldi|import-kaldi|plot``: inspect and convert a soft-target store.

::

    asr-kd targets stats STORE [--json]
    asr-kd targets verify STORE [STORE ...] [--data DATA_DIR] [--student-config CONF.yaml] [--no-checksums]
    asr-kd targets export-kaldi STORE --out DIR
    asr-kd targets import-kaldi ARK_OR_SCP --out STORE --meta-from STORE_OR_META_JSON [--shard-size N]
    asr-kd targets plot STORE --utt ID --out plot.png [--tokens tokens.txt|TEACHER_DIR]

``verify`` hashes every shard (sha256) against its marker, with a progress bar in bytes, and exits
0 printing one ``OK ...`` summary line, or 1 listing every problem (store errors, shards whose bytes
changed, ids that differ from the data dir, frame counts off by more than one frame; with several
stores also settings that differ between them and utterances stored twice). Training does not hash
the store at start-up (it checks shard sizes only): run ``verify`` after copying or moving a store.
"""

from __future__ import annotations

import argparse
import json
import sys

from asr_kd.errors import AsrKdError, StoreError

FRAME_TOLERANCE = 1  # frames; utt2dur durations are rounded (3 decimals = 48 samples at 16 kHz)
SHOW = 50  # ids listed per problem (then a count of the rest)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")

    p = sub.add_parser("stats", help="size, hours, bytes per frame, top-k mass, entropy histogram")
    p.add_argument("store")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the text report")
    p.add_argument("--teacher", action="append", help="teacher model dir(s) that made the store: also report "
                   "KL(teacher dense || stored) on a sample (needs --data)")
    p.add_argument("--data", help="what was labeled (audio for --teacher): data dir, audio shard dir or lhotse CutSet")
    p.add_argument("--units-from", help="with --teacher: the --units-from given to 'asr-kd label' (Hugging Face / SpeechBrain teachers)")
    p.add_argument("--unit-map", action="append", help="with --teacher: the --unit-map file(s) given to 'asr-kd label'")
    p.add_argument("--sample", type=int, default=50, help="utterances sampled for the KL (default 50)")

    p = sub.add_parser(
        "verify", help="sha256 of every shard, index vs shards, ids and frame counts vs a data dir",
        description="Hash every shard of each STORE (sha256, against the checksum its marker recorded when it was "
        "written) and check the index against the shard markers; with several STOREs (a kd.store list) also that "
        "they agree on teacher, units, frame rate and temperature and hold each utterance once. Reads every byte of "
        "the stores (sha256 at roughly 1 GB/s per core from the page cache; disk or network speed otherwise): this is its own step, "
        "run after labeling and after copying a store. 'asr-kd train' does not hash the store at start-up — it "
        "checks shard sizes only, and each format-2 shard is sha256-checked when training first reads it. Exits 0 "
        "with one OK summary line, or 1 listing every problem.")
    p.add_argument("stores", nargs="+", metavar="STORE", help="store dir(s); several = the stores of a kd.store list")
    p.add_argument("--data", help="data dir, audio shard dir or lhotse CutSet the store(s) should label (ids and frame "
                   "counts vs utt2dur/segments, shard index or cut durations are compared)")
    p.add_argument("--student-config", help="training YAML whose units, fbank and kd.temperature must match the store(s)")
    p.add_argument("--no-checksums", action="store_true", help="skip the sha256 pass (sizes and indexes only)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")

    p = sub.add_parser("export-kaldi", help="write a Kaldi Posterior ark + scp (kaldi-io)")
    p.add_argument("store")
    p.add_argument("--out", required=True, help="output dir for post.ark and post.scp")

    p = sub.add_parser("import-kaldi", help="build a store from a Kaldi Posterior ark or scp")
    p.add_argument("source", help="X.ark, X.scp, ark:X or scp:X")
    p.add_argument("--out", required=True, help="new store dir")
    p.add_argument("--meta-from", required=True, help="store dir or meta.json whose settings describe the input")
    p.add_argument("--shard-size", type=int, default=256, help="utterances per shard")

    p = sub.add_parser("plot", help="posteriorgram PNG of one utterance")
    p.add_argument("store")
    p.add_argument("--utt", required=True)
    p.add_argument("--out", required=True, help="PNG file to write")
    p.add_argument("--tokens", help="tokens.txt, or a model dir holding one (the teacher's), to label rows with unit "
                                    "symbols (default: STORE/tokens.txt if present, else rows show unit ids)")


def _ids_preview(ids: list[str]) -> str:
    return " ".join(ids[:SHOW]) + (f" ... (+{len(ids) - SHOW} more)" if len(ids) > SHOW else "")


def check_against_data(reader, data_dir: str) -> tuple[list[str], list[str]]:
    """Problems and notes from comparing a store with what was labeled (ids; frames vs durations, +-1 frame):
    a data dir (durations from utt2dur/segments), an audio shard dir or a lhotse CutSet (their durations)."""
    from asr_kd.data.sources import DataDirSource, open_source
    from asr_kd.targets.stats import expected_frames_for_meta

    source = open_source(data_dir)
    if isinstance(source, DataDirSource):  # durations known without opening audio (utt2dur, segments) only
        from asr_kd.data.datadir import read_data_dir

        duration = read_data_dir(data_dir).duration
    else:
        duration = source.seconds().get
    problems: list[str] = []
    notes: list[str] = []
    data_ids = set(source.utt_ids)
    store_ids = set(reader.utt_ids)
    rejects = reader.rejects()
    unlabeled = sorted(data_ids - store_ids - set(rejects))
    if unlabeled:
        problems.append(f"{len(unlabeled)} utterance(s) of {data_dir} have no targets and are not in rejects.tsv: "
                        f"{_ids_preview(unlabeled)} (rerun 'asr-kd label' to label them; it resumes)")
    foreign = sorted(store_ids - data_ids)
    if foreign:
        problems.append(f"{len(foreign)} stored utterance(s) are not in {data_dir}: {_ids_preview(foreign)} "
                        "(was the store made from another data dir?)")
    rejected_here = sorted(set(rejects) & data_ids)
    if rejected_here:
        notes.append(f"{len(rejected_here)} rejected by the labeler")
    wrong, unknown_dur = [], 0
    for utt in sorted(store_ids & data_ids):
        dur = duration(utt)
        if dur is None:
            unknown_dur += 1
            continue
        want = expected_frames_for_meta(dur, reader.meta)
        got = reader.num_frames(utt)
        if abs(got - want) > FRAME_TOLERANCE:
            wrong.append(f"{utt} (stored {got}, expected {want} for {dur:.3f} s)")
    if wrong:
        problems.append(f"{len(wrong)} utterance(s) have frame counts that do not match their duration "
                        f"(+-{FRAME_TOLERANCE} allowed): {'; '.join(wrong[:SHOW])}"
                        + (f" ... (+{len(wrong) - SHOW} more)" if len(wrong) > SHOW else "")
                        + " — was the store labeled with another front end or frame rate?")
    if unknown_dur:
        notes.append(f"frame counts not checked for {unknown_dur} utterance(s) without utt2dur/segments")
    else:
        notes.append(f"frame counts match utt2dur (+-{FRAME_TOLERANCE})")
    return problems, notes


def check_against_student_config(reader, config_path: str) -> list[str]:
    """Problems that would stop training this config on the store (units, frame rate, fbank, temperature)."""
    from asr_kd.config import load_config
    from asr_kd.targets.meta import fbank_differences
    from asr_kd.train.config import TrainConfig

    conf = load_config(config_path, TrainConfig)
    meta = reader.meta
    problems: list[str] = []
    framing, _ = fbank_differences(meta.fbank, conf.fbank.model_dump(mode="json"))  # other fbank options may differ
    problems.extend(framing)
    shift = conf.fbank.frame_shift_ms * conf.model.subsampling
    if abs(shift - meta.frame_shift_ms) > 1e-6:
        problems.append(f"output frame shift differs: store {meta.frame_shift_ms:g} ms vs config {shift:g} ms")
    if conf.kd is not None and abs(conf.kd.temperature - meta.temperature) > 1e-6:
        problems.append(f"temperature differs: store {meta.temperature:g} vs kd.temperature {conf.kd.temperature:g}")
    if conf.units.from_model:
        from asr_kd.data.units import load_tokenizer

        from asr_kd.targets.meta import teacher_mismatch

        tok = load_tokenizer(conf.units.from_model)
        if tok.units_hash() != meta.units_hash or tok.vocab_size != meta.vocab_size:
            problems.append(f"units differ: store units_hash {meta.units_hash} ({meta.vocab_size} units) vs "
                            f"{conf.units.from_model} {tok.units_hash()} ({tok.vocab_size} units)")
        other = teacher_mismatch(meta, conf.units.from_model, where=str(reader.store_dir))
        if other and not (conf.kd is not None and conf.kd.allow_other_teacher):
            problems.append(other)
    else:
        problems.append("units.from_model is not set: a distilled student must reuse the teacher's units "
                        "(units.from_model: TEACHER_DIR)")
    return problems


def _size(n: float) -> str:
    """Bytes for people: 512 B, 3.4 MiB, 1.20 GiB."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.{2 if unit == 'GiB' else 1}f} {unit}"
    return f"{n:.0f} B"


def _verify(args: argparse.Namespace) -> int:
    import time

    from tqdm import tqdm

    from asr_kd.targets.reader import StoreReader
    from asr_kd.targets.storeset import StoreSet, check_agree, duplicate_ids
    from asr_kd.targets.verify import shard_bytes_total, store_problems

    label = " ".join(args.stores)
    problems: list[str] = []
    readers = []
    for path in args.stores:
        try:
            readers.append(StoreReader(path))
        except StoreError as exc:
            problems.append(str(exc) if str(exc).startswith(str(path)) else f"{path}: {exc}")
    if problems and not readers:
        print(f"FAILED {label}: {len(problems)} problem(s)", file=sys.stderr)
        for line in problems:
            print(f"  - {line}", file=sys.stderr)
        return 1
    if len(readers) > 1:
        try:
            check_agree(readers)
        except StoreError as exc:
            problems.append(str(exc))
        for i, a in enumerate(readers):
            for b in readers[i + 1:]:
                n, examples = duplicate_ids(a, b)
                if n:
                    problems.append(f"{n} utterance(s) are in both {a.store_dir} and {b.store_dir}, e.g. {examples}: "
                                    "utterance ids must be unique across the stores of a kd.store list")
    total = sum(shard_bytes_total(r) for r in readers)
    t0 = time.perf_counter()
    bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, dynamic_ncols=True,
               desc="verify (sha256)" if not args.no_checksums else "verify (sizes)",
               disable=args.no_progress or total == 0)
    try:
        for r in readers:
            bar.set_postfix_str(r.store_dir.name)
            problems += [p if p.startswith(str(r.store_dir)) else f"{r.store_dir}: {p}"
                         for p in store_problems(r, checksums=not args.no_checksums, progress=bar.update)]
    finally:
        bar.close()
    wall = time.perf_counter() - t0
    utts = sum(len(r) for r in readers)
    frames = sum(r.total_frames for r in readers)
    shards = sum(r.meta.num_shards or 0 for r in readers)
    notes = [f"{len(readers)} store(s), {utts} utterances, {frames} frames, {shards} shards",
             "sizes and indexes consistent" if args.no_checksums else
             f"checksums verified ({_size(total)} hashed in {wall:.1f} s, {_size(total / max(wall, 1e-9))}/s)"]
    if args.data and readers:
        try:
            reader = StoreSet(args.stores) if len(readers) > 1 else readers[0]
        except StoreError:
            reader = None  # the problems are listed above
        if reader is not None:
            p, n = check_against_data(reader, args.data)
            problems += p
            notes += [f"ids match {args.data}"] + n if not p else n
    if args.student_config:
        config_problems = []
        for r in readers:
            p = check_against_student_config(r, args.student_config)
            config_problems += [f"{r.store_dir}: {x}" for x in p] if len(readers) > 1 else p
        problems += config_problems
        if not config_problems:
            notes.append(f"compatible with {args.student_config}")
    if problems:
        print(f"FAILED {label}: {len(problems)} problem(s)", file=sys.stderr)
        for line in problems:
            print(f"  - {line}", file=sys.stderr)
        return 1
    print(f"OK {label}: " + "; ".join(notes))
    return 0


def run(args: argparse.Namespace) -> int:
    if args.action == "verify":
        return _verify(args)

    from asr_kd.targets.reader import StoreReader

    if args.action == "stats":
        from asr_kd.targets.stats import format_stats, store_stats

        reader = StoreReader(args.store)
        stats = store_stats(reader)
        if args.teacher:
            from asr_kd.targets.stats import teacher_kl

            if not args.data:
                raise AsrKdError("targets stats --teacher needs --data (the labeled data dir, for the audio)")
            stats.kl_nats = teacher_kl(reader, args.teacher, args.data, sample=args.sample, units_from=args.units_from,
                                       unit_map_files=args.unit_map)
        print(json.dumps(stats.as_json()) if args.json else format_stats(stats))
        return 0
    if args.action == "export-kaldi":
        from asr_kd.targets.kaldi import export_kaldi

        reader = StoreReader(args.store)
        ark, scp = export_kaldi(reader, args.out)
        print(f"wrote {len(reader)} utterances to {ark} and {scp} (Posterior pairs are (unit id from tokens.txt, "
              f"probability), {reader.meta.frame_shift_ms:g} ms frames)")
        return 0
    if args.action == "import-kaldi":
        from asr_kd.targets.kaldi import import_kaldi

        meta = import_kaldi(args.source, args.out, args.meta_from, shard_size_utts=args.shard_size)
        reader = StoreReader(args.out)
        print(f"imported {len(reader)} utterances ({reader.total_frames} frames) into {args.out} "
              f"({meta.num_shards} shards, top-{meta.k} {meta.quantization})")
        return 0
    if args.action == "plot":
        from asr_kd.targets.plot import plot_posteriorgram

        out = plot_posteriorgram(StoreReader(args.store), args.utt, args.out, tokens=args.tokens)
        print(f"wrote {out}")
        return 0
    raise AsrKdError(f"unknown targets action {args.action!r}")


def main(argv: list[str] | None = None) -> int:
    """Run ``asr-kd targets ARGV`` (also the entry of ``tools/plot_posteriorgram.py``)."""
    from asr_kd.cli import main as cli_main

    return cli_main(["targets", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
