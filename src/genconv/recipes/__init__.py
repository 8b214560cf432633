"""Named, reproducible experiments.

Each recipe is ``recipes/<name>.toml``: a ``[recipe]`` table naming the ``runner``
(``"module:function"``) and a one-line ``description``, plus the runner's settings and a
``[quick]`` table that overrides settings for ``--quick`` (smoke-test size). A runner has the
signature ``run(config: dict, out: Path, *, device, seed: int, quick: bool) -> dict`` and
writes ``config.toml``, ``results.json`` and its figures into ``out``.
"""
from __future__ import annotations

import importlib
import tomllib
from importlib import resources
from typing import Any

from genconv.errors import UserError


def available() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files(__package__).iterdir() if p.name.endswith(".toml"))


def load_recipe(name: str, quick: bool = False, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    names = available()
    if name not in names:
        raise UserError(f"unknown recipe {name!r}; available recipes: {', '.join(names)}")
    config = tomllib.loads(resources.files(__package__).joinpath(f"{name}.toml").read_text())
    quick_over = config.pop("quick", {})
    if quick:
        _merge(config, quick_over)
    for key, value in (overrides or {}).items():
        _set_dotted(config, key, value)
    config.setdefault("recipe", {})["name"] = name
    config["recipe"]["quick"] = quick
    return config


def runner(config: dict[str, Any]):
    target = config["recipe"]["runner"]
    module, func = target.split(":")
    return getattr(importlib.import_module(module), func)


def _merge(base: dict, over: dict) -> None:
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            _merge(base[k], v)
        else:
            base[k] = v


def _set_dotted(config: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    node = config
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise UserError(f"--set {key}: {p} is not a table in the recipe")
    node[parts[-1]] = value


def to_toml(config: dict[str, Any]) -> str:
    """Minimal TOML writer for the plain tables recipes use (str, int, float, bool, lists, tables)."""
    lines: list[str] = []

    def val(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, str):
            return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(val(x) for x in v) + "]"
        if v is None:
            return '""'
        raise TypeError(f"cannot write {type(v).__name__} to TOML")

    def table(prefix, d):
        scalars = {k: v for k, v in d.items() if not isinstance(v, dict)}
        if prefix and scalars:
            lines.append(f"[{prefix}]")
        for k, v in scalars.items():
            lines.append(f"{k} = {val(v)}")
        if scalars:
            lines.append("")
        for k, v in d.items():
            if isinstance(v, dict):
                table(f"{prefix}.{k}" if prefix else k, v)

    table("", config)
    return "\n".join(lines)
