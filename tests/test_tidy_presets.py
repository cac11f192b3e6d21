"""The model presets are the demo recipe's models, and the module docstring states their true sizes."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import yaml

import asr_kd.models.config as model_config
from asr_kd.models import PRESETS, build_model, parse_model_config

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "recipes" / "synth" / "conf"
VOCAB = 30  # the docstring's vocabulary size


def _recipe_model(name: str):
    return parse_model_config(yaml.safe_load((CONF / f"{name}.yaml").read_text())["model"])


@pytest.mark.parametrize("preset, recipes", [("demo_teacher", ["teacher"]),
                                             ("demo_student", ["student_baseline", "student_kd"])])
def test_demo_presets_are_the_synth_recipe_models(preset, recipes):
    for recipe in recipes:
        assert parse_model_config(PRESETS[preset]) == _recipe_model(recipe), (preset, recipe)


def _docstring_millions(label: str) -> float:
    m = re.search(rf"# {label} \((\d+\.\d+) M params", model_config.__doc__)
    assert m, f"no '# {label} (N.NN M params' line in asr_kd/models/config.py's docstring"
    return float(m.group(1))


@pytest.mark.parametrize("preset, label", [("demo_teacher", "demo teacher"),
                                           ("demo_student", "demo streaming student"),
                                           ("demo_lstm", "demo LSTM student")])
def test_docstring_parameter_counts_are_the_built_models(preset, label):
    torch.manual_seed(0)
    n = sum(p.numel() for p in build_model(parse_model_config(PRESETS[preset]), VOCAB).parameters())
    assert round(n / 1e6, 2) == _docstring_millions(label)


def test_docstring_preset_dicts_match_presets():
    """Every flow mapping in the docstring is a preset (up to the dropout the tiny presets set to 0)."""
    blocks = re.findall(r"\{kind:.*?\}", model_config.__doc__, flags=re.S)
    assert len(blocks) == 4
    documented = [yaml.safe_load(b) for b in blocks]
    for doc, name in zip(documented, ["tiny_conformer", "demo_teacher", "demo_student", "demo_lstm"]):
        preset = {k: v for k, v in PRESETS[name].items() if not (name.startswith("tiny") and k == "dropout")}
        assert doc == preset, name
