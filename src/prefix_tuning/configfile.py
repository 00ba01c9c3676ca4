"""Configs as files: YAML in (with `key=value` overrides and typed reading), `config.yaml` out.

A `RunConfig` (`config.py`) is loaded from YAML, patched by `key=value` overrides from the command line, type-
checked against the dataclasses' annotations (choices from their `Literal`s), validated, and saved as
`config.yaml` in the run dir so that the run dir alone is enough to rebuild the model and decode (litgpt's
habit). Unknown keys fail loudly with the list of valid ones: a typo must never be silently ignored. Errors
about a file say `file:line: key: what; expected what`.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import types
from dataclasses import fields
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import yaml

from .checkpoint import atomic_path
from .config import ConfigError, RunConfig, show_value, valid_keys, validate

_NO = object()
_MERGE = "tag:yaml.org,2002:merge"
# What PyYAML raises on hostile text: its own errors, RecursionError on deep nesting, and from its constructors
# plain ValueError (`2001-02-30`, ints of over 4300 digits) and AttributeError (`!!timestamp x`).
_YAML_FAILURES = (yaml.YAMLError, RecursionError, ValueError, TypeError, AttributeError, OverflowError)


def _name(key: Any) -> str:
    """A YAML mapping key as text (YAML keys may be numbers, null, dates, ...)."""
    return key if isinstance(key, str) else show_value(key)


def _describe(typ: Any) -> str:
    """What a field type accepts, in words for messages: `an integer or null`, `one of raw, tokenized`."""
    if get_origin(typ) in (Union, types.UnionType):
        return " or ".join(_describe(t) for t in get_args(typ))
    if get_origin(typ) is Literal:
        args = get_args(typ)
        return repr(args[0]) if len(args) == 1 else "one of " + ", ".join(map(str, args))
    names = {type(None): "null", bool: "true/false", int: "an integer", float: "a number", str: "a string"}
    return names.get(typ, str(typ))


def _accept(value: Any, typ: Any) -> Any:
    """`value` as a field of type `typ`, or _NO. Types are read with typing.get_origin/get_args, so a new field
    type works exactly or fails loudly. Mild coercions only: an integral float to int, an int to float, a
    number string to float (YAML 1.1 reads "8e-5" as a string), a number to str."""
    if get_origin(typ) in (Union, types.UnionType):
        return next((v for t in get_args(typ) if (v := _accept(value, t)) is not _NO), _NO)
    if get_origin(typ) is Literal:
        return value if any(type(value) is type(c) and value == c for c in get_args(typ)) else _NO
    if typ is type(None) or typ is bool:
        return value if isinstance(value, typ) else _NO
    if isinstance(value, bool) or value is None:  # true/false is neither a number nor a string here
        return _NO
    if typ is int:  # 64-bit: every count and seed fits, and YAML can write it back (not over 4300 digits)
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        return value if isinstance(value, int) and abs(value) < 2**63 else _NO
    if typ is float:
        try:
            number = float(value) if isinstance(value, (int, float, str)) else math.nan
        except (ValueError, OverflowError):
            number = math.nan
        return number if math.isfinite(number) else _NO
    if typ is str:
        return str(value) if isinstance(value, str | float) or (isinstance(value, int) and abs(value) < 2**63) else _NO
    raise TypeError(f"config field type {typ!r} is not supported by _accept")


def _coerce(value: Any, typ: Any, key: str) -> Any:
    """Check (and mildly coerce, see `_accept`) a YAML value against a dataclass field type."""
    out = _accept(value, typ)
    if out is not _NO:
        return out
    if value is None:
        raise ConfigError(f"{key}: null is not allowed; expected {_describe(typ)}", (key,))
    if type(value) is int and (typ is int or int in get_args(typ)):
        raise ConfigError(f"{key}: {show_value(value)} is too large; expected {_describe(typ)} below 2**63", (key,))
    if get_origin(typ) is Literal:
        raise ConfigError(f"{key}: {show_value(value)} is not one of {', '.join(map(str, get_args(typ)))}", (key,))
    raise ConfigError(f"{key}: expected {_describe(typ)}, got {show_value(value)}", (key,))


def _unknown(key: str, valid: list[str]) -> ConfigError:
    close = difflib.get_close_matches(key.rsplit(".", 1)[-1], [v.rsplit(".", 1)[-1] for v in valid], n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    return ConfigError(f"unknown config key {show_value(key, 200)}.{hint} Valid keys: {', '.join(valid)}", (key,))


def _build(cls: type, data: dict[str, Any], prefix: str) -> Any:
    hints = get_type_hints(cls)
    names = [f.name for f in fields(cls)]
    if not isinstance(data, dict):
        where = prefix.rstrip(".")
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {show_value(data)}", (where,) if where else ())
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            raise _unknown(prefix + _name(key), [prefix + n for n in names])
        typ = hints[key]
        if dataclasses.is_dataclass(typ):
            kwargs[key] = _build(typ, {} if value is None else value, prefix + key + ".")
        else:
            kwargs[key] = _coerce(value, typ, prefix + key)
    return cls(**kwargs)


def from_dict(data: dict[str, Any]) -> RunConfig:
    cfg = _build(RunConfig, data, "")
    validate(cfg)
    return cfg


def to_dict(cfg: RunConfig) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def _override_key(item: str) -> str:
    return item.split("=", 1)[0].strip().lstrip("-")


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `a.b=value` overrides (value parsed as YAML) to a nested dict, rejecting unknown keys."""
    valid = valid_keys()
    data = {k: (dict(v) if isinstance(v, dict) else v) for k, v in data.items()}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {show_value(item, 200)} is not of the form key=value (e.g. train.lr=1e-4)")
        key, raw = _override_key(item), item.split("=", 1)[1]
        if key not in valid:
            raise _unknown(key, valid)
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except _YAML_FAILURES as e:
            raise ConfigError(
                f"override {show_value(item, 200)}: the value is not valid YAML ({_yaml_problem(e)}); "
                "expected e.g. train.lr=1e-4 or model.name='a b'",
                (key,),
            ) from None
        node = data
        *parents, leaf = key.split(".")
        for i, p in enumerate(parents):
            section = ".".join(parents[: i + 1])
            if node.get(p) is None:
                node[p] = {}
            elif not isinstance(node[p], dict):
                raise ConfigError(f"{section}: expected a mapping, got {show_value(node[p])}", (section,))
            node = node[p]
        node[leaf] = value
    return data


