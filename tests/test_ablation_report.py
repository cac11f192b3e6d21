"""``asr-kd report --ablation``: one row per variant, the change relative to its reference row
computed as (variant - reference) / reference, and the overrides it was trained with."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from asr_kd.cli import main as cli_main
from asr_kd.report import collect_ablation


def _variant(root: Path, name: str, wer: float, cer: float, argv: list[str]) -> None:
    d = root / name
    (d / "eval_dev").mkdir(parents=True)
    (d / "eval_dev" / "wer.json").write_text(json.dumps({"wer": wer, "cer": cer}))
    (d / "env.json").write_text(json.dumps({"command": argv}))
    (d / "meta.json").write_text(json.dumps({"steps": 100}))


def test_ablation_rows_are_relative_to_their_reference(tmp_path, capsys):
    _variant(tmp_path, "teacher_ref", 50.0, 20.0, ["asr-kd", "train", "data.dev=x"])
    _variant(tmp_path, "teacher_20ms", 40.0, 15.0, ["asr-kd", "train", "data.dev=x", "model.subsampling=2",
                                                   "--gcs-address=127.0.0.1:1"])  # an option, not an override
    _variant(tmp_path, "kd_ref", 80.0, 40.0, ["asr-kd", "train", "kd.store=s"])
    _variant(tmp_path, "kd_last", 88.0, 44.0, ["asr-kd", "train", "kd.store=s", "train.final=last"])
    _variant(tmp_path, "baseline_spec", 70.0, 30.0, ["asr-kd", "train"])  # no baseline_ref: no relative figure
    (tmp_path / "kd_unfinished").mkdir()  # no eval_dev: not a row
    rows = {r["name"]: r for r in collect_ablation(tmp_path)}
    assert sorted(rows) == ["baseline_spec", "kd_last", "kd_ref", "teacher_20ms", "teacher_ref"]
    assert rows["teacher_20ms"]["relative"] == pytest.approx(-20.0)
    assert rows["kd_last"]["relative"] == pytest.approx(10.0)
    assert "relative" not in rows["baseline_spec"] and "relative" not in rows["kd_ref"]
    assert rows["teacher_20ms"]["overrides"] == "model.subsampling=2"  # data paths left out

    assert cli_main(["report", "--ablation", str(tmp_path), "--out", str(tmp_path / "ablation.md")]) == 0
    table = (tmp_path / "ablation.md").read_text()
    assert "| teacher_20ms | 40.00 | 15.00 | -20.0 % rel. | 100 |" in table
    assert "| kd_ref | 80.00 | 40.00 | reference |" in table


def test_ablation_report_of_an_empty_dir_says_what_to_run(tmp_path, capsys):
    assert cli_main(["report", "--ablation", str(tmp_path), "--out", str(tmp_path / "a.md")]) != 0
    assert "run recipes/synth/ablation.sh first" in capsys.readouterr().err
    assert not (tmp_path / "a.md").exists()


def test_posteriorgram_rows_are_the_units_that_fire_labeled_with_their_symbols():
    import numpy as np

    from asr_kd.report import posteriorgram_rows

    symbols = {0: "<blk>", 1: "▁", 2: "a", 3: "b", 4: "c"}
    teacher = np.zeros((5, 4))
    teacher[0] = [0.9, 0.1, 0.9, 0.9]
    teacher[3, 1] = 0.8  # "b" fires once
    student = np.zeros((5, 4))
    student[1, 2] = 0.06  # "▁" just above the threshold in the other model
    rows, labels = posteriorgram_rows([teacher, student], symbols)
    assert rows == [0, 1, 3] and labels == ["<blk>", "▁", "b"]
    rows, labels = posteriorgram_rows([teacher, student], symbols, max_rows=2)
    assert labels == ["<blk>", "b"]  # the strongest two, in id order
