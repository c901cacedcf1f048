"""`SecretSources.resolve`: which names are read, in which order per mode, and what a missing or
unreadable secret says (servers: test_secrets_env_e2e.py)."""

from pathlib import Path

import pytest

from runtime.config import ConfigError, load_app
from runtime.secrets import SecretSources, declared_secrets
from tests.support import write_app

MANIFEST = """
[auth]
secret = "JWT_SECRET"

[[scripts]]
name = "app"
main = "app.py"
secrets = ["API_KEY"]

[ai.providers.remote]
kind = "openai"
base_url = "http://127.0.0.1:9/v1"
api_key_secret = "OPENAI_KEY"

[env.production]
"""


def app(tmp_path: Path, env: str | None = None, dev_vars: str | None = None, **files: str):
    root = write_app(tmp_path, MANIFEST, {"app.py": "async def fetch(request, env, ctx):\n    pass\n"})
    if dev_vars is not None:
        (root / ".dev.vars").write_text(dev_vars)
    for name, text in files.items():
        (root / name.replace("_", ".")).write_text(text)
    return load_app(root, env)


def test_the_declared_names_and_nothing_else_are_read(tmp_path):
    cfg = app(tmp_path)
    assert declared_secrets(cfg) == ({"API_KEY": "scripts.app.secrets", "JWT_SECRET": "auth.secret"},
                                     {"OPENAI_KEY": "ai.providers.remote.api_key_secret"})
    environ = {"API_KEY": "k" * 10, "JWT_SECRET": "j" * 40, "HOME": "/root", "OTHER_SECRET": "x" * 10}
    found = SecretSources(dev=False, environ=environ).resolve(cfg, None)
    assert found.values == {"API_KEY": "k" * 10, "JWT_SECRET": "j" * 40}  # the optional AI key is absent
    assert found.origins["API_KEY"] == "the environment variable API_KEY"


def test_dev_reads_dev_vars_first_and_serve_last(tmp_path):
    cfg = app(tmp_path, dev_vars="API_KEY=from-file\nJWT_SECRET=from-file\n")
    environ = {"API_KEY": "from-env"}
    dev = SecretSources(dev=True, environ=environ).resolve(cfg, None)
    assert dev.values == {"API_KEY": "from-file", "JWT_SECRET": "from-file"} and dev.from_dev_vars == []
    serve = SecretSources(dev=False, environ=environ).resolve(cfg, None)
    assert serve.values == {"API_KEY": "from-env", "JWT_SECRET": "from-file"}
    assert serve.from_dev_vars == ["JWT_SECRET"]


def test_an_environment_reads_its_own_dev_vars_file_instead(tmp_path):
    cfg = app(tmp_path, "production", dev_vars="API_KEY=base\nJWT_SECRET=base\n",
              _dev_vars_production="API_KEY=production\nJWT_SECRET=production\n")
    assert SecretSources(dev=True, environ={}).resolve(cfg, None).values["API_KEY"] == "production"
    base = load_app(cfg.root)
    assert SecretSources(dev=True, environ={}).resolve(base, None).values["API_KEY"] == "base"


def test_files_and_the_secrets_dir(tmp_path):
    cfg = app(tmp_path / "app")
    (tmp_path / "api").write_text("from-file\r\n")
    mounted = tmp_path / "mounted"
    mounted.mkdir()
    (mounted / "JWT_SECRET").write_text("from-dir\n\n")  # only one trailing newline is dropped
    found = SecretSources(dev=False, environ={"API_KEY_FILE": str(tmp_path / "api")},
                          secrets_dir=mounted).resolve(cfg, None)
    assert found.values == {"API_KEY": "from-file", "JWT_SECRET": "from-dir\n"}
    assert found.origins == {"API_KEY": f"the file {tmp_path / 'api'} (API_KEY_FILE)",
                             "JWT_SECRET": str(mounted / "JWT_SECRET")}


def test_every_missing_required_secret_is_named_with_the_places_looked(tmp_path):
    cfg = app(tmp_path)
    with pytest.raises(ConfigError) as e:
        SecretSources(dev=False, environ={}).resolve(cfg, None)
    dev_vars = cfg.root / ".dev.vars"
    assert e.value.problems == [
        f"secret {name!r} ({where}) is not set; looked in: the environment variable {name}; the file named by the "
        f"environment variable {name}_FILE; a secrets dir (none given: --secrets-dir or EDGEWORKS_SECRETS_DIR); "
        f"{dev_vars}"
        for name, where in (("API_KEY", "scripts.app.secrets"), ("JWT_SECRET", "auth.secret"))]


def test_a_secret_file_too_large_is_refused_without_reading_it_all(tmp_path):
    cfg = app(tmp_path / "app")
    big = tmp_path / "big"
    big.write_bytes(b"x" * (1024 * 1024 + 1))
    with pytest.raises(ConfigError) as e:
        SecretSources(dev=False, environ={"API_KEY_FILE": str(big), "JWT_SECRET": "j" * 40}).resolve(cfg, None)
    assert e.value.problems == [f"secret 'API_KEY' (scripts.app.secrets): API_KEY_FILE={big}: larger than "
                                "1048576 bytes: not a secret value"]
