"""The example app's main script: the first handler module a new user reads."""

import time

from workers import Response, WorkerEntrypoint


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        # GET /hello: the smallest possible handler; GREETING comes from [scripts.vars].
        if request.path == "/hello":
            return Response(self.env.GREETING)

        # POST /echo: parse the JSON body and send it back.
        if request.path == "/echo":
            try:
                data = await request.json()
            except ValueError:
                return Response.json({"error": "body must be JSON"}, status=400)
            return Response.json(data)

        # GET /spin?ms=N: burn N ms of CPU. The manifest caps CPU at 1000 ms per request, so
        # /spin?ms=5000 is stopped and answers 503 with {"error": "cpu_limit", ...}.
        if request.path == "/spin":
            ms = int(request.query.get("ms", "10"))
            end = time.thread_time() + ms / 1000
            n = 0
            while time.thread_time() < end:
                n += 1
            return Response.json({"spun_ms": ms, "iterations": n})

        return Response("not found", status=404)

    async def scheduled(self, controller):
        # Fired by the cron trigger in edgeworks.toml (or by hand: `edgeworks trigger app`).
        print(f"scheduled run for {controller.cron!r} at {controller.scheduled_time}", flush=True)
