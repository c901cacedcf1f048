"""`[env.<name>]` manifest sections: what changes when the app runs as one named environment
(``edgeworks dev|serve|deploy --env NAME``, or ``EDGEWORKS_ENV``), as wrangler environments do.

Shape, in ``edgeworks.toml``::

    [env.production.scripts.app]        # keys of the [[scripts]] table named "app"
    vars = { MODE = "production" }
    routes = ["/api/*"]
    limits = { cpu_ms = 50 }

    [env.production.ai]                 # a top-level section: replaces the base one whole

Merge rules, chosen so that an environment says only what differs:
- a top-level section (``ai``, ``auth``, ``risk``, ``deploy``...) replaces the base one whole;
- ``scripts.<name>`` names a script of the base by its name (it cannot rename it); each of its
  keys replaces the script's key, except tables (``vars``, ``limits``, a binding's table), which
  are merged key by key, recursively; arrays (``routes``, ``secrets``, binding lists) replace.

`load_app` validates the base and every environment (merged over the base), so a typo in an
environment that is not selected today is still found; a problem that comes from an
environment's own keys names its full key path (``env.production.scripts.app.limits.cpu_ms``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

__all__ = ["ENV_NAME", "UnknownEnvironment", "attribute", "overlay", "split"]

ENV_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$")  # it also names `.dev.vars.<env>`
_PATH_PART = re.compile(r"\[(\d+)\]|\.?([^.\[]+)")


class UnknownEnvironment(LookupError):
    """``--env NAME`` names no ``[env.NAME]`` section; the message lists the defined ones."""


def _key(prefix: str, path: str) -> str:
    return f"{prefix}.{path}" if prefix else path


def split(data: dict[str, Any], selected: str | None, source: str,
          prefix: str) -> tuple[dict[str, Any], dict[str, dict[str, Any]], list[str]]:
    """The manifest without its ``env`` table, the well-formed environments by name, and the
    problems of the ``env`` table's shape. Raises UnknownEnvironment when `selected` is not
    defined."""
    raw = data.get("env", {})
    base = {k: v for k, v in data.items() if k != "env"}
    problems: list[str] = []
    envs: dict[str, dict[str, Any]] = {}
    if not isinstance(raw, dict):
        problems.append(f"{source}: {_key(prefix, 'env')}: expected a table of environments ([env.<name>])")
        raw = {}
    for name, section in raw.items():
        where = f"{source}: {_key(prefix, f'env.{name}')}"
        if not ENV_NAME.match(name):
            problems.append(f"{where}: an environment name is letters, digits, '-' and '_' (up to 63)")
        elif not isinstance(section, dict):
            problems.append(f"{where}: expected a table")
        elif "env" in section:
            problems.append(f"{where}.env: environments do not nest")
        else:
            envs[name] = section
    if selected is not None and selected not in raw:
        defined = ", ".join(sorted(raw)) or "none"
        raise UnknownEnvironment(f"{source}: {_key(prefix, 'env')}: no environment named {selected!r} "
                                 f"(defined: {defined})")
    return base, envs, problems


def _merge(base: Any, override: Any) -> Any:
    if isinstance(base, dict) and isinstance(override, dict):
        return {**base, **{k: _merge(base.get(k), v) for k, v in override.items()}}
    return override


def overlay(base: dict[str, Any], name: str, section: dict[str, Any], source: str,
            prefix: str) -> tuple[dict[str, Any], list[str]]:
    """The manifest of environment `name` (its `section` merged over `base`, see the module
    docstring) and the problems of the section's own shape."""
    problems: list[str] = []
    merged = {**base, **{k: v for k, v in section.items() if k != "scripts"}}
    overrides = section.get("scripts", {})
    where = f"{source}: {_key(prefix, f'env.{name}.scripts')}"
    if not isinstance(overrides, dict):
        problems.append(f"{where}: expected a table of scripts by name ([env.{name}.scripts.<script>])")
        return merged, problems
    scripts = base.get("scripts")
    known = [s.get("name") for s in scripts if isinstance(s, dict)] if isinstance(scripts, list) else []
    for script, table in overrides.items():
        if script not in known:
            problems.append(f"{where}.{script}: no script named {script!r} "
                            f"(scripts: {', '.join(str(n) for n in known) or 'none'})")
        elif not isinstance(table, dict):
            problems.append(f"{where}.{script}: expected a table of the script's keys")
        elif "name" in table:
            problems.append(f"{where}.{script}.name: a script keeps its name in every environment")
    if isinstance(scripts, list):
        merged["scripts"] = [
            _merge(s, overrides[s["name"]])
            if isinstance(s, dict) and isinstance(overrides.get(s.get("name")), dict)
            and "name" not in overrides[s["name"]] else s
            for s in scripts
        ]
    return merged, problems


def _parts(path: str) -> list[str | int]:
    return [int(m.group(1)) if m.group(1) is not None else m.group(2) for m in _PATH_PART.finditer(path)]


def _owned(node: Any, parts: list[str | int]) -> bool:
    """Whether the value at `parts` comes from the environment's table `node`: following the
    path down its tables, a key it does not have comes from the base; an array or a value it
    sets replaces the base's whole."""
    for part in parts:
        if not isinstance(node, dict):
            return True
        if not isinstance(part, str) or part not in node:
            return False
        node = node[part]
    return True


def attribute(problems: list[str], name: str, section: dict[str, Any], base: dict[str, Any],
              seen: set[str], source: str, prefix: str) -> list[str]:
    """The problems of environment `name`'s merged manifest, each naming the key path where the
    user can fix it: a key the environment sets is named under ``env.<name>``; one from the base
    that the base alone already reported (`seen`) is dropped, any other says which environment
    made it a problem."""
    scripts: list[Any] = base["scripts"] if isinstance(base.get("scripts"), list) else []
    overrides: dict[str, Any] = section["scripts"] if isinstance(section.get("scripts"), dict) else {}
    lead = f"{source}: {prefix + '.' if prefix else ''}"
    out: list[str] = []
    for line in problems:
        if line in seen:
            continue
        head, sep, message = line[len(lead):].partition(": ") if line.startswith(lead) else ("", "", "")
        parts = _parts(head) if sep else []
        moved: str | None = None
        if len(parts) >= 2 and parts[0] == "scripts" and isinstance(parts[1], int) and parts[1] < len(scripts):
            script = scripts[parts[1]]
            sname = script.get("name") if isinstance(script, Mapping) else None
            table = overrides.get(sname) if isinstance(sname, str) else None
            rest = head[len(f"scripts[{parts[1]}]"):].lstrip(".")
            if isinstance(table, dict) and len(parts) > 2 and _owned(table, parts[2:]):
                moved = f"env.{name}.scripts.{sname}.{rest}"
        elif parts and isinstance(parts[0], str) and parts[0] != "scripts" and parts[0] in section:
            moved = f"env.{name}.{head}"
        if moved is not None:
            out.append(f"{lead}{moved}: {message}")
        else:
            out.append(f"{line} (with [env.{name}])")
    return out
