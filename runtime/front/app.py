"""The front: an ASGI app that gives every request an id, matches a route and hands the request to
the script's isolate pool, enforcing body size and wall time, and turning isolate failures into
structured JSON errors. It also relays the calls isolates make to each other (service bindings,
durable-object calls) and fires cron triggers.

The hot path is plain ASGI (no request objects); the admin plane under `/__edgeworks/` is a
Starlette app (see `runtime/admin/app.py`).
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncGenerator, Callable, MutableMapping
from contextlib import aclosing
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from runtime import protocol, tracing
from runtime.addresses import is_loopback_client
from runtime.ai.gateway import Gateway
from runtime.approvals import ApprovalStore, ApprovalsUnavailable
from runtime.audit.log import AuditUnavailable
from runtime.audit.records import REQUEST_ID
from runtime.bindings import relays
from runtime.config import AppConfig, ScriptConfig
from runtime.egress import EgressClient, EgressPolicy
from runtime.errors import error_json as _error
from runtime.front import traces
from runtime.front.auditd import AuditJournal
from runtime.front.contract import Refusal
from runtime.front.cron import CronScheduler
from runtime.front.deployments import Deployment, Deployments
from runtime.front.observe import Observers, RequestOutcome
from runtime.front.supervisor import (
    IsolateDied,
    IsolatePool,
    IsolateProcess,
    LoadFailed,
    WallTimeExceeded,
)
from runtime.front.zygote import Zygote
from runtime.identity import Assertions
from runtime.ipc import CALL_READY_WAIT_S, ChannelClosed
from runtime.killswitch import KillSwitch
from runtime.logs import log
from runtime.metrics import Metrics, serve_metrics
from runtime.observability_config import parse_listen
from runtime.redaction import policy_of
from runtime.slo.auditcheck import AuditCheck
from runtime.slo.recorder import Recorder
from runtime.slo.service import SloService
from runtime.slo.store import EventStore
from runtime.types import Receive, Scope, Send

if TYPE_CHECKING:
    from runtime.datakey import DataKey
    from runtime.secrets import SecretSources

__all__ = ["ADMIN_PREFIX", "Collected", "Deployment", "Front"]

ADMIN_PREFIX = "/__edgeworks/"
_URL_PATH_ESCAPES = str.maketrans({"%": "%25", "?": "%3F", "#": "%23"})
_JSON = [(b"content-type", b"application/json")]
# How long a call between isolates waits for the deployment or a target isolate to be ready.
READY_WAIT_S = CALL_READY_WAIT_S


class Collected(NamedTuple):
    """A response collected instead of sent (see `Front.run_collected`)."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes
    error: str | None  # the error code of a refused or failed request


class BodyTooLarge(Exception):
    pass


class ClientDisconnected(Exception):
    """The client went away (or was cut off by a body timeout) before its body was complete."""


class UnknownTarget(LookupError):
    """A call names a script or call kind the deployment does not have."""


class NotReady(Exception):
    """A call arrived before the deployment (or an isolate of its target) was ready in time;
    retryable (503 `not_ready`)."""


