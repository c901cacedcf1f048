"""The admin plane under `/__edgeworks/`: health, dev triggers, and (as they land) the human
override endpoints. A Starlette app; the request hot path never goes through it."""

from __future__ import annotations

from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

__all__ = ["build_admin"]

PREFIX = "/__edgeworks"


def _err(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": code, "message": message}, status_code=status)


def build_admin(front: Any) -> Starlette:
    async def health(request: Request) -> JSONResponse:
        dep = front.current
        return JSONResponse({
            "ok": dep is not None,
            "version": dep.version if dep else None,
            "scripts": {n: {"pids": p.pids(), "restarts": p.restarts} for n, p in dep.pools.items()} if dep else {},
        })

    async def scheduled(request: Request) -> JSONResponse:
        script = request.query_params.get("script")
        dep = front.current
        if not script and dep is not None and len(dep.app.scripts) == 1:
            script = dep.app.scripts[0].name
        if not script:
            return _err(400, "bad_request", "query parameter 'script' is required")
        cron = request.query_params.get("cron") or "* * * * *"
        try:
            result = await front.fire_scheduled(script, cron)
        except LookupError as e:
            return _err(404, "not_found", str(e))
        return JSONResponse(result, status_code=200 if result.get("ok") else 500)

    return Starlette(routes=[
        Route(f"{PREFIX}/health", health, methods=["GET"]),
        Route(f"{PREFIX}/scheduled", scheduled, methods=["POST"]),
    ])
