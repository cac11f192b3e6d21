"""Typed, validated configs: YAML -> pydantic models that reject unknown keys.

``load_config(path, model_cls, overrides)`` reads a YAML file with ``yaml.safe_load`` (never the
unsafe loader), applies ``key.sub=value`` overrides from the command line, and validates the result
into ``model_cls``. Errors name the file and the dotted key, e.g.::

    conf/teacher.yaml: model.d_modle: unknown key (did you mean 'd_model'?); valid keys of model
    (kind: conformer): kind, d_model, num_layers, ...
"""

from __future__ import annotations

import difflib
import types
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, Union, get_args, get_origin

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


def _members(annotation: Any) -> list[Any]:
    """The types an annotation can hold: unwraps ``Annotated``, ``Optional`` and unions (None dropped)."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return _members(get_args(annotation)[0])
    if origin is Union or origin is types.UnionType:
        return [m for arg in get_args(annotation) for m in _members(arg)]
    return [] if annotation is type(None) else [annotation]


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, pydantic.BaseModel)


def _tags(cls: type[pydantic.BaseModel]) -> set[str]:
    """Names pydantic uses for a union member in an error location: the class name and the value of a
    ``Literal`` discriminator field (``kind: conformer``)."""
    tags = {cls.__name__}
    for field in cls.model_fields.values():
        if get_origin(field.annotation) is Literal:
            tags.update(str(v) for v in get_args(field.annotation))
    return tags


def _section(model_cls: type[pydantic.BaseModel], loc: tuple) -> tuple[list[str], Any, str | None]:
    """Walk an error location from ``model_cls``: (the keys as written in YAML, without pydantic's union
    tags; the annotation found at the end; the union member picked by the last tag, e.g. 'conformer')."""
    shown: list[str] = []
    current: Any = model_cls
    kind = None
    for part in loc:
        members = _members(current)
        models = [m for m in members if _is_model(m)]
        field_owner = [m for m in models if part in m.model_fields]
        if len(models) > 1 and not field_owner:
            picked = [m for m in models if str(part) in _tags(m)]
            if len(picked) == 1:
                current, kind = picked[0], str(part)
                continue
        if len(field_owner) == 1:
            shown.append(str(part))
            current, kind = field_owner[0].model_fields[part].annotation, None
            continue
        containers = [m for m in members if get_origin(m) in (list, tuple, set, frozenset, dict)]
        shown.append(str(part))
        if len(containers) == 1 and get_args(containers[0]):
            current, kind = get_args(containers[0])[-1], None  # list[X] / dict[str, X] -> X
        else:
            return shown + [str(p) for p in loc[len(shown):]], None, None
    return shown, current, kind


def _unknown_key(model_cls: type[pydantic.BaseModel], loc: tuple) -> tuple[str, str]:
    """(dotted key as written, hint) for an unknown key: the closest valid key of its section and all
    of that section's valid keys."""
    shown, annotation, kind = _section(model_cls, loc[:-1])
    key = ".".join(shown + [str(loc[-1])])
    models = [m for m in _members(annotation) if _is_model(m)] if annotation is not None else []
    if len(models) != 1:
        return key, ""
    names = list(models[0].model_fields)
    match = difflib.get_close_matches(str(loc[-1]), names, n=1)
    where = f"valid keys of {'.'.join(shown)}" if shown else "valid top-level keys"
    if kind is not None:
        where += f" (kind: {kind})"
    return key, (f" (did you mean {match[0]!r}?)" if match else "") + f"; {where}: {', '.join(names)}"


def validate_config(data: dict[str, Any], model_cls: type[T], source: str = "config") -> T:
    """Validate a mapping into ``model_cls``; raise one ConfigError listing every problem.

    An unknown key is reported where it was written (``model.d_modell``, not pydantic's
    ``model.conformer.d_modell``) with the closest valid key and every valid key of its section."""
    try:
        return model_cls.model_validate(data)
    except pydantic.ValidationError as exc:
        lines = []
        for err in exc.errors():
            loc = tuple(err["loc"])
            key = ".".join(str(p) for p in loc) or "<top>"
            if err["type"] == "extra_forbidden":
                key, hint = _unknown_key(model_cls, loc)
                lines.append(f"{source}: {key}: unknown key{hint}")
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
