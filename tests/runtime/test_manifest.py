"""Manifest validation: every problem reported at once, with file, key path and expectation."""

import pytest

from runtime.config import ConfigError, load_app
from tests.support import run_cli, write_app

GOOD_MAIN = "async def fetch(request, env, ctx):\n    pass\n"


def problems(tmp_path, manifest, files=None):
    write_app(tmp_path, manifest, files if files is not None else {"app.py": GOOD_MAIN})
    with pytest.raises(ConfigError) as e:
        load_app(tmp_path)
    return e.value.problems


def test_valid_manifest_loads(tmp_path):
    write_app(tmp_path, """
        [[scripts]]
        name = "app"
        main = "app.py"
        routes = ["/a", {pattern = "/b/*", methods = ["get"]}]
        crons = ["0 * * * *"]
        [scripts.limits]
        cpu_ms = 50
    """, {"app.py": GOOD_MAIN})
    cfg = load_app(tmp_path)
    s = cfg.script("app")
    assert s.limits.cpu_ms == 50
    assert [r.pattern for r in s.route_configs()] == ["/a", "/b/*"]
    assert s.route_configs()[1].methods == ["GET"]


def test_unknown_key_names_its_path(tmp_path):
    p = problems(tmp_path, """
        [[scripts]]
        name = "app"
        main = "app.py"
        [scripts.limits]
        cpu_mss = 5
    """)
    assert p == ["edgeworks.toml: scripts[0].limits.cpu_mss: unknown key"]


def test_wrong_type_names_path_and_expectation(tmp_path):
    p = problems(tmp_path, """
        [[scripts]]
        name = "app"
        main = "app.py"
        pool_size = "three"
    """)
    assert len(p) == 1
    assert p[0].startswith("edgeworks.toml: scripts[0].pool_size: Input should be a valid integer")
    assert "'three'" in p[0]


def test_all_errors_reported_in_one_pass(tmp_path):
    p = problems(tmp_path, """
        [[scripts]]
        name = "app"
        main = "missing.py"
        routes = ["/x"]
        [[scripts]]
        name = "other"
        main = "app.py"
        routes = ["/x"]
        crons = ["not a cron"]
        [[scripts.services]]
        binding = "NOPE"
        service = "ghost"
    """)
    text = "\n".join(p)
    assert "scripts[1].crons: Value error, 'not a cron' is not a valid cron expression" in text
    # semantic checks run only once the shapes are valid; fix the cron and see the rest together
    p = problems(tmp_path, """
        [[scripts]]
        name = "app"
        main = "missing.py"
        routes = ["/x"]
        [[scripts]]
        name = "other"
        main = "app.py"
        routes = ["/x"]
        [[scripts.services]]
        binding = "NOPE"
        service = "ghost"
    """)
    assert any("scripts[0].main: module file 'missing.py' not found" in x for x in p)
    assert any("scripts[1].routes[0]: duplicate route '/x'" in x for x in p)
    assert any("scripts[1].services[0].service: no script named 'ghost'" in x for x in p)
    assert len(p) == 3


def test_missing_required_key(tmp_path):
    p = problems(tmp_path, """
        [[scripts]]
        name = "app"
    """)
    assert p == ["edgeworks.toml: scripts[0].main: required key is missing"]


def test_limit_out_of_range(tmp_path):
    p = problems(tmp_path, """
        [[scripts]]
        name = "app"
        main = "app.py"
        [scripts.limits]
        cpu_ms = 0
    """)
    assert p[0].startswith("edgeworks.toml: scripts[0].limits.cpu_ms: Input should be greater than 0")


def test_invalid_toml(tmp_path):
    p = problems(tmp_path, "[[scripts]\nname=")
    assert p[0].startswith("edgeworks.toml: not valid TOML")


def test_pyproject_tool_section_is_accepted_and_errors_name_it(tmp_path):
    (tmp_path / "app.py").write_text(GOOD_MAIN)
    (tmp_path / "pyproject.toml").write_text(
        '[project]\nname="x"\n[[tool.edgeworks.scripts]]\nname="app"\nmain="app.py"\nbogus=1\n'
    )
    with pytest.raises(ConfigError) as e:
        load_app(tmp_path)
    assert e.value.problems == ["pyproject.toml: tool.edgeworks.scripts[0].bogus: unknown key"]
    (tmp_path / "pyproject.toml").write_text(
        '[project]\nname="x"\n[[tool.edgeworks.scripts]]\nname="app"\nmain="app.py"\n'
    )
    assert load_app(tmp_path).script("app").main == "app.py"


def test_no_manifest(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_app(tmp_path)
    assert "no edgeworks.toml" in e.value.problems[0]


def test_duplicate_binding_and_script_names(tmp_path):
    p = problems(tmp_path, """
        [[scripts]]
        name = "app"
        main = "app.py"
        secrets = ["X"]
        [scripts.vars]
        X = "1"
        [[scripts]]
        name = "app"
        main = "app.py"
    """)
    assert any("scripts[0].secrets[0]: binding name 'X' is used twice (also defined by scripts[0].vars.X)" in x
               for x in p)
    assert any("scripts[1].name: duplicate script name 'app'" in x for x in p)


def test_a_var_named_tools_next_to_declared_tools_is_refused(tmp_path):
    p = problems(tmp_path, """
        [[scripts]]
        name = "app"
        main = "app.py"
        [scripts.vars]
        TOOLS = "mine"
        [[scripts.tools]]
        name = "sum"
        kind = "python"
        source = "result = 1"
    """)
    assert any("scripts[0].tools: binding name 'TOOLS' is used twice (also defined by scripts[0].vars.TOOLS)" in x
               for x in p), p


def test_cli_exits_2_with_clear_message_and_no_traceback(tmp_path):
    write_app(tmp_path, """
        [[scripts]]
        name = "app"
        main = "nope.py"
        [scripts.limits]
        wall_ms = "slow"
    """, {})
    out = run_cli("dev", str(tmp_path), "--port", "1")
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    assert "edgeworks.toml: scripts[0].limits.wall_ms: Input should be a valid integer" in out.stderr


def test_cli_help_on_every_command():
    for cmd in ([], ["dev"], ["serve"], ["trigger"]):
        out = run_cli(*cmd, "--help")
        assert out.returncode == 0, (cmd, out.stderr)
        assert "usage: edgeworks" in out.stdout


def test_object_and_sandbox_settings_are_validated(tmp_path):
    p = problems(tmp_path, """
        [[scripts]]
        name = "app"
        main = "app.py"
        object_durability = "sometimes"
        [scripts.sandbox.limits]
        fuel = -1
    """)
    text = "\n".join(p)
    assert "scripts[0].object_durability: Input should be 'normal' or 'full'" in text
    assert "scripts[0].sandbox.limits.fuel: Input should be greater than 0" in text


def test_a_manifest_nested_too_deeply_is_a_config_error_not_a_recursion_error(tmp_path):
    (tmp_path / "edgeworks.toml").write_text("x = " + "[" * 30_000 + "]" * 30_000 + "\n")
    with pytest.raises(ConfigError) as e:
        load_app(tmp_path)
    assert "nested too deeply" in str(e.value)
