"""``asr-kd pseudo-label --model WHISPER_DIR --data DATA --out OUT_DATA [--max-wer 20] [--min-confidence 0.5]``"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="local Hugging Face WhisperForConditionalGeneration directory "
                        "(safetensors + processor files; nothing is downloaded), or a Hugging Face / SpeechBrain CTC "
                        "directory whose units the student does not share (decoded greedily)")
    parser.add_argument("--data", required=True, help="data dir to transcribe; its text (or text.ref) is the reference "
                        "for --max-wer where present")
    parser.add_argument("--out", required=True, help="output data dir: kept utterances with pseudo-transcripts as text, "
                        "confidence.tsv, rejects.tsv, meta.json")
    parser.add_argument("--max-wer", type=float, default=20.0,
                        help="drop an utterance whose pseudo-transcript's WER (percent) against the reference is higher "
                             "(only where a reference exists); negative: off")
    parser.add_argument("--min-confidence", type=float, help="drop utterances whose confidence (geometric-mean token "
                        "probability, 0..1) is lower")
    parser.add_argument("--max-seconds", type=float, default=30.0, help="longer utterances are rejected as too_long (<= 30)")
    parser.add_argument("--batch-size", type=int, default=8, help="utterances per generate() call")
    parser.add_argument("--language", help="language token for multilingual checkpoints, e.g. en")
    parser.add_argument("--allow-pipes", action="store_true", help="allow 'command |' entries in wav.scp")
    parser.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    from asr_kd.label.seq_teacher import PseudoLabelOptions, pseudo_label

    options = PseudoLabelOptions(
        max_wer=None if args.max_wer is not None and args.max_wer < 0 else args.max_wer, min_confidence=args.min_confidence,
        max_seconds=args.max_seconds, batch_size=args.batch_size, language=args.language, allow_pipes=args.allow_pipes,
        progress=not args.no_progress)
    summary = pseudo_label(args.model, args.data, args.out, options)
    print(summary.line() + f"; train the student on {args.out} (data.train), rejects in {args.out}/rejects.tsv")
    return 0
