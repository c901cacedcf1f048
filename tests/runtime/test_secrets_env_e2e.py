"""Secrets and environments through real servers: `serve` takes a declared secret from the
environment, a *_FILE or a secrets dir, never exposes what is not declared, and refuses to start
without one, naming every place it looked; `--env production` overrides vars, routes, limits and
bindings; a secret value is found in no file of the state dir and no log line."""

from __future__ import annotations

import secrets
import subprocess
import uuid
from pathlib import Path

import httpx

from tests.support import Server, run_cli, wait_until, write_app

MANIFEST = """
[[scripts]]
name = "app"
main = "app.py"
secrets = ["API_KEY"]
routes = ["/s", "/boom"]
"""

APP = '''
import logging

from workers import Response

async def fetch(request, env, ctx):
    if request.path == "/boom":
        logging.getLogger("app").warning("calling upstream with %s", env.API_KEY)
        raise RuntimeError(f"upstream refused key {env.API_KEY}")
    return Response(f"{env.API_KEY}|{'UNDECLARED' in env}")
'''


def secret_value() -> str:
    return f"Key-{secrets.token_hex(12)}"


def app_dir(root: Path, manifest: str = MANIFEST, app: str = APP) -> Path:
    return write_app(root, manifest, {"app.py": app})


def served_key(server: Server) -> str:
    with server.client() as c:
        r = c.get("/s")
    assert r.status_code == 200, r.text
    return r.text


def test_serve_takes_a_declared_secret_from_the_environment_and_nothing_undeclared(tmp_path):
    key = secret_value()
    with Server(app_dir(tmp_path / "app"), "serve", env={"API_KEY": key, "UNDECLARED": "x" * 20}) as s:
        assert served_key(s) == f"{key}|False"
        [loaded] = s.logs("secrets_loaded")
        assert loaded["found"] == ["API_KEY from the environment variable API_KEY"]
        assert key not in s.output()


def test_serve_takes_a_secret_from_the_file_named_by_name_FILE(tmp_path):
    key = secret_value()
    path = tmp_path / "api-key"
    path.write_text(key + "\n")  # the newline editors and `echo` add is not part of the value
    with Server(app_dir(tmp_path / "app"), "serve", env={"API_KEY_FILE": str(path)}) as s:
        assert served_key(s) == f"{key}|False"


def test_serve_takes_secrets_from_a_secrets_dir_given_by_flag_or_environment(tmp_path):
    key = secret_value()
    mounted = tmp_path / "run-secrets"
    mounted.mkdir()
    (mounted / "API_KEY").write_text(key)
    with Server(app_dir(tmp_path / "one"), "serve", args=("--secrets-dir", str(mounted))) as s:
        assert served_key(s) == f"{key}|False"
    with Server(app_dir(tmp_path / "two"), "serve", env={"EDGEWORKS_SECRETS_DIR": str(mounted)}) as s:
        assert served_key(s) == f"{key}|False"


def test_the_environment_wins_over_dev_vars_in_serve_and_dev_vars_wins_in_dev(tmp_path):
    app = app_dir(tmp_path / "app")
    (app / ".dev.vars").write_text("API_KEY=from-dev-vars-file\n")
    with Server(app, "serve", env={"API_KEY": "from-the-environment"}) as s:
        assert served_key(s) == "from-the-environment|False"
    with Server(app, "dev", env={"API_KEY": "from-the-environment"}) as s:
        assert served_key(s) == "from-dev-vars-file|False"
    with Server(app, "serve") as s:  # no other source: serve reads the app's .dev.vars, with a warning
        assert served_key(s) == "from-dev-vars-file|False"
        assert s.logs("secrets_from_dev_vars")[0]["names"] == ["API_KEY"]


