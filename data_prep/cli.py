"""``asr-kd prepare synth|librispeech|librilight|folder ... --out DATA``: make data dirs from a corpus.

Each corpus module does the work; this module only parses arguments and prints the one-line summary.
Heavy imports happen inside ``run`` so ``asr-kd prepare --help`` stays instant.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="corpus", metavar="CORPUS", required=True)

    p = sub.add_parser("synth", help="synthesize the voice-assistant corpus with espeak-ng and flite",
                       description="Synthesize train_labeled, train_unlabeled, dev and test with local TTS engines "
                                   "(resumable: rerun the same command to finish an interrupted run).")
    p.add_argument("--profile", default="demo",
                   help="tiny (tests), demo (CPU demo), medium (the demo with ~2x the audio), large (GPU/cluster), or a YAML file "
                        "with SynthProfile keys (default: demo)")
    p.add_argument("--size", action="append", default=[], metavar="SPLIT=N",
                   help="override one split's utterance count, e.g. --size train_unlabeled=56000 (repeatable). Utterance "
                        "i of a split is the same whatever the count, so a larger split contains the smaller one")
    p.add_argument("--out", required=True, help="output folder (data dirs, audio/, synth_manifest.json)")
    p.add_argument("--seed", type=int, default=0, help="corpus seed: same seed, same bytes (default 0)")
    p.add_argument("--jobs", type=int, default=None, help="parallel synthesis processes (default: all CPUs)")

    p = sub.add_parser("librispeech", help="LibriSpeech subsets -> one data dir each")
    p.add_argument("--corpus-dir", required=True, help="folder containing LibriSpeech/<subset> (or the subsets)")
    p.add_argument("--subsets", nargs="+", required=True, help="e.g. train-clean-100 dev-clean test-clean")
    p.add_argument("--out", required=True, help="output folder: one data dir per subset (dev-clean -> dev_clean)")
    p.add_argument("--unlabeled", action="store_true", help="write no text (transcripts kept aside as text.ref)")

    p = sub.add_parser("librilight", help="long unlabeled recordings (<speaker>/<book>/<file>.flac) -> segments")
    p.add_argument("--corpus-dir", required=True, help="LibriLight folder (small/, medium/ ... or one of them)")
    p.add_argument("--out", required=True, help="output data dir (wav.scp of recordings + segments)")
    p.add_argument("--max-seconds", type=float, default=20.0, help="longest segment, seconds (default 20)")
    p.add_argument("--min-seconds", type=float, default=1.0, help="shorter segments are skipped and listed (default 1)")
    p.add_argument("--top-db", type=float, default=30.0, help="silence = this many dB below the loudest frame (default 30)")
    p.add_argument("--max-pause", type=float, default=3.0, help="longest pause merged inside a segment, seconds (default 3)")
    p.add_argument("--jobs", type=int, default=None, help="parallel processes (default: all CPUs)")

    p = sub.add_parser("folder", help="every audio file of a folder -> an unlabeled data dir")
    p.add_argument("--audio-dir", required=True, help="folder searched recursively")
    p.add_argument("--out", required=True, help="output data dir")
    p.add_argument("--ext", nargs="+", default=["wav", "flac"], help="file extensions (default: wav flac)")
    p.add_argument("--speaker-from-dir", action="store_true",
                   help="speaker = first folder below --audio-dir (default: one speaker per file)")

    for sub_parser in sub.choices.values():
        sub_parser.add_argument("--no-progress", action="store_true", help="no progress bar (summary line only)")


def run(args: argparse.Namespace) -> int:
    if args.corpus == "synth":
        from data_prep.synth.generate import generate_corpus
        from data_prep.synth.profiles import get_profile

        from data_prep.synth.profiles import with_sizes

        profile = with_sizes(get_profile(args.profile), args.size)
        summary = generate_corpus(args.out, profile, seed=args.seed, jobs=args.jobs,
                                  progress=not args.no_progress)
        print(summary.line())
        return 0
    if args.corpus == "librispeech":
        from data_prep.librispeech import prepare_librispeech

        _, line = prepare_librispeech(args.corpus_dir, args.subsets, args.out, unlabeled=args.unlabeled,
                                      progress=not args.no_progress)
        print(line)
        return 0
    if args.corpus == "librilight":
        from data_prep.librilight import SegmentOptions, prepare_librilight

        opts = SegmentOptions(max_seconds=args.max_seconds, min_seconds=args.min_seconds, top_db=args.top_db,
                              max_pause=args.max_pause)
        _, line = prepare_librilight(args.corpus_dir, args.out, opts, jobs=args.jobs, progress=not args.no_progress)
        print(line)
        return 0
    if args.corpus == "folder":
        from data_prep.folder import prepare_folder

        _, line = prepare_folder(args.audio_dir, args.out, exts=args.ext, speaker_from_dir=args.speaker_from_dir,
                                 progress=not args.no_progress)
        print(line)
        return 0
    raise AssertionError(f"unhandled corpus {args.corpus!r}")  # argparse restricts the choices
