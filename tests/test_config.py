"""Configs: unknown keys are errors naming the key, overrides apply, YAML is loaded safely."""

from __future__ import annotations

import pytest

from asr_kd.config import StrictModel, load_config
from asr_kd.errors import ConfigError


class Inner(StrictModel):
    d_model: int = 64
    dropout: float = 0.1


class Outer(StrictModel):
    model: Inner = Inner()
    name: str = "x"


def test_unknown_key_names_key_and_suggests(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("model:\n  d_modle: 32\n")
    with pytest.raises(ConfigError) as exc:
        load_config(f, Outer)
    msg = str(exc.value)
    assert "c.yaml: model.d_modle: unknown key" in msg
    assert "did you mean 'd_model'" in msg


def test_wrong_type_names_key(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("model:\n  d_model: big\n")
    with pytest.raises(ConfigError, match="model.d_model"):
        load_config(f, Outer)


def test_overrides_are_parsed_as_yaml_values(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("name: a\n")
    cfg = load_config(f, Outer, ["model.d_model=128", "model.dropout=0.25", "name=b"])
    assert cfg.model.d_model == 128 and cfg.model.dropout == 0.25 and cfg.name == "b"
    with pytest.raises(ConfigError, match="expected key=value"):
        load_config(f, Outer, ["model.d_model"])
    with pytest.raises(ConfigError, match="model.d_modle: unknown key"):
        load_config(f, Outer, ["model.d_modle=3"])


def test_yaml_python_tags_are_refused(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("name: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(f, Outer)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml", Outer)
