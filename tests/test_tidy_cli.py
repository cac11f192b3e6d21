"""The CLI's log output: SpeechBrain's import-time INFO lines are silenced, our own warnings (and
SpeechBrain's) still show."""

from __future__ import annotations

import subprocess
import sys

from factories import ROOT, cli_env, make_data, make_teacher


def _env_at_info() -> dict[str, str]:
    env = cli_env()
    env.pop("ASR_KD_LOG", None)  # the CLI's default level (INFO), as a user runs it
    env.pop("SB_LOG_LEVEL", None)
    return env


def test_a_command_that_imports_speechbrain_prints_no_speechbrain_info_lines(tmp_path):
    teacher = make_teacher(tmp_path / "teacher")
    data = make_data(tmp_path / "d", 3, with_text=True)
    proc = subprocess.run([sys.executable, "-m", "asr_kd.cli", "evaluate", "--model", str(teacher), "--data", str(data),
                           "--out", str(tmp_path / "eval")], capture_output=True, text=True, timeout=300, cwd=ROOT,
                          env=_env_at_info())
    assert proc.returncode == 0, proc.stderr
    assert "WER" in proc.stdout + proc.stderr and (tmp_path / "eval" / "wer.json").is_file()
    out = proc.stdout + proc.stderr
    assert "speechbrain" not in out, out  # e.g. 'INFO speechbrain.utils.quirks: Applied quirks ...'


SCRIPT = """
import logging, sys
from asr_kd.cli import main
rc = main(["data", "cmvn", "--out", sys.argv[2], sys.argv[1]])
import speechbrain  # imported after the CLI set up logging, as a subcommand would
from speechbrain.utils.logger import get_logger
sb = get_logger("speechbrain.tidy_probe")
sb.info("sb-info-is-hidden")
sb.warning("sb-warning-is-shown")
sys.exit(rc)
"""


def test_our_warnings_and_speechbrain_warnings_still_show(tmp_path):
    data = make_data(tmp_path / "d", 3)
    wav_scp = data / "wav.scp"
    lines = wav_scp.read_text().splitlines()
    utt = lines[0].split()[0]
    wav_scp.write_text("\n".join([f"{utt} {tmp_path / 'missing.wav'}"] + lines[1:]) + "\n")
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(data), str(tmp_path / "cmvn.json")], capture_output=True,
                          text=True, timeout=300, cwd=ROOT, env=_env_at_info())
    assert proc.returncode == 0, proc.stderr
    assert f"WARNING asr_kd.data.cmvn: cmvn: skipped 1 of 3 utterance(s): {utt}" in proc.stderr
    assert "sb-warning-is-shown" in proc.stderr
    assert "sb-info-is-hidden" not in proc.stderr and "quirks" not in proc.stderr


def test_train_overrides_may_follow_options_and_commands_with_subcommands_still_parse():
    from asr_kd.cli import build_command_parser, parse_command_args

    parser, _ = build_command_parser("train")
    args = parse_command_args(parser, ["--config", "c.yaml", "optim.lr=1e-3", "--no-progress", "--out", "o",
                                       "kd.ctc_weight=0.1"])
    assert args.overrides == ["optim.lr=1e-3", "kd.ctc_weight=0.1"] and args.out == "o" and args.no_progress
    parser, _ = build_command_parser("data")
    args = parse_command_args(parser, ["fbank", "--no-progress", "d1", "d2"])
    assert args.dirs == ["d1", "d2"] and args.no_progress


def test_commands_that_read_kaldi_files_print_no_kaldi_io_banner(tmp_path):
    data = make_data(tmp_path / "d", 3)
    env = _env_at_info()
    env.pop("KALDI_ROOT", None)  # as a user without Kaldi runs it
    proc = subprocess.run([sys.executable, "-m", "asr_kd.cli", "data", "fbank", "--no-progress", str(data)],
                          capture_output=True, text=True, timeout=300, cwd=ROOT, env=env)
    assert proc.returncode == 0, proc.stderr
    assert (data / "feats.scp").is_file()
    assert "KALDI_ROOT" not in proc.stdout + proc.stderr and "####" not in proc.stderr, proc.stderr


def test_every_command_help_points_to_a_docs_page_that_exists(capsys):
    """`asr-kd --help` names docs/index.md and each `asr-kd COMMAND --help` its own page, and every page
    named is in the repository and listed in docs/index.md. (Mutation caught: a command without a page
    raises KeyError; a renamed page fails the existence check.)"""
    import pytest

    from asr_kd.cli import COMMAND_DOCS, COMMANDS, DOCS, build_command_parser, main

    assert set(COMMAND_DOCS) == set(COMMANDS)
    index = (ROOT / DOCS / "index.md").read_text()
    for name in COMMANDS:
        page = COMMAND_DOCS[name]
        assert (ROOT / DOCS / page).is_file(), page
        assert f"]({page})" in index, page
        parser, _ = build_command_parser(name)
        assert f"documentation: {DOCS}{page}" in parser.format_help()
    with pytest.raises(SystemExit):
        main(["--help"])
    assert f"documentation: {DOCS}index.md" in capsys.readouterr().out
