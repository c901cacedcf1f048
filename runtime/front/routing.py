"""Route patterns, Workers style: `[host]/path` where `*` matches any run of characters and
`{name}` captures one path segment. The most specific pattern (most literal characters) wins."""

from __future__ import annotations

import re
from dataclasses import dataclass

from runtime.config import AppConfig, RouteConfig

__all__ = ["Route", "Router"]


@dataclass(frozen=True)
class Route:
    script: str
    index: int  # position in the script's route list (the isolate keeps models by it)
    config: RouteConfig
    regex: re.Pattern[str]
    has_host: bool
    specificity: int


def _compile(pattern: str) -> tuple[re.Pattern[str], bool, int]:
    has_host = not pattern.startswith("/")
    out, literal = [], 0
    for token in re.split(r"(\*|\{[A-Za-z_][A-Za-z0-9_]*\})", pattern):
        if token == "*":
            out.append(".*")
        elif token.startswith("{") and token.endswith("}"):
            out.append(f"(?P<{token[1:-1]}>[^/]+)")
        else:
            out.append(re.escape(token))
            literal += len(token)
    return re.compile("".join(out) + r"\Z"), has_host, literal


class Router:
    def __init__(self, app: AppConfig):
        routes = []
        for script in app.scripts:
            for i, rc in enumerate(script.route_configs()):
                regex, has_host, spec = _compile(rc.pattern)
                routes.append(Route(script.name, i, rc, regex, has_host, spec))
        self.routes = sorted(routes, key=lambda r: (-r.specificity, r.config.methods is None))
        self._exact: dict[str, list[Route]] = {}
        # Fast path for plain paths like "/hello"; only without host patterns, any of which could
        # be more specific than a plain path.
        for r in self.routes if not any(r.has_host for r in self.routes) else ():
            p = r.config.pattern
            if not r.has_host and "*" not in p and "{" not in p:
                self._exact.setdefault(p, []).append(r)

    def match(self, method: str, host: str, path: str) -> tuple[Route, dict[str, str]] | None:
        for r in self._exact.get(path, ()):
            if r.config.methods is None or method in r.config.methods:
                return r, {}
        hostpath = host + path
        for r in self.routes:
            m = r.regex.match(hostpath if r.has_host else path)
            if m and (r.config.methods is None or method in r.config.methods):
                return r, m.groupdict()
        return None

    def allowed_methods(self, host: str, path: str) -> list[str]:
        out: list[str] = []
        for r in self.routes:
            if r.regex.match(host + path if r.has_host else path) and r.config.methods:
                out += r.config.methods
        return out
