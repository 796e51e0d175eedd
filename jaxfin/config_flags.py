"""ml_collections config files with `--config.a.b=value` overrides, without absl.

    python -m jaxfin.train --config configs/lora_neftune.py --config.lora.rank=32 --config.model.path=/models/x

A config file defines `get_config() -> ConfigDict`. Overrides are parsed by the type of the key they replace
(placeholders declared with `config_dict.placeholder(type)` included), and every mistake (unknown key, bad
value, missing file) is one UserError line naming it, where ml_collections would raise a bare AttributeError.
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
import os
from typing import Any, Callable, Sequence

import ml_collections

from jaxfin.errors import UserError

_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


def load_config(path: str) -> ml_collections.ConfigDict:
    """Runs `get_config()` of the Python file at `path`."""
    if not os.path.isfile(path):
        raise UserError(f"--config: no such config file {path!r}")
    spec = importlib.util.spec_from_file_location(f"_jaxfin_config_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # a broken config file: one line naming it, like any other bad input
        raise UserError(f"{path}: cannot load the config file: {type(e).__name__}: {e}") from None
    if not hasattr(module, "get_config"):
        raise UserError(f"{path}: a config file must define get_config()")
    return module.get_config()  # a UserError of the config (e.g. a model package not installed) says it all


def _parse(key: str, text: str, kind: type, current: Any) -> Any:
    try:
        if kind is bool:
            if text.lower() not in _TRUE + _FALSE:
                raise ValueError
            return text.lower() in _TRUE
        if kind in (int, float):
            return kind(text)
        if kind in (tuple, list):
            try:
                value = ast.literal_eval(text)
            except (ValueError, SyntaxError):
                value = text
            items = [s.strip() for s in value.split(",") if s.strip()] if isinstance(value, str) else value
            return kind(items)
        if kind is str:
            return text
        return type(current)(ast.literal_eval(text))
    except (ValueError, TypeError, SyntaxError):
        raise UserError(f"--config.{key}={text}: expected a value of type {kind.__name__}") from None


def override(cfg: ml_collections.ConfigDict, key: str, text: str) -> None:
    """Sets the dotted `key` (e.g. "train.steps") from its command-line text."""
    node, parts = cfg, key.split(".")
    for i, part in enumerate(parts):
        here = ".".join(parts[: i + 1])
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
            siblings = list(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
            close = difflib.get_close_matches(part, siblings, n=1)
            hint = f"; did you mean {'.'.join(parts[:i] + close)!r}?" if close else ""
            raise UserError(f"unknown config key {here!r}{hint}")
        if i < len(parts) - 1:
            node = node[part]
    leaf = parts[-1]
    if isinstance(node[leaf], ml_collections.ConfigDict):
        raise UserError(f"config key {key!r} is a group; set one of its keys: {', '.join(node[leaf].keys())}")
    kind = node.get_type(leaf)
    value = _parse(key, text, kind, node[leaf])
    try:
        node[leaf] = value
    except TypeError as e:
        raise UserError(f"--config.{key}={text}: {e}") from None


def parse_args(argv: Sequence[str], default: Callable[[], ml_collections.ConfigDict]
               ) -> tuple[ml_collections.ConfigDict, list[str]]:
    """`--config FILE` (default: the config `default()` returns) and `--config.key=value` overrides -> locked
    ConfigDict. Returns the config and the arguments that were not config flags."""
    path, overrides, rest = None, [], []
    args = list(argv)
    while args:
        arg = args.pop(0)
        if arg == "--config" or arg.startswith("--config="):
            path = arg.split("=", 1)[1] if "=" in arg else (args.pop(0) if args else "")
        elif arg.startswith("--config."):
            key, eq, text = arg[len("--config."):].partition("=")
            if not eq:
                if not args:
                    raise UserError(f"--config.{key}: missing value")
                text = args.pop(0)
            overrides.append((key, text))
        else:
            rest.append(arg)
    cfg = default() if path is None else load_config(path)
    cfg.lock()
    for key, text in overrides:
        override(cfg, key, text)
    return cfg, rest


def usage(prog: str, description: str, default_name: str) -> str:
    """--help text of a config-file CLI."""
    return (f"usage: {prog} [--config FILE] [--config.KEY=VALUE ...]\n\n{description}\n\n"
            f"  --config FILE          an ml_collections config file defining get_config() (default: {default_name})\n"
            f"  --config.KEY=VALUE     override one key, parsed by its type (e.g. --config.train.steps=100)\n"
            f"  --debug                show the traceback of an error\n")
