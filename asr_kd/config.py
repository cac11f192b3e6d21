"""Typed, validated configs: YAML -> pydantic models that reject unknown keys.

``load_config(path, model_cls, overrides)`` reads a YAML file with ``yaml.safe_load`` (never the
unsafe loader), applies ``key.sub=value`` overrides from the command line, and validates the result
into ``model_cls``. Errors name the file and the dotted key, e.g.::

    conf/teacher.yaml: model.d_modle: unknown key (did you mean 'd_model'?)
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, TypeVar

import pydantic
import yaml

from asr_kd.errors import ConfigError

T = TypeVar("T", bound=pydantic.BaseModel)


class StrictModel(pydantic.BaseModel):
    """Base for every config section: unknown keys are errors, values are validated on assignment."""

    model_config = pydantic.ConfigDict(extra="forbid", validate_assignment=True)


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping safely; an empty file is an empty mapping."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of keys, got {type(data).__name__}")
    return data


def apply_overrides(data: dict[str, Any], overrides: list[str] | None) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides (value parsed as YAML: ``3``, ``true``, ``[1,2]``, ``text``)."""
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key=value, e.g. train.max_epochs=3")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError as exc:
            raise ConfigError(f"override {item!r}: value is not valid YAML: {exc}") from None
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: {part!r} is a value, not a section")
            node = child
        node[parts[-1]] = value
    return data


def _suggest(model_cls: type[pydantic.BaseModel], loc: tuple) -> str:
    """Closest valid key name for an unknown key, walking nested model fields along ``loc``."""
    cls: Any = model_cls
    for part in loc[:-1]:
        field = getattr(cls, "model_fields", {}).get(part)
        if field is None:
            return ""
        cls = field.annotation
    names = list(getattr(cls, "model_fields", {}).keys())
    match = difflib.get_close_matches(str(loc[-1]), names, n=1)
    return f" (did you mean {match[0]!r}?)" if match else f" (valid keys: {', '.join(names)})"


def validate_config(data: dict[str, Any], model_cls: type[T], source: str = "config") -> T:
    """Validate a mapping into ``model_cls``; raise one ConfigError listing every problem."""
    try:
        return model_cls.model_validate(data)
    except pydantic.ValidationError as exc:
        lines = []
        for err in exc.errors():
            loc = tuple(err["loc"])
            key = ".".join(str(p) for p in loc) or "<top>"
            if err["type"] == "extra_forbidden":
                lines.append(f"{source}: {key}: unknown key{_suggest(model_cls, loc)}")
            else:
                lines.append(f"{source}: {key}: {err['msg']} (got {err.get('input')!r})")
        raise ConfigError("\n".join(lines)) from None


def load_config(path: str | Path, model_cls: type[T], overrides: list[str] | None = None) -> T:
    """Read YAML at ``path``, apply overrides, validate into ``model_cls``."""
    data = apply_overrides(read_yaml(path), overrides)
    return validate_config(data, model_cls, source=str(path))


def dump_config(config: pydantic.BaseModel, path: str | Path) -> None:
    """Write the fully resolved config (defaults included) as YAML."""
    Path(path).write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False), encoding="utf-8")
