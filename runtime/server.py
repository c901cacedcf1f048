"""Run the front under uvicorn: `edgeworks dev` (reload, tracebacks) and `edgeworks serve`."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import uvicorn
import uvloop

from runtime.addresses import is_loopback_host
from runtime.admin.app import build_admin
from runtime.audit.anchor import AnchorError
from runtime.config import ConfigError, load_app
from runtime.datakey import HOW_TO_SET, DataKeyError, load_data_key
from runtime.front.app import Front
from runtime.front.auditd import check_anchoring
from runtime.front.httpguard import guarded_protocol
from runtime.front.supervisor import LoadFailed
from runtime.logs import LOGGING_CONFIG, log, redact_text, set_level, set_policy
from runtime.redact import RedactionPatternError
from runtime.redaction import policy_of
from runtime.secrets import SECRETS, SecretSources

__all__ = ["run"]

WATCHED_SUFFIXES = (".py", ".toml", ".dev.vars")


async def _watch(front: Front, app_dir: Path, env: str | None) -> None:
    from watchfiles import awatch

    state = str(front.state_dir)

    def relevant(_change: object, path: str) -> bool:
        watched = path.endswith(WATCHED_SUFFIXES) or Path(path).name.startswith(f"{SECRETS}.")  # .dev.vars.<env>
        return watched and not path.startswith(state) and "__pycache__" not in path

    async for changes in awatch(app_dir, watch_filter=relevant, debounce=150, step=50):
        log("change_detected", files=sorted({p for _, p in changes}))
        try:
            app = load_app(app_dir, env)
        except ConfigError as e:
            log("reload_failed", problems=e.problems)
            continue
        try:
            await front.swap(app)
        except LoadFailed as e:
            log("reload_failed", error=str(e))


def print_problems(e: ConfigError) -> None:
    print("edgeworks: the app's configuration is invalid:", file=sys.stderr)
    for p in e.problems:
        print(f"  {p}", file=sys.stderr)


def run(app_dir: str, *, host: str, port: int, dev: bool, state_dir: str | None, quiet: bool,
        env: str | None = None, secrets_dir: str | None = None, metrics_listen: str | None = None) -> int:
    try:
        app = load_app(app_dir, env)
        secrets = SecretSources.of_process(dev=dev, secrets_dir=secrets_dir)
    except ConfigError as e:
        print_problems(e)
        return 2
    if metrics_listen is not None and not app.observability.metrics:
        print("edgeworks: --metrics-listen needs metrics, but the manifest says [observability] metrics = false",
              file=sys.stderr)
        return 2
    if quiet:
        set_level({"request"})
    if app.auth is None and not is_loopback_host(host):
        print(f"edgeworks: warning: listening on {host} without an [auth] section: "
              + ("the admin API answers loopback clients only; add [auth] to the manifest to use it from other hosts"
                 if dev else "the admin API is disabled; add [auth] to the manifest to use it"), file=sys.stderr)
    state = Path(state_dir).resolve() if state_dir else app.state_dir
    try:
        data_key = load_data_key(state, dev=dev)  # seals held requests, workflow records, versions' secrets
    except DataKeyError as e:
        print(f"edgeworks: the data key is unusable: {e}", file=sys.stderr)
        return 2
    try:
        set_policy(policy_of(app, data_key))  # log lines redacted per level from here on
    except RedactionPatternError as e:
        print(f"edgeworks: the app's configuration is invalid:\n  {app.source}: audit.redact_patterns[{e.index}]: {e}",
              file=sys.stderr)
        return 2
    except ValueError as e:  # the hash mode without a data key
        print(f"edgeworks: the app's configuration is invalid:\n  {app.source}: redaction: {e}", file=sys.stderr)
        return 2
    try:
        check_anchoring(state, app.audit)
    except AnchorError as e:
        print(f"edgeworks: the audit log cannot be anchored: {e}", file=sys.stderr)
        return 2
    if dev and app.egress is None:  # once: a reload that changes [egress] takes effect without it
        print("edgeworks: warning: no [egress] section: handler fetch, AI providers and tools' http.fetch may reach "
              "any address, loopback and private ones included; `serve` refuses every outbound call until [egress] "
              "rules allow it", file=sys.stderr)
    try:
        secrets.resolve(app, data_key)  # a missing secret stops the start here, naming where it was looked for
    except ConfigError as e:
        print("edgeworks: the app's secrets are incomplete:", file=sys.stderr)
        for p in e.problems:
            print(f"  {p}", file=sys.stderr)
        return 2
    front = Front(app, dev=dev, state_dir=state, data_key=data_key, secrets=secrets, metrics_listen=metrics_listen)
    front.admin = build_admin(front)
    if not front.approvals.can_hold and any(rule.action == "approve" for rule in app.risk):
        print(f"edgeworks: warning: risk rules hold requests for approval but no data key is configured: "
              f"such requests are refused (503 approvals_unavailable); {HOW_TO_SET}", file=sys.stderr)
    if data_key is None and any(s.workflows for s in app.scripts):
        print(f"edgeworks: warning: the app has workflows but no data key is configured: their records "
              f"would be stored in clear, so starting an instance is refused (503 workflows_unavailable); "
              f"{HOW_TO_SET}", file=sys.stderr)
    # proxy_headers=False: the client address is the socket peer, never an X-Forwarded-For value
    # (the admin plane's loopback rule depends on it); server_header=False: no "server: uvicorn"
    limits = app.server
    config = uvicorn.Config(front, host=host, port=port, lifespan="on", log_level="warning",
                            log_config=LOGGING_CONFIG,
                            access_log=False, loop="none", proxy_headers=False, server_header=False,
                            timeout_graceful_shutdown=10, limit_concurrency=limits.max_connections,
                            http=guarded_protocol(limits.max_header_bytes, limits.header_timeout_s,
                                                  limits.body_timeout_s))
    server = uvicorn.Server(config)

    async def main() -> None:
        watcher = asyncio.ensure_future(_watch(front, Path(app_dir).resolve(), env)) if dev else None
        try:
            await server.serve()
        finally:
            if watcher is not None:
                watcher.cancel()
            await front.stop()

    try:
        uvloop.run(main())
    except SystemExit:  # uvicorn exits this way when startup fails; say why below
        if server.started:
            raise
    if not server.started:
        print(f"edgeworks: could not start: {redact_text(front.startup_error or 'see the log above')}",
              file=sys.stderr)
        return 3
    return 0
