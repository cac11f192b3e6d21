"""The ``asr-kd`` command line: one subcommand per pipeline stage.

Each subcommand lives in the module that does its work; that module defines
``add_arguments(parser)`` and ``run(args) -> int``. Only the chosen subcommand's module is imported,
so ``asr-kd --help`` is instant and a stage pays only for the libraries it uses.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from asr_kd import __version__
from asr_kd.errors import AsrKdError

# name -> (module, one-line help). Order is pipeline order.
COMMANDS: dict[str, tuple[str, str]] = {
    "prepare": ("data_prep.cli", "make data dirs from a corpus (synth, librispeech, librilight, folder)"),
    "data": ("asr_kd.data.cli", "validate, combine, subset, split or shard data dirs; compute CMVN"),
    "train": ("asr_kd.train.cli", "train a teacher or a student (CTC and/or distillation) from a YAML config"),
    "label": ("asr_kd.label.cli", "label a data dir, audio shards or a lhotse CutSet with teacher soft targets on Ray (resumable)"),
    "pseudo-label": ("asr_kd.label.seq_cli", "transcribe a data dir with a Whisper teacher: pseudo-labeled data dir, filtered"),
    "targets": ("asr_kd.targets.cli", "inspect, verify, export or import a soft-target store"),
    "evaluate": ("asr_kd.evaluate", "decode a data dir and score WER/CER (sclite-compatible output)"),
    "transcribe": ("asr_kd.decode.cli", "transcribe audio files, streaming partial results"),
    "export": ("asr_kd.export.cli", "export a streaming student to ONNX (float or int8)"),
    "report": ("asr_kd.report", "results table and figures of a recipe's experiment dir"),
}


DOCS = "docs/"  # pages of the repository's docs/ folder (docs/index.md lists them)
COMMAND_DOCS: dict[str, str] = {
    "prepare": "your-own-corpus.md", "data": "your-own-corpus.md", "train": "distillation-settings.md",
    "label": "labeling-at-scale.md", "pseudo-label": "distill-from-your-own-model.md", "targets": "store-format.md",
    "evaluate": "pipeline.md", "transcribe": "pipeline.md", "export": "pipeline.md", "report": "scaling.md",
}
"""The docs page each subcommand's ``--help`` points to."""


def _top_parser() -> argparse.ArgumentParser:
    lines = [f"  {name:<11} {help_}" for name, (_, help_) in COMMANDS.items()]
    parser = argparse.ArgumentParser(
        prog="asr-kd",
        description="Teacher-student training of streaming speech recognizers.",
        epilog="commands:\n" + "\n".join(lines) + "\n\nRun 'asr-kd COMMAND --help' for a command's options; "
               f"documentation: {DOCS}index.md",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"asr-kd {__version__}")
    parser.add_argument("command", nargs="?", choices=list(COMMANDS), metavar="COMMAND")
    return parser


def _quiet_speechbrain() -> None:
    """Show SpeechBrain's log records from WARNING up only.

    Importing SpeechBrain logs INFO lines (``speechbrain.utils.quirks: Applied quirks ...`` about the
    torch backend settings it changes, ``Excluded quirks ...``), and every logger it makes with
    ``speechbrain.utils.logger.get_logger`` is set to ``$SB_LOG_LEVEL``, INFO when unset. Our CLI logs
    its own progress at INFO on the root handler, so those lines would appear in every command that
    imports SpeechBrain. Set before the import; a user's ``SB_LOG_LEVEL`` wins. Other libraries and
    ``asr_kd``'s own loggers are untouched (warnings from SpeechBrain still show).
    """
    level = os.environ.setdefault("SB_LOG_LEVEL", "WARNING").upper()
    logging.getLogger("speechbrain").setLevel(level)
    # loggers SpeechBrain made before this point (an in-process caller imported it) carry their own level
    for name, logger in list(logging.Logger.manager.loggerDict.items()):
        if name.startswith("speechbrain.") and isinstance(logger, logging.Logger):
            logger.setLevel(logging.NOTSET)


def build_command_parser(name: str) -> tuple[argparse.ArgumentParser, object]:
    """Import the module of one subcommand and build its parser."""
    module_name, help_ = COMMANDS[name]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"asr-kd {name}", description=help_,
                                     epilog=f"documentation: {DOCS}{COMMAND_DOCS[name]}")
    module.add_arguments(parser)
    return parser, module


def parse_command_args(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """Parse a command's arguments; ``key=value`` overrides (``asr-kd train``) may come before, between
    or after the options (plain ``parse_args`` rejects overrides that follow an option)."""
    try:
        return parser.parse_intermixed_args(argv)
    except TypeError:  # argparse cannot intermix a parser that has subcommands (asr-kd data, targets)
        return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=os.environ.get("ASR_KD_LOG", "INFO"), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    _quiet_speechbrain()
    top = _top_parser()
    if not argv or argv[0] not in COMMANDS:
        top.parse_args(argv[:1] or ["--help"])
        return 2
    parser, module = build_command_parser(argv[0])
    args = parse_command_args(parser, argv[1:])
    try:
        return int(module.run(args) or 0)
    except AsrKdError as exc:
        print(f"asr-kd {argv[0]}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"asr-kd {argv[0]}: interrupted; rerun the same command to resume where supported", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
