"""The recipe report's per-condition test WER: errors and words summed per speaker condition."""

from __future__ import annotations

import json

import pytest

from asr_kd.report import render_conditions, wer_by_condition


def test_wer_by_condition_sums_errors_per_speaker_condition(tmp_path):
    data = tmp_path / "data"
    (data / "test").mkdir(parents=True)
    (data / "synth_manifest.json").write_text(json.dumps({"test_conditions": {"spkA": "seen_voice", "spkB": "unseen_accent"}}))
    (data / "test" / "utt2spk").write_text("a1 spkA\na2 spkA\nb1 spkB\nc1 spkC\n")
    per_utt = tmp_path / "exp" / "kd" / "eval_test"
    per_utt.mkdir(parents=True)
    # utt words sub del ins wer; c1's speaker has no condition and is left out
    (per_utt / "per_utt.tsv").write_text("utt\twords\tsub\tdel\tins\twer\n"
                                         "a1\t4\t1\t0\t0\t25.00\na2\t6\t1\t1\t1\t50.00\n"
                                         "b1\t5\t5\t0\t0\t100.00\nc1\t3\t3\t0\t0\t100.00\n")
    table = wer_by_condition(tmp_path / "exp", data)
    assert table == {"kd": {"seen_voice": pytest.approx(40.0), "unseen_accent": pytest.approx(100.0)}}
    lines = render_conditions(table)
    assert "| KD student | 40.00 | 100.00 |" in lines
    assert lines.index("| model | seen_voice | unseen_accent |") > 0


def test_wer_by_condition_is_empty_without_a_condition_map(tmp_path):
    (tmp_path / "data" / "test").mkdir(parents=True)
    assert wer_by_condition(tmp_path / "exp", tmp_path / "data") == {}
    assert render_conditions({}) == []
