"""Redaction per classification level: each mode (mask, hash, drop), whole values at the highest
level, the policy's choice of redactor by level, `[redaction]` in the manifest, and the copies
that go through it (log lines, audit records, the admin view of a workflow instance)."""

from __future__ import annotations

import logging
import re

import msgpack
import pytest

from runtime import logs
from runtime.admin.workflows import shown_status
from runtime.audit.records import RecordMaker, decode_data, decode_record
from runtime.auditconfig import AuditOptions
from runtime.config import ConfigError, load_app
from runtime.redact import Redactor
from runtime.redaction import LevelRedaction, RedactionConfig, RedactionPolicy
from tests.support import write_app

EMAIL = "ada@example.com"
CARD = "4111 1111 1111 1111"
KEY = b"k" * 32
HASH = re.compile(r"\[hash:[0-9a-f]{12}\]")


def policy(**modes: str) -> RedactionPolicy:
    return RedactionPolicy(RedactionConfig({level: LevelRedaction(mode=mode) for level, mode in modes.items()}),
                           hash_key=KEY)


def test_mask_is_the_default_at_every_level():
    p = RedactionPolicy()
    for level in ("public", "internal", "confidential", "restricted", None):
        assert p.for_level(level).redact_text(f"mail {EMAIL}") == "mail [redacted:email]"


def test_hash_replaces_each_finding_by_a_keyed_digest_that_links_equal_values():
    r = Redactor(mode="hash", hash_key=KEY)
    one, two = r.redact_text(f"to {EMAIL}"), r.redact_text(f"from {EMAIL}, card {CARD}")
    assert HASH.fullmatch(one.removeprefix("to "))
    assert one.removeprefix("to ") in two and EMAIL not in two and "4111" not in two
    assert Redactor(mode="hash", hash_key=b"x" * 32).redact_text(f"to {EMAIL}") != one  # keyed
    assert HASH.fullmatch(r.redact({"password": "hunter2"})["password"])


def test_drop_removes_each_finding():
    r = Redactor(mode="drop")
    assert r.redact_text(f"to {EMAIL} with {CARD}") == "to [dropped] with [dropped]"
    assert r.redact({"token": "abc"}) == {"token": "[dropped]"}


def test_the_highest_level_replaces_whole_values_but_keeps_the_runtimes_identifiers():
    p = policy(confidential="hash", restricted="drop")
    top = p.for_level("restricted")
    entry = {"request_id": "r-1", "status": "complete", "name": "Ada Lovelace", "note": "plain words"}
    assert top.redact(entry) == {"request_id": "r-1", "status": "complete", "name": "[dropped]", "note": "[dropped]"}
    # below the top, only findings go
    assert p.for_level("confidential").redact({"name": "Ada Lovelace"}) == {"name": "Ada Lovelace"}


def test_the_policy_picks_the_redactor_of_the_datas_level():
    p = policy(confidential="hash", restricted="drop")
    assert p.for_level("internal").redact_text(EMAIL) == "[redacted:email]"
    assert HASH.fullmatch(p.for_level("confidential").redact_text(EMAIL))
    assert p.for_level(None) is p.for_level("internal")  # a copy with no level
    assert p.for_level("no-such-level") is p.for_level("restricted")  # fails closed


def test_hash_mode_without_a_key_names_the_data_key_variables():
    with pytest.raises(ValueError, match="EDGEWORKS_DATA_KEY_FILE"):
        RedactionPolicy(RedactionConfig({"confidential": LevelRedaction(mode="hash")}))


def test_the_manifest_names_a_level_that_does_not_exist_by_key_path(tmp_path):
    app = write_app(tmp_path, """
        [redaction.secret]
        mode = "drop"
        [[scripts]]
        name = "app"
        main = "app.py"
        """, {"app.py": ""})
    with pytest.raises(ConfigError, match=r"redaction\.secret: 'secret' is not one of levels"):
        load_app(app)


def test_log_lines_are_redacted_as_data_of_their_level(monkeypatch):
    monkeypatch.setattr(logs, "_policy", policy(confidential="hash", restricted="drop"))
    seen: list[dict] = []
    logs.add_listener(seen.append)
    try:
        logs.log("error", classification="confidential", exception=f"no user {EMAIL}")
        logs.log("error", classification="restricted", exception=f"no user {EMAIL}", request_id="r-1")
        logs.log("error", exception=f"no user {EMAIL}")
    finally:
        logs.remove_listener(seen.append)
    assert HASH.fullmatch(seen[0]["exception"].removeprefix("no user "))
    assert (seen[1]["exception"], seen[1]["request_id"]) == ("[dropped]", "r-1")
    assert seen[2]["exception"] == "no user [redacted:email]"


def test_a_python_log_lines_severity_is_not_taken_for_a_data_level(monkeypatch):
    # python_log lines carry `level` = WARNING/ERROR (logging's severity): an unknown data level
    # would count as the highest and drop the message.
    monkeypatch.setattr(logs, "_policy", policy(restricted="drop"))
    seen: list[dict] = []
    logs.add_listener(seen.append)
    try:
        logs.LogHandler().emit(logging.LogRecord("edgeworks.test", logging.WARNING, __file__, 1,
                                                 "disk nearly full on %s", ("/var",), None))
    finally:
        logs.remove_listener(seen.append)
    line = next(r for r in seen if r["event"] == "python_log")
    assert (line["level"], line["message"]) == ("WARNING", "disk nearly full on /var")


def test_audit_records_are_redacted_as_data_of_their_classification():
    maker = RecordMaker(AuditOptions(), policy=policy(confidential="hash", restricted="drop"))

    def made(classification: str) -> tuple:
        raw = maker.make("workflow.event", {"classification": classification, "subject": EMAIL,
                                            "script": "app"}, {"note": f"for {EMAIL}"}, 1.0)
        record = decode_record(raw)
        return record.subject, record.script, decode_data(record)["note"]

    assert made("internal") == ("[redacted:email]", "app", "for [redacted:email]")
    subject, script, note = made("confidential")
    assert HASH.fullmatch(subject) and script == "app" and note == f"for {subject}"
    assert made("restricted") == ("[dropped]", "app", "[dropped]")
    assert EMAIL.encode() not in msgpack.packb([made(c) for c in ("internal", "confidential", "restricted")])


def test_the_admin_view_of_an_instance_redacts_what_it_holds_and_keeps_ids():
    status = {"id": "s-1", "status": "errored", "output": {"to": EMAIL}, "pause_reason": None,
              "error": {"type": "ValueError", "message": f"bad {EMAIL}"},
              "steps": [{"name": "send", "error": None, "attempts": [{"started": 1.0, "error": {"message": EMAIL}}]}],
              "compensations": []}
    shown = shown_status(status, Redactor(mode="drop"))
    assert shown["id"] == "s-1" and shown["steps"][0]["name"] == "send"
    assert EMAIL not in repr(shown)
    assert shown["output"] == {"to": "[dropped]"} and shown["error"]["type"] == "ValueError"
