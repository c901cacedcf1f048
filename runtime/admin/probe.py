"""The deploy probe: a loaded version must prove itself before the admin plane gives it traffic.

"Ready" from every isolate only says the module imported. A version that exceeds its memory
limit a moment later, or crashes on its first request, would otherwise be promoted, the old one
drained, and the new one left crash-looping. So `probe(front, dep)`, given a loaded `Deployment`
that serves nothing yet:
- if the manifest sets ``[deploy] health_path``, sends one ``GET`` of it to the new version
  (through the same dispatch as client requests, without auth: the probe is the runtime's own
  call) and requires a 2xx answer;
- then waits out ``[deploy] probe_seconds`` (counted from the start of the probe) and requires
  that no isolate of the version died meanwhile.
It raises `Unhealthy` (a `LoadFailed`) naming the cause: the isolate's limit (``memory_limit``,
``cpu_limit``), ``exited``/``crashed``, or ``health_check``. The caller keeps the old version and
stops the new one. `dev` reloads skip the probe, so an edit is served at once.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import TYPE_CHECKING

from runtime.front.supervisor import LoadFailed
from runtime.protocol import Fetch

if TYPE_CHECKING:
    from runtime.admin.port import FrontPort
    from runtime.front.deployments import Deployment

__all__ = ["Unhealthy", "probe"]


class Unhealthy(LoadFailed):
    """The version loaded but did not stay healthy; `cause` says how it failed."""


async def _health(front: FrontPort, dep: Deployment, path: str) -> tuple[int, str | None]:
    """(status, error code) of one GET of `path` on the new version."""
    found = dep.router.match("GET", "localhost", path.partition("?")[0])
    if found is None:
        return 404, "not_found"
    route, params = found
    rid = f"probe-{uuid.uuid4().hex}"
    msg = Fetch(rid=rid, route=route.index, req={
        "url": f"http://localhost{path}", "method": "GET", "body": b"", "params": params,
        "headers": [("user-agent", "edgeworks-deploy-probe"), ("x-request-id", rid)]}).encode()

    answer = await front.run_collected(msg, route.script, dep)
    return answer.status, answer.error


async def probe(front: FrontPort, dep: Deployment) -> None:
    options = dep.app.deploy
    loop = asyncio.get_running_loop()
    end = loop.time() + options.probe_seconds
    watched = {p.died: (name, p) for name, pool in dep.pools.items() for p in pool.slots if p is not None}
    health: tuple[int, str | None] | None = None
    if options.health_path is not None:
        health = await _health(front, dep, options.health_path)
    if watched and (health is None or 200 <= health[0] < 300):
        await asyncio.wait(list(watched), timeout=max(0.0, end - loop.time()), return_when=asyncio.FIRST_COMPLETED)
    for fut, (name, proc) in watched.items():
        if fut.done():
            died = fut.result()
            raise Unhealthy(f"script {name!r}: an isolate (pid {proc.pid}) stopped during the deploy probe"
                            f" ({died.reason}, exit code {died.exit_code}); the previous version keeps serving",
                            died.cause)
    if health is not None and not 200 <= health[0] < 300:
        status, code = health
        cause = code if code in ("memory_limit", "cpu_limit") else "health_check"
        raise Unhealthy(f"GET {options.health_path} ([deploy] health_path) answered {status}"
                        + (f" ({code})" if code else "") + "; the previous version keeps serving", cause)
