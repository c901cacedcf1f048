"""The manifest's ``[ai]`` section and a script's ``ai`` binding are checked at load: each mistake
is a ConfigError problem naming the key path at fault."""

from __future__ import annotations

from pathlib import Path

import pytest

from runtime.config import ConfigError, load_app
from tests.support import write_app

SCRIPT = """
[[scripts]]
name = "app"
main = "app.py"
routes = [{ pattern = "/x"%(route)s }]
%(script)s
"""

AI = """
[ai]
%(top)s

[ai.providers.local]
kind = "scripted"
%(provider)s

[ai.models.small]
provider = "%(model_provider)s"
price = { input = 0.1, output = 0.2 }

[ai.aliases]
tiny = "small"
%(aliases)s

[ai.classes.triage]
standard = ["tiny"]
%(classes)s
%(rest)s
"""

DEFAULTS = {"route": "", "script": 'ai = { binding = "AI", models = ["small"] }', "top": "", "provider": "",
            "model_provider": "local", "aliases": "", "classes": "", "rest": ""}


def app_with(tmp_path: Path, *, ai: bool = True, **parts: str) -> Path:
    values = {**DEFAULTS, **parts}
    text = SCRIPT % values + (AI % values if ai else "")
    return write_app(tmp_path / "app", text, {"app.py": "async def fetch(request, env, ctx):\n    pass\n"})


def problems_of(app: Path) -> list[str]:
    with pytest.raises(ConfigError) as raised:
        load_app(app)
    return raised.value.problems


def has(problems: list[str], key: str, *words: str) -> bool:
    return any(f": {key}" in p and all(w in p for w in words) for p in problems)


def test_a_valid_ai_section_loads(tmp_path):
    cfg = load_app(app_with(tmp_path))
    assert cfg.ai is not None and cfg.ai.resolve("tiny") == "small"
    assert cfg.scripts[0].ai is not None and cfg.scripts[0].ai.models == ["small"]


@pytest.mark.parametrize(("parts", "key", "words"), [
    ({"model_provider": "nowhere"}, "ai.models.small.provider", ["'nowhere'"]),
    ({"aliases": 'a = "b"\nb = "a"'}, "ai.aliases.a", ["cycle"]),
    ({"aliases": 'lost = "nothing"'}, "ai.aliases.lost", ["names no model"]),
    ({"classes": 'basic = ["ghost"]'}, "ai.classes.triage.basic[0]", ["'ghost'"]),
    ({"classes": 'ultra = ["small"]'}, "ai.classes.triage.ultra", ["'ultra'", "grades"]),
    ({"rest": '[[ai.grants]]\ngrade = "ultra"\ntenant = "acme"'}, "ai.grants[0].grade", ["'ultra'"]),
    ({"top": 'default_grade = "ultra"'}, "ai.default_grade", ["'ultra'"]),
    ({"provider": 'max_level = "secret"'}, "ai.providers.local.max_level", ["'secret'", "levels"]),
    ({"script": 'ai = { binding = "AI", models = ["small", "ghost"] }'}, "scripts[0].ai.models[1]", ["'ghost'"]),
    ({"route": ', classification = "top-secret"'}, "scripts[0].routes[0].classification", ["'top-secret'"]),
    ({"script": 'ai = { binding = "AI", models = ["small"] }\nvars = { AI = "x" }'}, "scripts[0]",
     ["'AI'", "twice"]),
])
def test_cross_reference_problems_name_their_key_path(tmp_path, parts, key, words):
    problems = problems_of(app_with(tmp_path, **parts))
    assert has(problems, key, *words), problems


def test_a_model_without_a_price_is_refused(tmp_path):
    app = app_with(tmp_path, rest='[ai.models.free]\nprovider = "local"')
    problems = problems_of(app)
    assert has(problems, "ai.models.free.price"), problems


@pytest.mark.parametrize(("provider", "needs"), [
    ('kind = "openai"', ["base_url"]),
    ('kind = "workers-ai"', ["account_id_secret", "api_token_secret"]),
    ('kind = "replay"', ["cassette"]),
])
def test_a_provider_missing_what_its_kind_needs_is_refused(tmp_path, provider, needs):
    app = app_with(tmp_path, rest=f"[ai.providers.other]\n{provider}")
    problems = problems_of(app)
    assert has(problems, "ai.providers.other", *needs), problems


def test_a_script_with_ai_needs_an_ai_section(tmp_path):
    problems = problems_of(app_with(tmp_path, ai=False))
    assert has(problems, "scripts[0].ai", "[ai]"), problems


def test_every_cross_reference_problem_is_reported_in_one_pass(tmp_path):
    app = app_with(tmp_path, model_provider="nowhere", top='default_grade = "ultra"',
                   classes='basic = ["ghost"]')
    problems = problems_of(app)
    assert has(problems, "ai.models.small.provider") and has(problems, "ai.default_grade")
    assert has(problems, "ai.classes.triage.basic[0]"), problems


def test_a_scripted_answer_with_a_bad_regex_is_refused_at_load(tmp_path):
    from runtime.config import ConfigError, load_app
    from tests.support import write_app

    app = write_app(tmp_path / "app", '[[scripts]]\nname = "app"\nmain = "app.py"\n\n[ai.providers.local]\n'
                    'kind = "scripted"\nanswers = [{ match = "(", response = "x" }]\n',
                    {"app.py": "async def fetch(r, e, c): pass\n"})
    try:
        load_app(app)
    except ConfigError as e:
        assert any("ai.providers.local.answers[0].match" in p and "regular expression" in p for p in e.problems), e.problems
    else:
        raise AssertionError("loaded a manifest with a bad regex")


def test_the_ai_binding_name_follows_the_env_name_grammar(tmp_path):
    from runtime.config import ConfigError, load_app
    from tests.support import write_app

    app = write_app(tmp_path / "app", '[[scripts]]\nname = "app"\nmain = "app.py"\nai = { binding = "not-a-name" }\n\n'
                    '[ai.providers.local]\nkind = "scripted"\n', {"app.py": "async def fetch(r, e, c): pass\n"})
    try:
        load_app(app)
    except ConfigError as e:
        assert any("ai.binding" in p for p in e.problems), e.problems
    else:
        raise AssertionError("loaded an AI binding named 'not-a-name'")
