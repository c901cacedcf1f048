"""`[env.<name>]` sections: what an environment overrides, how it merges, and problems named by
the key path the user wrote (the e2e through a server is in test_secrets_env_e2e.py)."""

import pytest

from runtime.config import ConfigError, load_app
from tests.support import write_app

MAIN = "async def fetch(request, env, ctx):\n    pass\n"

BASE = """
[[scripts]]
name = "app"
main = "app.py"
routes = ["/a"]
limits = { cpu_ms = 100, wall_ms = 2000 }
vars = { MODE = "dev", KEEP = "kept" }
services = [{ binding = "OTHER", service = "other" }]

[[scripts]]
name = "other"
main = "app.py"
routes = ["/o"]
"""


def app(tmp_path, extra: str, manifest: str = BASE):
    return write_app(tmp_path, manifest + extra, {"app.py": MAIN})


def problems(tmp_path, extra: str, env: str | None = None, manifest: str = BASE) -> list[str]:
    with pytest.raises(ConfigError) as e:
        load_app(app(tmp_path, extra, manifest), env)
    return e.value.problems


def test_an_environment_overrides_vars_routes_limits_and_bindings_of_one_script(tmp_path):
    root = app(tmp_path, """
        [env.production.scripts.app]
        routes = ["/p"]
        limits = { cpu_ms = 70 }
        vars = { MODE = "production" }
        services = []
        durable_objects = [{ binding = "COUNTER", class_name = "Counter" }]
    """)
    base = load_app(root)
    assert base.environment is None
    assert base.script("app").vars == {"MODE": "dev", "KEEP": "kept"}
    prod = load_app(root, "production")
    s = prod.script("app")
    assert prod.environment == "production"
    assert s.routes == ["/p"]  # arrays replace
    assert (s.limits.cpu_ms, s.limits.wall_ms) == (70, 2000)  # tables merge key by key
    assert s.vars == {"MODE": "production", "KEEP": "kept"}
    assert s.services == [] and [d.binding for d in s.durable_objects] == ["COUNTER"]
    assert prod.script("other").routes == ["/o"]  # scripts it does not name are the base's


def test_a_top_level_section_of_an_environment_replaces_the_base_one(tmp_path):
    root = app(tmp_path, """
        [deploy]
        probe_seconds = 5
        health_path = "/health"
        [env.ci.deploy]
        probe_seconds = 0.5
    """)
    assert load_app(root).deploy.health_path == "/health"
    deploy = load_app(root, "ci").deploy
    assert (deploy.probe_seconds, deploy.health_path) == (0.5, None)


def test_an_unknown_environment_lists_the_defined_ones(tmp_path):
    root = app(tmp_path, "[env.staging]\n[env.production]\n")
    with pytest.raises(ConfigError) as e:
        load_app(root, "prod")
    assert e.value.problems == ["edgeworks.toml: env: no environment named 'prod' (defined: production, staging)"]
    with pytest.raises(ConfigError) as e:
        load_app(app(tmp_path / "none", ""), "prod")
    assert e.value.problems == ["edgeworks.toml: env: no environment named 'prod' (defined: none)"]


def test_problems_inside_an_environment_name_the_full_key_path_even_when_it_is_not_selected(tmp_path):
    extra = """
        [env.production.scripts.app]
        limits = { cpu_ms = 0 }
        vars = { MODE = "production" }
        [env.production.scripts.api]
        routes = ["/x"]
        [env.production.ai]
        bogus = 1
        [env.staging.scripts.other]
        name = "renamed"
        routes = "/not-a-list"
    """
    for env in (None, "production"):
        p = problems(tmp_path / str(env), extra, env)
        assert "edgeworks.toml: env.production.scripts.app.limits.cpu_ms: Input should be greater than 0 (got 0)" in p
        assert "edgeworks.toml: env.production.scripts.api: no script named 'api' (scripts: app, other)" in p
        assert "edgeworks.toml: env.production.ai.bogus: unknown key" in p
        assert "edgeworks.toml: env.staging.scripts.other.name: a script keeps its name in every environment" in p
        assert not any("scripts[0]" in line for line in p), p  # nothing blamed on the base


def test_a_base_problem_is_reported_once_and_an_environment_that_causes_one_is_named(tmp_path):
    p = problems(tmp_path, """
        [env.production.scripts.app]
        routes = ["/a", "/o"]
        [env.production.scripts.other]
        limits = { wall_ms = 1000 }
    """, manifest=BASE.replace('cpu_ms = 100', 'cpu_ms = -1'))
    assert p.count("edgeworks.toml: scripts[0].limits.cpu_ms: Input should be greater than 0 (got -1)") == 1
    assert ("edgeworks.toml: scripts[1].routes[0]: duplicate route '/o' (already served by scripts[0] (app))"
            " (with [env.production])") not in p  # the base failed validation: no semantic pass ran
    p = problems(tmp_path / "dup", """
        [env.production.scripts.app]
        routes = ["/a", "/o"]
    """)
    assert p == ["edgeworks.toml: scripts[1].routes[0]: duplicate route '/o' (already served by scripts[0] (app))"
                 " (with [env.production])"]


def test_env_sections_in_pyproject_name_the_tool_edgeworks_path(tmp_path):
    (tmp_path / "app.py").write_text(MAIN)
    (tmp_path / "pyproject.toml").write_text("""
[[tool.edgeworks.scripts]]
name = "app"
main = "app.py"
[tool.edgeworks.env.production.scripts.app]
limits = { memory_mb = 1 }
""")
    with pytest.raises(ConfigError) as e:
        load_app(tmp_path)
    assert e.value.problems == [
        "pyproject.toml: tool.edgeworks.env.production.scripts.app.limits.memory_mb: "
        "Input should be greater than or equal to 32 (got 1)"]


def test_bad_env_tables(tmp_path):
    p = problems(tmp_path, "", manifest='env = "production"\n' + BASE)
    assert p == ["edgeworks.toml: env: expected a table of environments ([env.<name>])"]
    p = problems(tmp_path / "b", '[env]\nproduction = 1\n"bad name" = {}\n[env.nested.env.x]\n')
    assert p == ["edgeworks.toml: env.production: expected a table",
                 "edgeworks.toml: env.bad name: an environment name is letters, digits, '-' and '_' (up to 63)",
                 "edgeworks.toml: env.nested.env: environments do not nest"]
    p = problems(tmp_path / "c", '[env.production]\nscripts = ["app"]\n')
    assert p == ["edgeworks.toml: env.production.scripts: expected a table of scripts by name "
                 "([env.production.scripts.<script>])"]
    p = problems(tmp_path / "d", "", manifest="environment = 'production'\n" + BASE)
    assert p == ["edgeworks.toml: environment: unknown key"]
