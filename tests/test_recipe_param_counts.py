"""Every recipe config states its model's parameter count truly, and every student is <= 25 % of its
recipe's teacher (the project's size rule for on-device students).

The count is read from the config's comments (the first "N M params"), the model is built from the
config's ``model`` section with the recipe's output units (BPE: ``units.bpe_vocab_size``; characters: the
synthetic corpus's 30 units), and the two must agree to the stated precision. Mutation tried: the
LibriSpeech teacher comment back at "~30 M" (the count is 19.5 M) -> fails; the LibriSpeech students
back at 12 layers (6.2 M = 32 % of the teacher) -> fails.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from pydantic import TypeAdapter

from asr_kd.models import build_model
from asr_kd.models.config import ModelConfig

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted(p for p in (ROOT / "recipes").glob("*/conf/**/*.yaml") if "model" in yaml.safe_load(p.read_text()))
CHAR_UNITS = 30  # blank, <unk>, the word boundary, apostrophe and a-z: the synthetic corpus's characters
STATED = re.compile(r"#.*?(\d+(?:\.\d+)?) M param")


def _units(config: dict, conf_dir: Path) -> int:
    units = config.get("units", {})
    if units.get("from_model"):  # a student shares its teacher's units
        units = yaml.safe_load((conf_dir / "teacher.yaml").read_text()).get("units", {})
    return int(units.get("bpe_vocab_size", 500)) if units.get("kind") == "bpe" else CHAR_UNITS


def _count(path: Path) -> int:
    config = yaml.safe_load(path.read_text())
    model = build_model(TypeAdapter(ModelConfig).validate_python(config["model"]), _units(config, path.parent))
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(ROOT / "recipes")))
def test_stated_parameter_count_is_the_built_models(path):
    match = STATED.search(path.read_text())
    assert match, f"{path}: no '<N> M params' in its comments"
    stated = float(match.group(1))
    decimals = len(match.group(1).partition(".")[2])
    actual = _count(path) / 1e6
    assert round(actual, decimals) == pytest.approx(stated), f"{path}: comment says {stated} M, the model has {actual:.3f} M"


@pytest.mark.parametrize("path", [p for p in CONFIGS if p.name.startswith("student")],
                         ids=lambda p: str(p.relative_to(ROOT / "recipes")))
def test_student_is_at_most_a_quarter_of_its_teacher(path):
    share = _count(path) / _count(path.parent / "teacher.yaml")
    assert share <= 0.25, f"{path}: {share:.1%} of the teacher's parameters"
