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


def _row(test_wer: float, params: float) -> dict:
    return {"test_wer": test_wer, "test_cer": test_wer / 2, "test_wer_streaming": None, "dev_wer": test_wer + 1,
            "params": params, "size_mb": params * 4 / 1e6, "latency_ms": None, "rtf": 0.01}


@pytest.mark.parametrize("teacher, baseline, kd, relative, recovered, kd_over_baseline, kd_over_teacher", [
    # by hand: (40 - 35) / 40 = 12.5 % relative; (40 - 35) / (40 - 20) = 25 % of the gap
    (20.0, 40.0, 35.0, "12.5", "25", "0.875", "1.75"),
    # the README's demo numbers: (84.09 - 82.48) / 84.09 = 1.915 %; 1.61 / 9.78 = 16.5 % -> "16"
    (74.31, 84.09, 82.48, "1.9", "16", "0.981", "1.11"),
    # KD worse than the baseline: a negative reduction and a negative share, not clipped
    (20.0, 40.0, 44.0, "-10.0", "-20", "1.100", "2.20"),
])
def test_headline_numbers_match_a_hand_computation(teacher, baseline, kd, relative, recovered, kd_over_baseline,
                                                   kd_over_teacher):
    """The report's two headline figures: relative WER reduction = (baseline - KD) / baseline and share of
    the teacher-baseline gap recovered = (baseline - KD) / (baseline - teacher). (Mutations caught: dividing
    by the KD WER, the gap taken as KD - teacher, the share rounded from the relative reduction.)"""
    from asr_kd.report import render

    text = render({"teacher": _row(teacher, 2.0e6), "baseline": _row(baseline, 0.5e6), "kd": _row(kd, 0.5e6)}, [])
    assert f"**{relative} % relative WER reduction** (KD / baseline = {kd_over_baseline})" in text, text
    assert f"gap that KD recovers: **{recovered} %** (KD / teacher = {kd_over_teacher})" in text, text
    assert "Student parameters: 25 % of the teacher's." in text
