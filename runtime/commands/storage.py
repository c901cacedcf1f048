"""What the storage commands (`edgeworks kv`, `edgeworks d1`) share: finding the binding a
manifest declares under an env name, across the app's scripts."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

__all__ = ["find_binding"]


def find_binding(command: str, app_dir: str, manifest_key: str, name: str, script: str | None,
                 identity: Callable[[Any], object], what: str, whats: str) -> tuple[Any, Any] | int:
    """(app, binding) for the binding `name` under `manifest_key` (e.g. ``kv_namespaces``) of the
    app at `app_dir`, in `script` or any script; or exit code 2 after printing why: the manifest is
    invalid, no script binds `name`, or scripts bind different stores (told apart by `identity`)
    under it. `what`/`whats` name the store kind in messages ("a KV namespace", "namespaces")."""
    from runtime.config import ConfigError, load_app

    try:
        app = load_app(app_dir)
    except ConfigError as e:
        print(f"edgeworks {command}: the app's configuration is invalid:\n  " + "\n  ".join(e.problems),
              file=sys.stderr)
        return 2
    found = [(s.name, b) for s in app.scripts for b in getattr(s, manifest_key, [])
             if b.binding == name and script in (None, s.name)]
    if not found:
        print(f"edgeworks {command}: no script binds {what} as {name!r}", file=sys.stderr)
        return 2
    if len({identity(b) for _, b in found}) > 1:
        print(f"edgeworks {command}: scripts {', '.join(n for n, _ in found)} bind different {whats} as "
              f"{name!r}; name one with --script", file=sys.stderr)
        return 2
    return app, found[0][1]
