"""[principals."<principal>"]: each table names a principal of the app, each ceiling entry is a
capability; problems name their key path."""

import pytest

from runtime.config import ConfigError, load_app
from runtime.identity import deployment_principals, principal_ceilings
from tests.support import write_app

MANIFEST = """
[[scripts]]
name = "app"
main = "app.py"
routes = ["/"]

[[scripts.workflows]]
binding = "JOB"
class_name = "Job"

[[scripts]]
name = "other"
main = "app.py"
"""


def app(tmp_path, extra=""):
    return write_app(tmp_path / "app", MANIFEST + extra, {"app.py": "async def fetch(request, env, ctx): pass\n"})


def test_ceilings_are_read_per_principal(tmp_path):
    cfg = load_app(app(tmp_path, """
[principals."workflow:app/Job"]
ceiling = ["log", "kv.read:notes/"]
"""))
    assert deployment_principals(cfg) == ["script:app", "workflow:app/Job", "script:other"]
    assert principal_ceilings(cfg) == {"script:app": None, "workflow:app/Job": ["log", "kv.read:notes/"],
                                       "script:other": None}


def test_bad_principals_sections_name_their_key_paths(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_app(app(tmp_path, """
[principals."workflow:app/Nope"]
ceiling = ["log"]
[principals."script:ghost"]
ceiling = []
[principals."robot"]
ceiling = []
[principals."workflow:app/Job"]
ceiling = ["log", "kv.frobnicate:x", "http.fetch:"]
"""))
    problems = e.value.problems
    assert "edgeworks.toml: principals.\"workflow:app/Nope\": script 'app' has no workflow class 'Nope' (its classes: ['Job'])" in problems
    assert "edgeworks.toml: principals.\"script:ghost\": no script named 'ghost'" in problems
    assert any(p.startswith('edgeworks.toml: principals."robot": not a principal name') for p in problems)
    assert any(p.startswith('edgeworks.toml: principals."workflow:app/Job".ceiling[1]: unknown or malformed') for p in problems)
    assert any(p.startswith('edgeworks.toml: principals."workflow:app/Job".ceiling[2]:') for p in problems)


def test_a_misspelt_key_or_a_ceiling_that_is_not_a_list_is_refused(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_app(app(tmp_path, """
[principals."script:app"]
ceilling = ["log"]
[principals."workflow:app/Job"]
ceiling = "log"
"""))
    assert "edgeworks.toml: principals.script:app.ceilling: unknown key" in e.value.problems
    assert any(p.startswith("edgeworks.toml: principals.workflow:app/Job.ceiling:") for p in e.value.problems)
