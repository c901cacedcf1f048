"""Error messages of steps and runs pass the hooks' ``redact`` before they are stored or audited:
an exception message may carry a password or an e-mail address, and workflow records live in
the state dir."""

from __future__ import annotations

import dataclasses
import json

from objects.workflows import NonRetryableError, WorkflowEntrypoint
from runtime.redact import Redactor

SECRET = "Pw!x"


class Login(WorkflowEntrypoint):
    async def run(self, event, step):
        async def login():
            raise NonRetryableError(f"login failed for {{'user': 'bob@example.com', 'password': '{SECRET}'}}")

        await step.do("login", login)


async def test_a_failed_steps_message_is_redacted_in_its_record_status_and_audit(harness, monkeypatch):
    plain = harness.hooks
    monkeypatch.setattr(harness, "hooks",
                        lambda: dataclasses.replace(plain(), redact=Redactor().redact_text))
    binding = await harness.start(Login)
    instance = await binding.create(id="login-1")
    status = await harness.wait(instance, "errored")
    assert "[redacted:secret]" in status["error"]["message"]
    await harness.stop()  # everything committed and closed
    stored = b"".join(p.read_bytes() for p in harness.state_dir.rglob("*") if p.is_file())
    for leak in (SECRET, "bob@example.com"):
        assert leak not in json.dumps(status)
        assert leak not in json.dumps(harness.audits, default=str)
        assert leak.encode() not in stored
