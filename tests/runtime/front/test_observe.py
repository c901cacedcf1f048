"""The observation hub: every subscriber of a feed is called, in order, and one that raises is
logged and skipped without breaking the others or the caller."""

import json

from runtime.front.observe import Observers, RequestOutcome


def outcome(status=200, error=None):
    return RequestOutcome(ts=1.0, request_id="r1", script="app", version="v1", route="/", method="GET",
                          status=status, error=error, latency_s=0.01, cpu_ms=1.5, task_class="app",
                          tenant=None, level="internal")


def test_each_feed_reaches_its_subscribers_in_order():
    hub = Observers()
    seen = []
    hub.on_request(lambda o: seen.append(("req1", o.status)))
    hub.on_request(lambda o: seen.append(("req2", o.error)))
    hub.on_audit(lambda kind, fields: seen.append(("audit", kind, fields["x"])))
    hub.on_stats(lambda script, counts: seen.append(("stats", script, counts)))
    assert hub.wants_requests
    hub.request(outcome(503, "wall_limit"))
    hub.audit("tool.denied", {"x": 1})
    hub.stats("app", {"object.call": 2.0})
    assert seen == [("req1", 503), ("req2", "wall_limit"), ("audit", "tool.denied", 1),
                    ("stats", "app", {"object.call": 2.0})]


def test_nobody_listening_costs_nothing_and_says_so():
    hub = Observers()
    assert not hub.wants_requests
    hub.request(outcome())
    hub.audit("x", {})
    hub.stats("app", {"a": 1.0})


def test_a_raising_subscriber_is_logged_and_the_others_still_run(capsys):
    hub = Observers()
    after = []

    def broken(*args):
        raise ValueError("bug in a subscriber")

    for feed in (hub.on_request, hub.on_audit, hub.on_stats):
        feed(broken)
    hub.on_request(after.append)
    hub.on_audit(lambda kind, fields: after.append(kind))
    hub.on_stats(lambda script, counts: after.append(script))
    hub.request(outcome())
    hub.audit("ai.call", {})
    hub.stats("app", {})
    assert after == [outcome(), "ai.call", "app"]
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
    failed = [line for line in lines if line.get("event") == "observer_failed"]
    assert [line["feed"] for line in failed] == ["request", "audit", "stats"]
    assert all("bug in a subscriber" in line["error"] for line in failed)
