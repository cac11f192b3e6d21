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


# ------------------------------------------------------------- unknown keys list their section's keys
def _error(tmp_path, text: str, model_cls, overrides=None) -> str:
    f = tmp_path / "c.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError) as exc:
        load_config(f, model_cls, overrides)
    return str(exc.value)


def _valid_keys(msg: str, section: str) -> list[str]:
    """The comma-separated key list after '<section>: ' in an unknown-key error."""
    tail = msg.split(f"{section}: ", 1)[1].splitlines()[0]
    return [k.strip() for k in tail.split(",")]


def test_unknown_top_level_key_lists_the_top_level_keys(tmp_path):
    msg = _error(tmp_path, "modle: {}\n", Outer)
    assert "c.yaml: modle: unknown key (did you mean 'model'?)" in msg
    assert _valid_keys(msg, "valid top-level keys") == ["model", "name"]


def test_unknown_nested_key_lists_the_keys_of_its_own_section(tmp_path):
    msg = _error(tmp_path, "model:\n  dropot: 0.2\n", Outer)
    assert "c.yaml: model.dropot: unknown key (did you mean 'dropout'?)" in msg
    assert _valid_keys(msg, "valid keys of model") == ["d_model", "dropout"]


@pytest.mark.parametrize("override, key, closest, section, some_valid", [
    ("train.max_epoch=3", "train.max_epoch", "max_epochs", "valid keys of train", {"max_epochs", "max_steps", "seed"}),
    ("kd.ctc_weigth=0.3", "kd.ctc_weigth", "ctc_weight", "valid keys of kd", {"store", "ctc_weight", "temperature"}),
    ("specaug.freq_mask=2", "specaug.freq_mask", "freq_masks", "valid keys of specaug", {"freq_masks", "time_masks"}),
    ("trian.seed=1", "trian", "train", "valid top-level keys", {"model", "data", "train", "kd"}),
])
def test_train_config_unknown_keys_name_their_section(tmp_path, override, key, closest, section, some_valid):
    from asr_kd.train.config import TrainConfig

    msg = _error(tmp_path, "model: {kind: lstm}\nkd: {store: s}\n", TrainConfig, [override])
    assert f"c.yaml: {key}: unknown key (did you mean '{closest}'?)" in msg
    valid = _valid_keys(msg, section)
    assert some_valid <= set(valid)
    assert key.split(".")[-1] not in valid


def test_model_union_unknown_key_lists_the_keys_of_the_chosen_kind(tmp_path):
    """``model:`` is a union on ``kind``: the key is shown as written (not pydantic's
    ``model.conformer.d_modell``) and the list is that kind's keys."""
    from asr_kd.train.config import TrainConfig

    conformer = _error(tmp_path, "model:\n  kind: conformer\n  d_modell: 96\n", TrainConfig)
    assert "c.yaml: model.d_modell: unknown key (did you mean 'd_model'?)" in conformer
    conformer_keys = _valid_keys(conformer, "valid keys of model (kind: conformer)")
    assert {"kind", "d_model", "nhead", "chunk_size", "left_chunks"} <= set(conformer_keys)

    lstm = _error(tmp_path, "model:\n  kind: lstm\n  hiden_size: 96\n", TrainConfig)
    assert "c.yaml: model.hiden_size: unknown key (did you mean 'hidden_size'?)" in lstm
    lstm_keys = _valid_keys(lstm, "valid keys of model (kind: lstm)")
    assert {"kind", "d_model", "hidden_size", "proj_size"} <= set(lstm_keys)
    assert "nhead" not in lstm_keys and "hidden_size" not in conformer_keys

    # a section inside the union member
    deep = _error(tmp_path, "model:\n  kind: conformer\n  dynamic_chunk: {chunk_size_mn: 2}\n", TrainConfig)
    assert "c.yaml: model.dynamic_chunk.chunk_size_mn: unknown key (did you mean 'chunk_size_min'?)" in deep
    assert {"chunk_size_min", "chunk_size_max"} <= set(_valid_keys(deep, "valid keys of model.dynamic_chunk"))


def test_dynamic_chunk_without_dynamic_chunk_training_is_refused():
    """``model.dynamic_chunk`` changed while ``dynamic_chunk_training`` is off would do nothing: refused,
    naming both keys; the defaults (as a resolved model.yaml writes them) and the key with training on
    are accepted. (Mutation caught: the check removed -> the setting is silently ignored.)"""
    from asr_kd.models.config import DynamicChunkSampling, parse_model_config

    streaming = {"kind": "conformer", "streaming": True, "chunk_size": 8, "left_chunks": 2}
    with pytest.raises(ConfigError, match="dynamic_chunk does nothing without dynamic_chunk_training"):
        parse_model_config({**streaming, "dynamic_chunk": {"chunk_size_max": 8}})
    parse_model_config({**streaming, "dynamic_chunk": DynamicChunkSampling().model_dump()})
    cfg = parse_model_config({**streaming, "dynamic_chunk_training": True, "dynamic_chunk": {"chunk_size_max": 8}})
    assert cfg.dynamic_chunk.chunk_size_max == 8