class Front:
    """The front process's ASGI app. `deployments` holds the loaded versions; requests a risk rule
    holds for approval go to `approvals`, sealed with `data_key` (which also opens deployed
    versions' secrets); None: no request can be held."""

    def __init__(self, app: AppConfig, *, dev: bool, state_dir: Path | None = None,
                 data_key: DataKey | None = None, secrets: SecretSources | None = None,
                 metrics_listen: str | None = None):
        self.dev = dev
        self.state_dir = state_dir or app.state_dir
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.data_key = data_key
        self.redaction = policy_of(app, data_key)  # copies meant for people, per level (runtime.redaction)
        # what a held request's listing columns show: redacted as unlabeled data, with the app's patterns
        self.approvals = ApprovalStore(self.state_dir, key=data_key, redactor=self.redaction.default)
        self.kills = KillSwitch(self.state_dir)
        # request outcomes, audit entries and isolate stats, for metrics, SLO events and traces
        self.observers = Observers()
        self.audit_log = AuditJournal(self.state_dir, app.audit, self.redaction, observe=self.observers.audit)
        # Prometheus metrics (runtime.metrics), also served without auth on `metrics_listen` when set
        self.metrics = Metrics(lambda: self.audit_log.backlog) if app.observability.metrics else None
        if self.metrics is not None:
            self.metrics.attach(self.observers)
        self.metrics_listen = metrics_listen or app.observability.metrics_listen
        self.metrics_server: asyncio.Server | None = None
        self.ai = Gateway(self.state_dir, self.audit_log, self.kills)
        self.deployments = Deployments(app, state_dir=self.state_dir, dev=dev, kills=self.kills,
                                       audit_log=self.audit_log, data_key=data_key, router=self,
                                       on_promote=self._promoted, secrets=secrets)
        self.cron = CronScheduler(self.deployments, self.fire_scheduled)
        # [[slo]] burn-rate alerts and guarded splits, evaluated on an interval
        self.slo = SloService(self.state_dir, audit=self.audit_log.audit, deployments=self.deployments, kills=self.kills,
                              dev=dev, metrics=self.metrics)
        # the events the [[slo]] families are computed from, and the audit chain's own periodic check
        obs = app.observability
        self.events = Recorder(EventStore(self.state_dir, minute_days=obs.events_minutes_days,
                                          hour_days=obs.events_hours_days),
                               app=lambda: self.current.app if self.current else None,
                               version=lambda: self.current.version if self.current else None, state_dir=self.state_dir)
        self.events.attach(self.observers)
        self.audit_check = AuditCheck(self.state_dir, interval_s=obs.audit_verify_interval_s, audit=self.audit_log.audit)
        self.admin: Any = None  # the admin plane's ASGI app (see runtime/admin/app.py)
        self.startup_error: str | None = None
        self._stopped = False
        self.zygote: Zygote | None = None  # forks isolates from pre-imported code
        self.relays = relays()  # what isolates may ask the front to relay, by message type
        self.assertions = Assertions(self.state_dir)  # what outbound calls carry where a rule says assert_identity
        self.tracing = traces.start(app.observability)  # None: off (runtime.front.traces)

    @property
    def current(self) -> Deployment | None:
        return self.deployments.current

    def _promoted(self, dep: Deployment) -> None:
        """A version got the traffic: the AI gateway serves its [ai] section from now on, its
        providers calling out under the version's [egress] rules; the SLO loop evaluates its [[slo]]."""
        egress = EgressClient(EgressPolicy.from_app(dep.app, dev=self.dev), audit=self.audit_log.audit, kills=self.kills,
                              identity=self.assertions)
        self.ai.configure(dep.app.ai, {s.name: s.ai for s in dep.app.scripts if s.ai is not None}, dep.secrets,
                          dep.app.root, egress)
        self.slo.configure(dep.app, dep.version)

    def service(self, name: str) -> Any:
        """`RelayPort.service`: the front-wide services binding kinds relay to."""
        if name == "ai":
            return self.ai
        raise LookupError(f"no front service named {name!r}")

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        if self.metrics is not None and self.metrics_listen is not None:
            try:
                self.metrics_server = await serve_metrics(self.metrics, *parse_listen(self.metrics_listen))
            except (OSError, ValueError) as e:
                raise LoadFailed(f"cannot serve metrics on {self.metrics_listen}: {e}", "config") from None
            log("metrics_listening", address=self.metrics_listen)
        await self.audit_log.start()
        if os.environ.get("EDGEWORKS_ZYGOTE", "1") != "0":
            self.zygote = Zygote()
            try:
                await self.zygote.start()
            except (OSError, TimeoutError) as e:  # spawning each isolate still works, slower
                log("zygote_unavailable", error=str(e))
                self.zygote = None
        deployments = self.deployments
        deployments.promote(await deployments.load(deployments.initial))
        self.cron.start()
        self.slo.start()
        self.events.start()
        self.audit_check.start()
        current = deployments.current
        assert current is not None
        log("started", version=current.version, environment=current.app.environment, scripts=list(current.pools),
            pids={n: p.pids() for n, p in current.pools.items()})

    async def swap(self, app: AppConfig, version: str | None = None) -> str:
        """`Deployments.swap`: serve `app` (a dev reload)."""
        return await self.deployments.swap(app, version)

    async def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        if self.metrics_server is not None:
            self.metrics_server.close()
        self.cron.stop()
        await self.slo.stop()
        await self.audit_check.stop()
        await self.deployments.stop(5)
        traces.stop()  # after the isolates: their last spans are in
        await self.events.stop()  # after the isolates' last stats
        await self.ai.aclose()
        if self.zygote is not None:
            await self.zygote.stop()
        await self.audit_log.close()
        self.kills.close()

    def pids(self) -> list[int]:
        return self.deployments.pids()

    # -- ASGI ------------------------------------------------------------------------------
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            if scope["path"].startswith(ADMIN_PREFIX) and self.admin is not None:
                await self.admin(scope, receive, send)
            else:
                await self.handle_http(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                try:
                    await self.start()
                except LoadFailed as e:
                    self.startup_error = str(e)
                    await send({"type": "lifespan.startup.failed", "message": str(e)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                await self.stop()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def handle_http(self, scope: Scope, receive: Receive, send: Send) -> None:
        t0 = time.perf_counter()
        start_ts = time.time()
        rid = None
        host = authorization = ""
        for k, v in scope["headers"]:
            if k == b"x-request-id":
                cand = v.decode("latin-1")
                if REQUEST_ID.match(cand) and self.audit_log.accepts_request_id(cand):
                    rid = cand
            elif k == b"host":
                host = v.decode("latin-1")
            elif k == b"authorization":
                authorization = v.decode("latin-1")
        rid = rid or uuid.uuid4().hex
        method = scope["method"]
        path = scope["path"]
        dep = self.deployments.pick()
        found = dep.router.match(method, host, path)
        observers = self.observers
        if found is None:
            allowed = dep.router.allowed_methods(host, path)
            if allowed:
                await self._send(send, 405, _error("method_not_allowed", f"{method} is not allowed here", rid, allowed=allowed), rid)
            else:
                await self._send(send, 404, _error("not_found", f"no route matches {path}", rid), rid)
            if observers.wants_requests:
                observers.request(RequestOutcome(start_ts, rid, None, dep.version, None, method, 405 if allowed else 404,
                                                 "method_not_allowed" if allowed else "not_found",
                                                 time.perf_counter() - t0, 0.0, None, None, None))
            return
        route, params = found
        script = dep.scripts[route.script]
        contract = dep.contract
        status, cpu_ms, error_code = 500, 0.0, None
        identity = None
        risk = "low"
        audit_log = self.audit_log
        task_class = getattr(route.config, "task_class", None) or route.script
        if audit_log.saturated:  # fail closed: nothing is served that could not be recorded
            audit_log.refuse()
            await self._send(send, 503, _error("audit_unavailable", "the audit log is not keeping up; retry shortly",
                                               rid), rid, [(b"retry-after", b"1")])
            if observers.wants_requests:
                observers.request(RequestOutcome(start_ts, rid, route.script, dep.version, route.config.pattern, method,
                                                 503, "audit_unavailable", time.perf_counter() - t0, 0.0, task_class,
                                                 None, route.config.classification))
            return
        who: dict[str, Any] = {"request_id": rid, "script": route.script, "tenant": None, "risk": risk,
                               "subject": None}
        recorded = False
        span = None if tracing.TRACER is None else traces.request_span(scope, host, route.config.pattern, rid,
                                                                         route.script, dep.version)

        def record(status: int, cpu_ms: float, error: str | None) -> None:
            """The request's one entry, journaled before the last byte of its response leaves."""
            nonlocal recorded
            recorded = True
            if contract.audit_requests:
                audit_log.append_request(who, {
                    "method": method, "path": path, "status": status, "started": round(start_ts, 3),
                    "cpu_ms": round(cpu_ms, 3), "wall_ms": round((time.perf_counter() - t0) * 1000, 3),
                    "error": error})

        try:
            contract.check_killed("script", route.script, rid)
            contract.check_killed("route", route.config.pattern, rid, script=route.script)
            identity = contract.identify(route.config, authorization or None, rid, route.script)
            tenant = identity.tenant if identity else None
            contract.check_killed("tenant", tenant, rid, script=route.script)
            who["tenant"], who["subject"] = tenant, identity.subject if identity else None
            try:
                body = await self._read_body(receive, scope, script.limits.body_bytes)
            except BodyTooLarge:
                raise Refusal(413, "body_too_large", f"request body exceeds the limit of {script.limits.body_bytes} bytes",
                              {"limit_bytes": script.limits.body_bytes}, []) from None
            except ClientDisconnected:  # a truncated body never reaches a handler; nobody to answer
                status, error_code = 499, "client_disconnected"
                return
            decision, level = contract.assess(route.config, method, path, tenant, body)
            risk = who["risk"] = decision.label
            who["classification"] = level
            if decision.action == "block":
                contract.audit("request.blocked", reason=decision.reason, **who)
                raise Refusal(403, "blocked_by_policy", decision.reason, {"risk": risk}, [], audited=True)
            qs = scope.get("query_string", b"")
            # The path the router and the risk rules matched is decoded: re-encode what would
            # change how the URL parses, or "/pay%3F" reaches the handler as "/pay" unchecked.
            url = f"{scope.get('scheme', 'http')}://{host or 'localhost'}{path.translate(_URL_PATH_ESCAPES)}" + (f"?{qs.decode('latin-1')}" if qs else "")
            # "local": dev shows exception details to loopback clients only (`dev --host 0.0.0.0`)
            msg = protocol.Fetch(
                rid=rid, route=route.index, identity=identity.to_wire() if identity else None, risk=risk, level=level,
                trace=None if span is None else span.carrier(),
                local=self.dev and is_loopback_client(scope),
                req={"url": url, "method": method,
                     "headers": [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"] if identity is None or k != b"authorization"],
                     "body": body, "params": params}).encode()
            if decision.action == "approve":
                held: dict[str, Any] = {"risk": risk}
                try:
                    held["approval_id"] = self.approvals.hold(msg, reason=decision.reason, **who)
                except ApprovalsUnavailable as e:  # no data key: never hold it in clear
                    contract.audit("request.hold_refused", reason=str(e), **who)
                    raise Refusal(503, "approvals_unavailable", str(e), {"risk": risk}, [], audited=True) from None
                contract.audit("request.held", reason=decision.reason, **who)
                raise Refusal(202, "approval_required", decision.reason, held, [], audited=True)
            status, cpu_ms, error_code = await self._dispatch(dep.pools[route.script], script, msg, rid, send, record)
        except AuditUnavailable as e:  # the journal refused a write: nothing is answered unrecorded
            status, error_code = 503, "audit_unavailable"
            await self._send(send, 503, _error("audit_unavailable", str(e), rid), rid, [(b"retry-after", b"1")])
        except Refusal as r:
            status, error_code = r.status, r.code
            if not r.audited:  # every refusal is on the record before it is answered
                contract.audit("request.refused", code=r.code, status=r.status, **who)
            await self._send(send, r.status, _error(r.code, r.message, rid, **r.extra), rid, r.headers)
        finally:
            if not recorded and error_code == "stream_cut":
                record(status, cpu_ms, error_code)
            if span is not None:
                traces.end_request_span(span, status, error_code)
            level = who.get("classification", route.config.classification)
            latency_s = time.perf_counter() - t0
            log("request", request_id=rid, script=route.script, method=method, path=path, status=status,
                cpu_ms=round(cpu_ms, 3), wall_ms=round(latency_s * 1000, 3), risk=risk, classification=level,
                **({"tenant": identity.tenant} if identity and identity.tenant else {}),
                **({"error": error_code} if error_code else {}))
            if observers.wants_requests:
                observers.request(RequestOutcome(start_ts, rid, route.script, dep.version, route.config.pattern, method,
                                                 status, error_code, latency_s, cpu_ms, task_class, who["tenant"], level))

    async def _dispatch(self, pool: IsolatePool, script: ScriptConfig, msg: dict[str, Any], rid: str, send: Send,
                        record: Callable[[int, float, str | None], None] | None = None) -> tuple[int, float, str | None]:
        """Run `msg` on an isolate of `pool` and send its response; `record(status, cpu_ms,
        error)` runs before the response's last byte is sent; (status, cpu_ms, error code)."""
        if pool.closed and self.current is not None:
            # The version was replaced while this request was being read: the new one serves it.
            pool = self.current.pools.get(script.name, pool)
        proc = await pool.pick()
        try:
            reply = await proc.request(msg, script.limits.wall_ms / 1000)
        except WallTimeExceeded:
            if record is not None:
                record(503, 0.0, "wall_limit")
            await self._send(send, 503, _error("wall_limit", f"exceeded the wall-time limit of {script.limits.wall_ms} ms", rid, limit_ms=script.limits.wall_ms), rid)
            return 503, 0.0, "wall_limit"
        except IsolateDied as died:
            code, body = self._death_error(died, script, rid)
            if record is not None:
                record(503, 0.0, code)
            await self._send(send, 503, body, rid)
            return 503, 0.0, code
        if "error" in reply:  # the isolate could not serve it at all (see ipc.Channel.serve)
            err = reply["error"]
            code, status = err.get("code") or "internal_error", err.get("status") or 500
            if record is not None:
                record(status, 0.0, code)
            await self._send(send, status, _error(code, err.get("message", ""), rid), rid)
            return status, 0.0, code
        headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in reply["headers"]]
        headers.append((b"x-request-id", rid.encode()))
        status, cpu_ms = reply["status"], reply.get("cpu_ms", 0.0)
        if not reply.get("more"):
            headers.append((b"content-length", str(len(reply["body"])).encode()))
            if record is not None:
                record(status, cpu_ms, reply.get("error_code"))
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": reply["body"]})
            return status, cpu_ms, reply.get("error_code")
        done = None if record is None else (lambda: record(status, cpu_ms, None))
        cut = await self._stream(proc, msg["id"], reply, status, headers, send, done)
        return status, cpu_ms, "stream_cut" if cut else None

    async def _stream(self, proc: IsolateProcess, mid: int, head: dict[str, Any], status: int,
                      headers: list[tuple[bytes, bytes]], send: Send, done: Callable[[], None] | None) -> bool:
        """Relay a streamed body; True when it was cut short (the handler raised or hit a limit
        mid-stream, or its isolate died). Then the response is left unfinished, so the server
        closes the connection and the client sees a truncated body as an error rather than as a
        complete one, as Cloudflare does with a stream that errors."""
        try:
            async with aclosing(_chunks(proc, mid)) as chunks:
                await send({"type": "http.response.start", "status": status, "headers": headers})
                if head.get("body"):
                    await send({"type": "http.response.body", "body": head["body"], "more_body": True})
                async for chunk in chunks:
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
            if done is not None:
                done()  # AuditUnavailable: the stream stays unfinished, the client sees it cut
        except (_StreamCut, AuditUnavailable):
            return True
        await send({"type": "http.response.body", "body": b""})
        return False

    @staticmethod
    async def _whole(proc: IsolateProcess, mid: int, head: dict[str, Any]) -> dict[str, Any]:
        """A streamed reply made whole for a calling isolate (a service binding's Response holds
        a body, not a stream): the chunks joined to the head's body; a stream cut short is an
        error, never a body that looks complete."""
        parts = [head.get("body") or b""]
        try:
            async with aclosing(_chunks(proc, mid)) as chunks:
                async for chunk in chunks:
                    parts.append(chunk)
        except _StreamCut as cut:
            return {"error": {"type": "StreamCut", "code": "stream_cut", "status": 502,
                              "message": f"the service's streamed response was cut short ({cut})"}}
        return {**head, "body": b"".join(parts), "more": False}

    def _death_error(self, died: IsolateDied, script: ScriptConfig, rid: str) -> tuple[str, bytes]:
        if died.request_id == rid and died.reason == "cpu_limit":
            return "cpu_limit", _error("cpu_limit", f"exceeded the CPU limit of {script.limits.cpu_ms} ms; the isolate was restarted", rid, limit_ms=script.limits.cpu_ms)
        if died.reason == "memory_limit" and died.request_id in (rid, None):
            return "memory_limit", _error("memory_limit", f"exceeded the memory limit of {script.limits.memory_mb} MB; the isolate was restarted", rid, limit_mb=script.limits.memory_mb)
        return "isolate_restarted", _error("isolate_restarted", f"the isolate serving this request stopped ({died.reason}, exit code {died.exit_code}) and was restarted", rid)

    async def _read_body(self, receive: Receive, scope: Scope, limit: int) -> bytes:
        for k, v in scope["headers"]:
            if k == b"content-length":
                try:
                    if int(v) > limit:
                        raise BodyTooLarge
                except ValueError:
                    pass
        chunks, size = [], 0
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                raise ClientDisconnected
            chunk = msg.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise BodyTooLarge
            chunks.append(chunk)
            if not msg.get("more_body"):
                break
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    @staticmethod
    async def _send(send: Send, status: int, body: bytes, rid: str, extra: list[tuple[bytes, bytes]] | None = None) -> None:
        await send({"type": "http.response.start", "status": status,
                    "headers": [*_JSON, (b"x-request-id", rid.encode()),
                                (b"content-length", str(len(body)).encode()), *(extra or [])]})
        await send({"type": "http.response.body", "body": body})

    # -- messages from isolates -------------------------------------------------------------
    def on_isolate_message(self, pool: IsolatePool, proc: IsolateProcess, msg: protocol.Message, mid: Any) -> None:
        """A message an isolate sent: an audit entry, or a call a binding kind relays (served:
        the isolate gets an answer even if relaying it fails)."""
        if isinstance(msg, protocol.Audit):
            # the entry names the version whose isolate wrote it (during a split, both serve: an
            # objective computed over one version's events must not count the other's)
            fields = msg.fields if "version" in msg.fields else {**msg.fields, "version": pool.version}
            self.audit_log.append(msg.entry, **fields)
            return
        if isinstance(msg, protocol.Spans):
            traces.receive(pool.script.name, proc.pid or 0, msg.spans)
            return
        if isinstance(msg, protocol.Stats):
            self.observers.stats(pool.script.name, msg.counts)
            return
        relay = self.relays.get(type(msg))
        if not isinstance(mid, int) or proc.channel is None:
            log("protocol_error", script=pool.script.name, error=f"unexpected {msg.op!r} message without an id")
            return
        if relay is None:
            proc.channel.reply(mid, protocol.error_reply(f"the front does not serve {msg.op!r} messages"))
            return
        proc.channel.serve({"id": mid, "op": msg.op}, self._relay(proc, relay, msg, mid))

    async def _relay(self, proc: IsolateProcess, relay: Any, msg: protocol.Message, mid: int) -> None:
        """Relay a call and send the reply; every error keeps its code and HTTP status, for the
        calling handler to answer with."""
        try:
            reply = await relay(self, msg)
        except (IsolateDied, WallTimeExceeded, NotReady) as e:
            reply = _call_error(e)
        except UnknownTarget as e:
            reply = protocol.error_reply(str(e), type="LookupError", code="not_found", status=404)
        except protocol.ProtocolError as e:
            reply = protocol.error_reply(str(e))
        assert proc.channel is not None
        try:
            proc.channel.reply(mid, reply)
        except ChannelClosed:
            pass

    async def _deployment(self) -> Deployment:
        """The current deployment; a call made while the first one is still loading (an isolate
        that finished its init, a handler started by it) waits for it, boundedly."""
        dep = await self.deployments.ready(READY_WAIT_S)
        if dep is None:
            raise NotReady(f"the runtime is still starting after {READY_WAIT_S:.0f} s; retry")
        return dep

    async def forward(self, script: str, msg: protocol.Message, *, slot: Callable[[int], int] | None = None) -> dict[str, Any]:
        """`RelayPort.forward` (runtime.bindings): `msg` to an isolate of `script` of the current
        deployment, the one in `slot(pool_size)` when given; a streamed reply is joined."""
        dep = await self._deployment()
        pool = dep.pools.get(script)
        if pool is None:
            raise UnknownTarget(f"no script named {script!r}")
        proc = await _ready(pool.get(slot(len(pool.slots))) if slot is not None else pool.pick(), script)
        wire = msg.encode()
        reply = await proc.request(wire, dep.scripts[script].limits.wall_ms / 1000)
        return await self._whole(proc, wire["id"], reply) if reply.get("more") else reply

    async def call(self, script: str, msg: protocol.Message) -> dict[str, Any]:
        """`msg` to one isolate of `script` of the current version, for the admin plane (e.g. a
        workflow binding's admin action); failures are error replies."""
        try:
            return await self.forward(script, msg)
        except UnknownTarget as e:
            return protocol.error_reply(str(e), code="no_such_script", status=404)
        except (IsolateDied, WallTimeExceeded, NotReady) as e:
            return _call_error(e, "unavailable")

    def on_event(self, pool: IsolatePool, msg: dict[str, Any]) -> None:
        """An event the supervisor reports about an isolate (its death...)."""
        fields = {k: v for k, v in msg.items() if k != "kind"}
        self.audit_log.append(f"isolate.{msg.get('kind', 'event')}", script=pool.script.name, **fields)

    async def run_collected(self, msg: dict[str, Any], script: str, dep: Deployment | None = None) -> Collected:
        """Run a request message on `dep` (default: the current version) and collect the response
        instead of sending it to a client: a request held for approval, the deploy probe's."""
        dep = dep or self.current
        assert dep is not None
        pool = dep.pools.get(script)
        if pool is None:
            raise LookupError(f"no script named {script!r}")
        start: dict[str, Any] = {}
        parts: list[bytes] = []

        async def collect(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                start.update(message)
            else:
                parts.append(message.get("body", b""))

        status, _, error = await self._dispatch(pool, dep.scripts[script], dict(msg), msg["rid"], collect)
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in start.get("headers", [])]
        return Collected(status, headers, b"".join(parts), error)

    # -- cron ------------------------------------------------------------------------------
    async def fire_scheduled(self, script: str, cron: str, scheduled_ms: float | None = None) -> dict[str, Any]:
        dep = self.current
        assert dep is not None
        pool = dep.pools.get(script)
        if pool is None:
            raise LookupError(f"no script named {script!r}")
        rid = uuid.uuid4().hex
        t0 = time.perf_counter()
        wall = dep.scripts[script].limits.wall_ms / 1000
        try:
            reply = await (await pool.pick()).request(
                protocol.Scheduled(rid=rid, cron=cron, time=scheduled_ms or time.time() * 1000).encode(), wall)
        except (IsolateDied, WallTimeExceeded) as e:
            reply = {"ok": False, **_call_error(e)}
        log("scheduled", request_id=rid, script=script, cron=cron, ok=reply.get("ok"),
            cpu_ms=round(reply.get("cpu_ms", 0.0), 3), wall_ms=round((time.perf_counter() - t0) * 1000, 3),
            **({"error": reply["error"]} if reply.get("error") else {}))
        return {"request_id": rid, **reply}


def _call_error(exc: IsolateDied | WallTimeExceeded | NotReady, code: str | None = None) -> dict[str, Any]:
    """The error reply (code and HTTP status kept at every hop) of a call the front relays;
    `code` overrides the failure's own."""
    if isinstance(exc, IsolateDied):
        return protocol.error_reply(str(exc), type="IsolateDied", code=code or "isolate_restarted", status=503)
    if isinstance(exc, WallTimeExceeded):
        return protocol.error_reply("the callee exceeded its wall-time limit", type="WallTimeExceeded",
                                    code=code or "wall_limit", status=503)
    return protocol.error_reply(str(exc), type="NotReady", code=code or "not_ready", status=503)


class _StreamCut(Exception):
    """A streamed reply ended early: its handler raised or hit a limit, or its isolate died."""


async def _chunks(proc: IsolateProcess, mid: int) -> AsyncGenerator[bytes, None]:
    """The chunks of streamed reply `mid`, in order; `_StreamCut` when it was cut short. The
    stream is released when this ends or is closed (use it under `aclosing`)."""
    assert proc.channel is not None
    q = proc.channel.stream(mid)
    try:
        while (item := await q.get()) is not None:
            if isinstance(item, BaseException):
                raise _StreamCut(str(item))
            yield item
    finally:
        proc.channel.release_stream(mid)


async def _ready(waiting: Any, script: str) -> IsolateProcess:
    """An isolate of `script` for a relayed call: one being (re)started is waited for, boundedly."""
    try:
        return await asyncio.wait_for(waiting, READY_WAIT_S)
    except TimeoutError:
        raise NotReady(f"no isolate of script {script!r} became ready within {READY_WAIT_S:.0f} s; retry") from None