def start_fails(app: Path, mode: str = "serve", *, args: tuple[str, ...] = (),
                env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    server = Server(app, mode, args=args, env=env)
    done = subprocess.run(server.command(), env=server.env, capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL)
    assert done.returncode == 2, done.stdout + done.stderr
    return done


def test_a_missing_secret_stops_the_start_naming_every_place_it_was_looked_for(tmp_path):
    mounted = tmp_path / "run-secrets"
    mounted.mkdir()
    app = app_dir(tmp_path / "app")
    err = start_fails(app, args=("--secrets-dir", str(mounted))).stderr
    assert "secret 'API_KEY' (scripts.app.secrets) is not set; looked in: the environment variable API_KEY; " \
           "the file named by the environment variable API_KEY_FILE; " \
           f"{mounted.resolve() / 'API_KEY'}; {app.resolve() / '.dev.vars'}" in err, err
    err = start_fails(app, "dev").stderr
    assert f"looked in: {app.resolve() / '.dev.vars'}; the environment variable API_KEY" in err, err
    assert "a secrets dir (none given: --secrets-dir or EDGEWORKS_SECRETS_DIR)" in err


def test_unusable_secret_sources_stop_the_start(tmp_path):
    app = app_dir(tmp_path / "app")
    err = start_fails(app, env={"API_KEY": "a" * 10, "API_KEY_FILE": "/nonexistent"}).stderr
    assert "both API_KEY and API_KEY_FILE are set in the environment: set one" in err, err
    err = start_fails(app, env={"API_KEY_FILE": str(tmp_path / "missing")}).stderr
    assert f"API_KEY_FILE={tmp_path / 'missing'}: cannot be read: No such file or directory" in err, err
    err = start_fails(app, args=("--secrets-dir", str(tmp_path / "nowhere"))).stderr
    assert f"--secrets-dir {tmp_path / 'nowhere'}: not a directory" in err, err


# -- environments ------------------------------------------------------------------------------

ENV_MANIFEST = """
[[scripts]]
name = "app"
main = "app.py"
secrets = ["API_KEY"]
routes = ["/base/*"]
vars = { MODE = "base", KEEP = "kept" }

[env.production.scripts.app]
routes = ["/prod/*"]
vars = { MODE = "production" }
limits = { body_bytes = 100 }
durable_objects = [{ binding = "COUNTER", class_name = "Counter" }]
"""

ENV_APP = '''
from workers import DurableObject, Response

class Counter(DurableObject):
    async def fetch(self, request):
        n = (await self.ctx.storage.get("n") or 0) + 1
        await self.ctx.storage.put("n", n)
        return Response(str(n))

async def fetch(request, env, ctx):
    counted = None
    if "COUNTER" in env:
        stub = env.COUNTER.get(env.COUNTER.id_from_name("one"))
        counted = await (await stub.fetch("http://do/")).text()
    return Response.json({"mode": env.MODE, "keep": env.KEEP, "key": env.API_KEY, "counted": counted})
'''


def env_app(root: Path) -> Path:
    app = app_dir(root, ENV_MANIFEST, ENV_APP)
    (app / ".dev.vars").write_text("API_KEY=base-key-value\n")
    (app / ".dev.vars.production").write_text("API_KEY=production-key-value\n")
    return app


def test_env_production_overrides_vars_routes_limits_and_a_binding_through_a_real_server(tmp_path):
    app = env_app(tmp_path / "app")
    with Server(app, "dev") as s, s.client() as c:
        assert c.get("/base/x").json() == {"mode": "base", "keep": "kept", "key": "base-key-value", "counted": None}
        assert s.logs("started")[0]["environment"] is None
    with Server(app, "dev", args=("--env", "production")) as s, s.client() as c:
        assert c.get("/base/x").status_code == 404
        assert c.get("/prod/x").json() == {"mode": "production", "keep": "kept", "key": "production-key-value",
                                           "counted": "1"}
        r = c.post("/prod/x", content=b"x" * 200)
        assert (r.status_code, r.json()["error"]) == (413, "body_too_large"), r.text
        assert s.logs("started")[0]["environment"] == "production"
        assert c.get("/__edgeworks/health/details").json()["environment"] == "production"
    with Server(app, "serve", env={"EDGEWORKS_ENV": "production", "API_KEY": "serve-key-value"}) as s, \
            s.client() as c:
        assert c.get("/prod/x").json()["key"] == "serve-key-value"  # serve: the environment first
        assert s.logs("started")[0]["environment"] == "production"


def test_an_unknown_environment_stops_the_start_listing_the_defined_ones(tmp_path):
    err = start_fails(env_app(tmp_path / "app"), "dev", args=("--env", "prod")).stderr
    assert "edgeworks.toml: env: no environment named 'prod' (defined: production)" in err, err


def test_a_deploy_with_env_loads_that_environment_and_carries_only_its_secrets_file(tmp_path):
    app = env_app(tmp_path / "app")
    two = env_app(tmp_path / "two")
    (two / ".dev.vars.staging").write_text("API_KEY=staging-only-value\n")
    with Server(app, "dev") as s, s.client() as c:
        done = run_cli("deploy", str(two), "--env", "production", "--to", s.url)
        assert done.returncode == 0, done.stderr
        assert c.get("/prod/x").json()["key"] == "production-key-value"
        listed = c.get("/__edgeworks/versions").json()
        current = next(v for v in listed["versions"] if v["id"] == listed["current"])
        assert current["environment"] == "production"
        done = run_cli("deploy", str(two), "--env", "nope", "--to", s.url)
        assert done.returncode == 1 and "no environment named 'nope'" in done.stderr, done.stderr
        for path in s.state_dir.rglob("*"):
            if path.is_file():
                assert b"staging-only-value" not in path.read_bytes(), path
                assert b"production-key-value" not in path.read_bytes(), path


# -- the secret's value is printed nowhere -------------------------------------------------------

def test_a_secret_value_is_in_no_log_line_and_no_file_of_the_state_dir(tmp_path):
    key = secret_value()
    app = app_dir(tmp_path / "app")
    with Server(app, "serve", env={"API_KEY": key}) as s, s.client() as c:
        assert c.get("/s").text == f"{key}|False"  # the handler has it
        rid = uuid.uuid4().hex
        r = c.get("/boom", params={"echo": key}, headers={"x-request-id": rid})  # logged, raised, in the URL
        assert r.status_code == 500 and key not in r.text
        wait_until(lambda: any(rec.get("request_id") == rid for rec in s.logs("error")))
        wait_until(lambda: "[redacted:secret]" in s.output() and "calling upstream with" in s.output())
        state = s.state_dir
    output = s.output()
    assert key not in output, [line for line in output.splitlines() if key in line]
    assert "upstream refused key [redacted:secret]" in output
    held = [str(p) for p in Path(state).rglob("*") if p.is_file() and key.encode() in p.read_bytes()]
    assert held == []


def test_a_handler_error_in_dev_shows_the_developer_no_secret_either(tmp_path):
    key = secret_value()
    app = app_dir(tmp_path / "app")
    (app / ".dev.vars").write_text(f"API_KEY={key}\n")
    with Server(app, "dev") as s, s.client() as c:
        r = c.get("/boom")
        assert r.status_code == 500 and "upstream refused key" in r.text, r.text
        assert key not in r.text
    assert key not in s.output()


def test_the_log_of_a_deploy_that_misses_a_secret_names_it(tmp_path):
    app = app_dir(tmp_path / "app")
    (app / ".dev.vars").write_text("API_KEY=present-value-123\n")
    needs_more = app_dir(tmp_path / "two", MANIFEST.replace('["API_KEY"]', '["API_KEY", "DB_PASSWORD"]'))
    (needs_more / ".dev.vars").write_text("API_KEY=present-value-123\n")
    with Server(app, "dev") as s:
        done = run_cli("deploy", str(needs_more), "--to", s.url)
        assert done.returncode == 1
        assert "secret 'DB_PASSWORD' (scripts.app.secrets) is not set; looked in:" in done.stderr, done.stderr
        with httpx.Client(base_url=s.url) as c:
            assert c.get("/s").text == "present-value-123|False"


ENVIRON_APP = '''
import os

from workers import Response

async def fetch(request, env, ctx):
    return Response.json({"api_key": env.API_KEY, "environ": dict(os.environ)})
'''


def test_handler_code_reads_its_secrets_from_env_not_the_front_process_environment(tmp_path):
    key, other = secret_value(), secret_value()
    secret_file = tmp_path / "db-password"
    secret_file.write_text(other)
    app = app_dir(tmp_path / "app", app=ENVIRON_APP)
    with Server(app, "serve", env={"API_KEY": key, "DB_PASSWORD_FILE": str(secret_file),
                                   "AWS_SECRET_ACCESS_KEY": other}) as s:
        with s.client() as c:
            seen = c.get("/s").json()
    assert seen["api_key"] == key
    environ = seen["environ"]
    assert "PATH" in environ
    leaked = {k for k, v in environ.items() if key in v or other in v or k.startswith("EDGEWORKS_DATA_KEY")
              or k in ("API_KEY", "DB_PASSWORD_FILE", "AWS_SECRET_ACCESS_KEY")}
    assert leaked == set()
