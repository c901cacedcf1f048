"""Instance records are sealed at rest by the injected codec: params, step results, events and
errors never reach the state dir in clear, a restarted host replays with the real values, records
written in clear before keep working (and are sealed when they next change), and a codec that
cannot seal refuses to create anything."""

from __future__ import annotations

import functools
import os

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from objects.workflows import RecordCodec, WorkflowDefinition, WorkflowEntrypoint
from tests.objects.workflows import conftest

EMAIL = "ada@example.com"
RESULT = "ledger-entry-for-ada"
APPROVER = "grace-the-approver"


def aes_codec() -> RecordCodec:
    aead = AESGCM(AESGCM.generate_key(bit_length=256))

    def seal(data: bytes, context: str) -> bytes:
        nonce = os.urandom(12)
        return nonce + aead.encrypt(nonce, data, context.encode())

    def open_(blob: bytes, context: str) -> bytes:
        return aead.decrypt(blob[:12], blob[12:], context.encode())

    return RecordCodec(seal=seal, open=open_)


def use_codec(monkeypatch: pytest.MonkeyPatch, codec: RecordCodec) -> None:
    monkeypatch.setattr(conftest, "WorkflowDefinition", functools.partial(WorkflowDefinition, codec=codec))


class Book(WorkflowEntrypoint):
    async def run(self, event, step):
        async def record():
            self.env["calls"].append(("record", event.payload["email"]))
            return RESULT

        entry = await step.do("record", record)
        approval = await step.wait_for_approval("approve")

        async def confirm():
            self.env["calls"].append(("confirm", entry, approval["by"]))
            return {"to": event.payload["email"]}

        return await step.do("confirm", confirm)


def state_bytes(harness: conftest.Harness) -> bytes:
    return b"".join(p.read_bytes() for p in harness.state_dir.rglob("*") if p.is_file())


async def test_records_are_sealed_and_a_restarted_host_replays_with_the_real_values(harness, monkeypatch):
    use_codec(monkeypatch, aes_codec())
    binding = await harness.start(Book)
    instance = await binding.create(id="book-1", params={"email": EMAIL})
    await harness.wait(instance, "waiting")
    binding = await harness.restart(Book)
    for secret in (EMAIL, RESULT):
        assert secret.encode() not in state_bytes(harness)
    instance = await binding.get("book-1")
    await instance.approve(APPROVER)
    status = await harness.wait(instance, "complete")
    assert status["output"] == {"to": EMAIL}
    assert harness.env["calls"] == [("record", EMAIL), ("confirm", RESULT, APPROVER)]
    await harness.stop()
    for secret in (EMAIL, RESULT, APPROVER):
        assert secret.encode() not in state_bytes(harness)


async def test_records_written_in_clear_are_read_and_sealed_when_first_loaded(harness, monkeypatch):
    binding = await harness.start(Book)  # the plain codec: what an older version wrote
    instance = await binding.create(id="book-1", params={"email": EMAIL})
    await harness.wait(instance, "waiting")
    await harness.stop()
    assert EMAIL.encode() in state_bytes(harness)

    use_codec(monkeypatch, aes_codec())
    binding = await harness.start(Book)
    instance = await binding.get("book-1")
    await instance.approve(APPROVER)
    status = await harness.wait(instance, "complete")
    assert status["output"] == {"to": EMAIL}
    assert harness.env["calls"] == [("record", EMAIL), ("confirm", RESULT, APPROVER)]
    await harness.stop()
    for secret in (EMAIL, RESULT, APPROVER):
        assert secret.encode() not in state_bytes(harness)


async def test_a_codec_that_cannot_seal_refuses_to_create_and_stores_nothing(harness, monkeypatch):
    class NoKey(Exception):
        pass

    def refuse() -> None:
        raise NoKey("no data key")

    use_codec(monkeypatch, RecordCodec(check=refuse))
    binding = await harness.start(Book)
    with pytest.raises(NoKey):
        await binding.create(id="book-1", params={"email": EMAIL})
    assert await binding.list() == []


def test_a_sealed_blob_does_not_open_under_another_record_or_instance():
    codec = aes_codec()
    stored = codec.seal_record("Book.__workflow__", "a" * 64, "step:record#1", {"name": "record", "result": RESULT})
    assert set(stored) == {"name", "sealed"}
    assert codec.open_record("Book.__workflow__", "a" * 64, "step:record#1", stored)["result"] == RESULT
    with pytest.raises(InvalidTag):
        codec.open_record("Book.__workflow__", "b" * 64, "step:record#1", stored)
    with pytest.raises(InvalidTag):
        codec.open_record("Book.__workflow__", "a" * 64, "step:record#2", stored)
