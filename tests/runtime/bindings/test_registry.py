"""The bindings registry: a binding kind defined only in the tests (tests/runtime/bindings/
echo_kind.py) works end to end once named in EDGEWORKS_BINDINGS (its manifest key, env object,
isolate op and front relay), and the generic parts (one env-name check for every kind,
`build_env`, `finish` after every build) behave the same for every kind."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest

from runtime import bindings
from runtime.bindings import BindingKind, build_env, env_name_problems
from tests.support import ROOT, Server, write_app

ECHO = {"EDGEWORKS_BINDINGS": "tests.runtime.bindings.echo_kind", "PYTHONPATH": str(ROOT)}

MANIFEST = """
[[scripts]]
name = "app"
main = "app.py"
routes = ["/*"]
pool_size = 2
[[scripts.echoes]]
binding = "ECHO"
script = "app"
prefix = "hi:"
"""

APP = '''
import os
from workers import Response

async def fetch(request, env, ctx):
    said = await env.ECHO.say(request.query.get("text", ""))
    return Response.json({"said": said, "handler_pid": os.getpid()})
'''


def test_a_kind_defined_only_in_the_tests_works_end_to_end(tmp_path: Path) -> None:
    app = write_app(tmp_path / "app", MANIFEST, {"app.py": APP})
    with Server(app, env=ECHO) as server, server.client() as client:
        seen = set()
        for _ in range(8):
            r = client.get("/say", params={"text": "there"})
            assert r.status_code == 200, r.text
            body = r.json()
            said, _, pid = body["said"].partition(" from ")
            assert said == "hi:there"  # the op ran in an isolate with the kind's env host
            seen.add(int(pid))
        assert seen <= set(server.pids("app"))  # served by the script's isolates, via the front


def _check(tmp_path: Path, manifest: str) -> subprocess.CompletedProcess[str]:
    app = write_app(tmp_path / "app", manifest, {"app.py": APP})
    code = textwrap.dedent(f"""
        from runtime.config import ConfigError, load_app
        try:
            load_app({str(app)!r})
        except ConfigError as e:
            print("\\n".join(e.problems))
        else:
            print("ok")
    """)
    return subprocess.run([sys.executable, "-c", code], env={**os.environ, **ECHO}, cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


def test_the_kinds_manifest_key_is_validated_with_the_rest(tmp_path: Path) -> None:
    bad = MANIFEST.replace('script = "app"', 'script = "nope"').replace('prefix = "hi:"', "prefix = 3\ncolour = 1")
    out = _check(tmp_path, bad).stdout
    assert "scripts[0].echoes[0].prefix" in out and "scripts[0].echoes[0].colour: unknown key" in out


def test_an_env_name_of_the_kind_defined_twice_names_both_keys(tmp_path: Path) -> None:
    out = _check(tmp_path, MANIFEST.replace('pool_size = 2', 'pool_size = 2\nvars = { ECHO = "x" }')).stdout
    assert "scripts[0].echoes[0]: binding name 'ECHO' is used twice (also defined by scripts[0].vars.ECHO)" in out


def test_without_the_setting_the_key_is_unknown(tmp_path: Path) -> None:
    app = write_app(tmp_path / "app", MANIFEST, {"app.py": APP})
    from runtime.config import ConfigError, load_app

    with pytest.raises(ConfigError) as e:
        load_app(app)
    assert any("scripts[0].echoes: unknown key" in p for p in e.value.problems)


# -- the generic parts, on kinds made up here ------------------------------------------------


def _kind(name: str, names: list[tuple[str, str]], entries: dict[str, object], log: list[str]) -> BindingKind:
    def build(host: object) -> dict[str, object]:
        log.append(f"build {name}")
        return entries

    async def finish(host: object) -> None:
        log.append(f"finish {name}")

    return BindingKind(name=name, fields={}, env_names=lambda script: names, build=build, finish=finish)


def test_env_name_problems_covers_every_kind(monkeypatch: pytest.MonkeyPatch) -> None:
    log: list[str] = []
    monkeypatch.setattr(bindings, "KINDS", [_kind("a", [("a[0]", "X"), ("a[1]", "Y")], {}, log),
                                            _kind("b", [("b", "X")], {}, log)])
    assert env_name_problems(SimpleNamespace(), "scripts[2].") == [  # type: ignore[arg-type]
        ("b", "binding name 'X' is used twice (also defined by scripts[2].a[0])")]


async def test_build_env_merges_every_kind_then_finishes_each(monkeypatch: pytest.MonkeyPatch) -> None:
    log: list[str] = []
    monkeypatch.setattr(bindings, "KINDS", [_kind("a", [], {"A": 1}, log), _kind("b", [], {"B": 2}, log)])
    host = SimpleNamespace(env=None)
    env = await build_env(host)  # type: ignore[arg-type]
    assert (env.A, env["B"], "A" in env, env.get("C", 3)) == (1, 2, True, 3)
    assert host.env is env
    assert log == ["build a", "build b", "finish a", "finish b"]  # finish sees every kind's build
    with pytest.raises(KeyError, match="no binding named 'C'"):
        env["C"]


async def test_build_env_refuses_a_name_two_kinds_define(monkeypatch: pytest.MonkeyPatch) -> None:
    log: list[str] = []
    monkeypatch.setattr(bindings, "KINDS", [_kind("a", [], {"X": 1}, log), _kind("b", [], {"X": 2}, log)])
    with pytest.raises(ValueError, match="'X' is defined by two bindings"):
        await build_env(SimpleNamespace(env=None))  # type: ignore[arg-type]


def test_two_kinds_cannot_claim_one_manifest_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGEWORKS_BINDINGS", "tests.runtime.bindings.echo_kind,tests.runtime.bindings.echo_kind")
    with pytest.raises(ValueError, match="manifest key 'echoes' is claimed by binding kinds 'echo' and 'echo'"):
        bindings._load_kinds()
