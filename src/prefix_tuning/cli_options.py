"""Command-line options made from a config dataclass: one --option per field, its type, choices and help
taken from the field's annotation, default and docstring, so `--help` and the config cannot disagree."""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import itertools
import textwrap
import types
import typing


def field_docs(cls: type) -> dict[str, str]:
    """The docstring under each field of a config dataclass, read from its source (Python keeps none)."""
    body = ast.parse(textwrap.dedent(inspect.getsource(cls))).body[0].body
    return {
        node.target.id: " ".join(doc.value.value.split())
        for node, doc in itertools.pairwise(body)
        if isinstance(node, ast.AnnAssign)
        and isinstance(node.target, ast.Name)
        and isinstance(doc, ast.Expr)
        and isinstance(doc.value, ast.Constant)
        and isinstance(doc.value.value, str)
    }


def _yes_no_or(text: str) -> bool | str:
    return {"false": False, "true": True}.get(text.lower(), text)


def _option(hint) -> dict:
    """argparse keywords for a config field of type T, T | None, bool, or bool | Literal[...]."""
    args = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    args = [a for a in args if a is not type(None)]
    literals = [v for a in args if typing.get_origin(a) is typing.Literal for v in typing.get_args(a)]
    kinds = [a for a in args if typing.get_origin(a) is not typing.Literal]
    if kinds == [bool] and not literals:
        return {"action": argparse.BooleanOptionalAction}
    if literals:
        choices = ([False, True] if bool in kinds else []) + literals
        return {
            "type": _yes_no_or,
            "choices": choices,
            "metavar": "{" + ",".join(str(c).lower() if isinstance(c, bool) else c for c in choices) + "}",
        }
    (kind,) = kinds
    return {"type": kind, "metavar": kind.__name__.upper()}


def add_config_options(group, cls: type, aliases: dict[str, list[str]]) -> None:
    """One --option per field of a config dataclass, its help from the field's docstring and default (None when
    not given, so that only what the user typed overrides the run's config)."""
    hints, docs = typing.get_type_hints(cls), field_docs(cls)
    for f in dataclasses.fields(cls):
        default = "none" if f.default is None else str(f.default).lower() if isinstance(f.default, bool) else f.default
        text = f"{docs.get(f.name, '')} (new config: {default})".replace("%", "%%")
        group.add_argument(
            "--" + f.name.replace("_", "-"),
            *aliases.get(f.name, []),
            dest=f.name,
            default=None,
            help=text,
            **_option(hints[f.name]),
        )
