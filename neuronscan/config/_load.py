"""Load a YAML config, apply command-line overrides, and report every problem at once."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from neuronscan.config._schema import RunConfig
from neuronscan.errors import ConfigError


class _UniqueKeyLoader(yaml.SafeLoader):
    """A safe YAML loader that refuses a key given twice in one mapping (YAML would keep the last silently)."""

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _value in node.value:
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, (str, int, float, bool)) and key is not None:
                continue  # an unhashable key is the base loader's error to report
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    "while reading a mapping", node.start_mark,
                    f"key {key!r} appears twice (first on line {seen[key] + 1}); keep one", key_node.start_mark,
                )
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


# YAML 1.1 (PyYAML) reads 1e-3 and 1.5e3 as strings: a float needs a dot and a signed exponent. Read them as the
# numbers they are (YAML 1.2 does), so strict number keys take them and a quoted "1e-3" stays a string.
_UniqueKeyLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)

__all__ = ["load_config", "parse_overrides", "apply_overrides", "config_from_dict"]


def _dotted(loc: tuple[Any, ...]) -> str:
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        else:
            parts.append(("." if parts else "") + str(item))
    return "".join(parts) or "<root>"


def _fields_at(loc: tuple[Any, ...]) -> list[str]:
    """Field names of the config section at ``loc[:-1]`` (for close-match hints)."""
    import typing

    from pydantic import BaseModel

    model: Any = RunConfig
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part) if isinstance(model, type) and issubclass(model, BaseModel) else None
        if field is None:
            return []
        ann = field.annotation
        candidates = [ann, *typing.get_args(ann)]
        model = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
        if model is None:
            return []
    return list(model.model_fields) if isinstance(model, type) and issubclass(model, BaseModel) else []


def _suggest(loc: tuple[Any, ...]) -> str:
    import difflib

    names = _fields_at(loc)
    close = difflib.get_close_matches(str(loc[-1]), names, n=1, cutoff=0.6) if loc else []
    if close:
        return f"; did you mean '{close[0]}'?"
    return f"; expected one of: {', '.join(names)}" if names else ""


def _as_yaml(value: Any) -> str:
    """``value`` as it would be written in YAML: true, null, 2.5, "yes"."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(value)


_EXPECTED = {
    "int_type": "expected an integer",
    "float_type": "expected a number",
    "finite_number": "expected a finite number",
    "bool_type": "expected true or false",
}


def _type_problem(kind: str, value: Any) -> str:
    """``expected an integer, got true`` (strict numbers and switches), with a hint for quoted values."""
    msg = f"{_EXPECTED[kind]}, got {_as_yaml(value)}"
    if kind == "bool_type":
        if isinstance(value, str) and value.strip().lower() in ("true", "false"):
            return msg + f" (a quoted string: write {value.strip().lower()} without quotes)"
        return msg + " (write true or false)"
    if isinstance(value, str):
        try:
            number = yaml.load(value, Loader=_UniqueKeyLoader)
        except yaml.YAMLError:
            number = None
        if isinstance(number, (int, float)) and not isinstance(number, bool):
            msg += " (a quoted string: write it without quotes)"
    elif kind == "int_type" and isinstance(value, float) and value.is_integer():
        msg += f" (write {int(value)})"
    return msg


def _format_errors(exc: ValidationError) -> list[str]:
    problems = []
    for err in exc.errors():
        # pydantic's union/tagged locations carry type names; keep only the user's keys.
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and ("[" in p or p.startswith("function-"))))
        key = _dotted(loc)
        msg = err["msg"]
        value = err.get("input")
        if err["type"] in _EXPECTED:
            problems.append(f"{key}: {_type_problem(err['type'], value)}")
            continue
        if err["type"] == "extra_forbidden":
            msg = "unknown key" + _suggest(loc)
        elif err["type"] == "missing":
            msg = "required key is missing"
        shown = "" if err["type"] in ("missing", "extra_forbidden") or isinstance(value, dict) else f" (got {value!r})"
        if shown and loc and _SECRET_KEY.search(str(loc[-1])):
            shown = " (the value is not shown: it may be a credential)"
        problems.append(f"{key}: {msg}{shown}")
    return problems


_SECRET_KEY = re.compile(r"key|secret|token|passw", re.IGNORECASE)
"""Config keys whose refused values an error message never echoes (``api_key_env`` given the key itself)."""


def parse_overrides(items: list[str] | None) -> dict[str, Any]:
    """Parse ``key.path=value`` strings; values are read as YAML, as in a config file (``probe.batch_size=32`` is
    the integer 32, ``probe.autocast=false`` a bool, ``score.alpha=1e-3`` a float, ``model.layers=[a,b]`` a list).
    """
    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError("--set", [f"{item!r}: expected KEY=VALUE, e.g. probe.batch_size=32"])
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key:
            raise ConfigError("--set", [f"{item!r}: empty key"])
        try:
            out[key] = yaml.load(raw, Loader=_UniqueKeyLoader) if raw != "" else None
        except yaml.YAMLError as exc:
            raise ConfigError("--set", [f"{key}: value {raw!r} is not valid YAML ({exc})"]) from exc
    return out


def apply_overrides(raw: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Return a copy of ``raw`` with dotted-key overrides set (creating sections as needed)."""
    import copy

    data = copy.deepcopy(raw)
    for key, value in overrides.items():
        node = data
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = {}
                node[part] = child
            node = child
        node[parts[-1]] = value
    return data


def config_from_dict(raw: Any, source: str = "<config>") -> RunConfig:
    """Validate a parsed config mapping; raise ConfigError listing every problem."""
    if not isinstance(raw, dict):
        raise ConfigError(source, [f"the top level must be a mapping of sections, got {type(raw).__name__}"])
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(source, _format_errors(exc)) from None


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> RunConfig:
    """Read, override and validate a YAML run config.

    Args:
        path: the YAML file.
        overrides: dotted keys to set after reading (from ``--set`` and flags such as ``--out``).

    Returns:
        The validated :class:`RunConfig`.

    Raises:
        ConfigError: the file is missing, not YAML, or fails validation (every problem listed,
            each with its dotted key).

    Example:
        >>> cfg = load_config("configs/demo.yaml", {"probe.batch_size": 32})  # doctest: +SKIP
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(str(path), ["file not found"])
    try:
        raw = yaml.load(path.read_text(), Loader=_UniqueKeyLoader) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise ConfigError(str(path), [f"{where}not valid YAML ({getattr(exc, 'problem', exc)})"]) from None
    if overrides:
        if not isinstance(raw, dict):
            raise ConfigError(str(path), ["the top level must be a mapping of sections"])
        raw = apply_overrides(raw, overrides)
    return config_from_dict(raw, str(path))