def _yaml_problem(e: BaseException) -> str:
    if isinstance(e, RecursionError):
        return "nested too deeply"
    return str(getattr(e, "problem", None) or e).partition("\n")[0]


def _construct(loader: yaml.SafeLoader, node: yaml.ScalarNode, p: Path) -> Any:
    try:
        return loader.construct_object(node)
    except _YAML_FAILURES as e:
        line = node.start_mark.line + 1
        raise ConfigError(f"{p}:{line}: invalid YAML value {node.value[:80]!r} ({_yaml_problem(e)})") from None


def _key_lines(loader: yaml.SafeLoader, root: yaml.Node, p: Path) -> dict[str, int]:
    """Line of each dotted key. Walks the nodes before construction (which flattens `<<` merges into them),
    building every scalar so that a bad one (`2001-02-30`) is reported at its own line; rejects a key written
    twice (YAML would keep the last one silently)."""
    lines: dict[str, int] = {}
    stack: list[tuple[yaml.Node, str | None]] = [(root, "")]
    seen: set[int] = set()
    while stack:
        node, prefix = stack.pop()
        if prefix is None:  # below the keys (config keys are `section.key`): each node once, so `&a [*a]` ends
            if id(node) in seen:
                continue
            seen.add(id(node))
        if isinstance(node, yaml.ScalarNode) and node.tag != _MERGE:
            _construct(loader, node, p)
        if isinstance(node, yaml.SequenceNode):
            stack += [(child, None) for child in node.value]
        elif isinstance(node, yaml.MappingNode):
            for knode, vnode in node.value:
                key = None
                if prefix is not None and isinstance(knode, yaml.ScalarNode) and knode.tag != _MERGE:
                    key, line = prefix + _name(_construct(loader, knode, p)), knode.start_mark.line + 1
                    if key in lines:
                        raise ConfigError(
                            f"{p}:{line}: duplicate key '{key}' (first on line {lines[key]}); expected each key once"
                        )
                    lines[key] = line
                stack += [(knode, None), (vnode, key + "." if key is not None and not prefix else None)]
    return lines


def _read_yaml(p: Path) -> tuple[Any, dict[str, int]]:
    """A config file's YAML and the line of each dotted key in it, so that errors can say `file:line`."""
    raw = p.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise ConfigError(
            f"{p}:{line}: not valid UTF-8 (byte 0x{raw[e.start]:02x}); expected a UTF-8 YAML file"
        ) from None
    loader = None
    try:
        loader = yaml.SafeLoader(text)  # checks the characters: may raise
        root = loader.get_single_node()
        if root is None:
            return None, {}
        lines = _key_lines(loader, root, p)
        return loader.construct_document(root), lines
    except _YAML_FAILURES as e:
        if isinstance(e, ConfigError):
            raise
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        line = (
            mark.line + 1
            if mark is not None  # ReaderError: a character YAML forbids (NUL, controls)
            else text[: e.position].count("\n") + 1
            if isinstance(e, yaml.reader.ReaderError)
            else 1
        )
        raise ConfigError(
            f"{p}:{line}: invalid YAML ({_yaml_problem(e)}); expected a mapping of sections "
            "(model, data, method, train, decode)"
        ) from None
    finally:
        if loader is not None:
            loader.dispose()


def load_config(path: str | os.PathLike | None, overrides: list[str] = ()) -> RunConfig:
    """Load a YAML config (or the defaults when path is None), apply overrides, validate.
    Errors about the file say `file:line: key: what; expected what`."""
    data: Any = {}
    lines: dict[str, int] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        data, lines = _read_yaml(p)
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ConfigError(
                f"{p}:1: expected a mapping of sections (model, data, method, train, decode), got {type(data).__name__}"
            )
    try:
        return from_dict(apply_overrides(data, list(overrides)))
    except ConfigError as e:
        if path is None:
            raise
        overridden = {_override_key(o) for o in overrides}
        keys = [k for k in e.keys if k not in overridden]
        # the key's own line, else its section's (a key that came from a `<<` merge has none)
        found = [lines[k] for k in keys + [k.split(".")[0] for k in keys] if k in lines]
        raise ConfigError(f"{path}:{found[0]}: {e}" if found else f"{path}: {e}", e.keys) from None


def save_config(cfg: RunConfig, path: str | os.PathLike) -> None:
    """Write the resolved config atomically (a crash never leaves half a config.yaml)."""
    with atomic_path(Path(path)) as tmp:
        tmp.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False), encoding="utf-8")
