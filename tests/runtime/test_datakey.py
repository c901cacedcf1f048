"""The data key (``runtime.datakey``) and held requests sealed with it (``runtime.approvals``):
where the key comes from, what is refused, and that a copy of the state dir reveals nothing of
a held request while the approved run still gets every header and the body."""

from __future__ import annotations

import base64
import os
import sqlite3
import stat
from pathlib import Path

import msgpack
import pytest

from runtime.approvals import APPROVALS_FILENAME, ApprovalStore, ApprovalsUnavailable
from runtime.datakey import ENV_KEY, ENV_KEY_FILE, DataKey, DataKeyError, load_data_key

SECRETS = (b"k-3xample-Api-Key", b"Basic cHJveHk6cHc=", b"Pw!x", b"bob@example.com")


def key_text() -> str:
    return base64.urlsafe_b64encode(os.urandom(32)).decode()


def held_message() -> dict:
    return {"op": "fetch", "rid": "r1", "route": 0, "identity": None, "risk": "high",
            "req": {"url": "http://h/users/bob@example.com/pay?card=1", "method": "POST",
                    "body": b'{"password": "Pw!x", "amount": 5000}', "params": {},
                    "headers": [("X-Api-Key", "k-3xample-Api-Key"),
                                ("Proxy-Authorization", "Basic cHJveHk6cHc="),
                                ("Cookie", "s=1"), ("content-type", "application/json")]}}


def state_bytes(state_dir: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(state_dir.rglob("*")) if p.is_file())


# -- where the key comes from ----------------------------------------------------------------

def test_the_key_comes_from_the_variable_then_the_file(tmp_path):
    state = tmp_path / "state"
    text = key_text()
    assert load_data_key(state, dev=False, environ={ENV_KEY: text}).source == ENV_KEY
    (tmp_path / "k").write_text(text + "\n")
    from_file = load_data_key(state, dev=False, environ={ENV_KEY_FILE: str(tmp_path / "k")})
    assert from_file.key_id == load_data_key(state, dev=False, environ={ENV_KEY: text}).key_id


def test_dev_creates_a_private_key_under_the_users_config_dir_once(tmp_path):
    env = {"XDG_CONFIG_HOME": str(tmp_path / "config")}
    first = load_data_key(tmp_path / "app" / ".edgeworks", dev=True, environ=env)
    path = tmp_path / "config" / "edgeworks" / "data-key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert load_data_key(tmp_path / "app" / ".edgeworks", dev=True, environ=env).key_id == first.key_id


def test_serve_without_a_key_has_none_and_never_creates_one(tmp_path):
    assert load_data_key(tmp_path / "state", dev=False, environ={"XDG_CONFIG_HOME": str(tmp_path)}) is None
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(DataKeyError, match=f"{ENV_KEY_FILE} .*missing-key does not exist"):
        load_data_key(tmp_path / "state", dev=False, environ={ENV_KEY_FILE: str(tmp_path / "missing-key")})


@pytest.mark.parametrize(("value", "problem"), [("not base64!", "not base64"),
                                                 (base64.b64encode(b"short").decode(), "got 5")])
def test_a_malformed_key_is_refused_naming_the_variable(tmp_path, value, problem):
    with pytest.raises(DataKeyError, match=f"{ENV_KEY}: .*{problem}"):
        load_data_key(tmp_path, dev=True, environ={ENV_KEY: value})


def test_a_key_file_inside_the_state_dir_is_refused(tmp_path):
    state = tmp_path / ".edgeworks"
    state.mkdir()
    (state / "k").write_text(key_text())
    with pytest.raises(DataKeyError, match="inside the state dir"):
        load_data_key(state, dev=True, environ={ENV_KEY_FILE: str(state / "k")})


def test_a_sealed_blob_opens_only_with_its_key_and_its_context():
    key = DataKey(os.urandom(32), "test")
    blob = key.seal(b"payload", "approval/a/message")
    assert key.open(blob, "approval/a/message") == b"payload"
    with pytest.raises(DataKeyError, match="another record"):
        key.open(blob, "approval/b/message")
    with pytest.raises(DataKeyError, match="was sealed with data key"):
        DataKey(os.urandom(32), "other").open(blob, "approval/a/message")
    tampered = blob[:-1] + bytes([blob[-1] ^ 1])
    with pytest.raises(DataKeyError, match="altered"):
        key.open(tampered, "approval/a/message")


# -- held requests at rest -------------------------------------------------------------------

def test_a_copy_of_the_state_dir_reveals_nothing_of_a_held_request(tmp_path):
    key = DataKey(os.urandom(32), "test")
    store = ApprovalStore(tmp_path, key=key)
    aid = store.hold(held_message(), script="app", request_id="r1", tenant=None,
                     subject="bob@example.com", risk="high", reason="big")
    store.decide(aid, "approved", "alice", "password=Pw!x was checked")
    store.record_response(aid, 200, [("x-echo", "k-3xample-Api-Key")], b"paid with Pw!x")
    raw = state_bytes(tmp_path)
    for secret in SECRETS:
        assert secret not in raw, secret
    # What the approved run gets: every header but Authorization and Cookie, and the body.
    msg = store.message(aid)
    assert msg["req"]["headers"] == [["X-Api-Key", "k-3xample-Api-Key"],
                                     ["Proxy-Authorization", "Basic cHJveHk6cHc="],
                                     ["content-type", "application/json"]]
    assert msg["req"]["body"] == b'{"password": "Pw!x", "amount": 5000}'
    row = store.get(aid)
    assert row["path"] == "/users/[redacted:email]/pay" and row["subject"] == "[redacted:email]"
    assert row["response"]["body"] == "paid with Pw!x"
    store.close()


def test_without_a_key_nothing_is_held(tmp_path):
    store = ApprovalStore(tmp_path)
    assert not store.can_hold
    with pytest.raises(ApprovalsUnavailable, match=ENV_KEY_FILE):
        store.hold(held_message(), script="app", request_id="r1", tenant=None, subject=None,
                   risk="high", reason=None)
    assert store.list() == []
    store.close()


def test_a_store_opened_with_another_key_lists_rows_but_refuses_their_content(tmp_path):
    store = ApprovalStore(tmp_path, key=DataKey(os.urandom(32), "first"))
    aid = store.hold(held_message(), script="app", request_id="r1", tenant=None, subject=None,
                     risk="high", reason=None)
    store.close()
    other = ApprovalStore(tmp_path, key=DataKey(os.urandom(32), "second"))
    assert [r["id"] for r in other.list()] == [aid]
    with pytest.raises(DataKeyError, match="was sealed with data key"):
        other.message(aid)
    other.close()


def test_rows_an_older_version_stored_in_clear_are_sealed_on_open(tmp_path):
    ApprovalStore(tmp_path, key=DataKey(os.urandom(32), "setup")).close()  # creates the table
    conn = sqlite3.connect(tmp_path / APPROVALS_FILENAME)
    conn.execute("INSERT INTO approvals (id, request_id, script, message, status, created, response_status,"
                 " response_headers, response_body) VALUES ('old', 'r0', 'app', ?, 'approved', 1, 200, ?, ?)",
                 (msgpack.packb(held_message(), use_bin_type=True), '[["x-echo", "k-3xample-Api-Key"]]',
                  b"Pw!x"))
    conn.commit()
    conn.close()
    store = ApprovalStore(tmp_path, key=DataKey(os.urandom(32), "now"))
    for secret in SECRETS:
        assert secret not in state_bytes(tmp_path), secret
    assert store.message("old")["req"]["body"] == held_message()["req"]["body"]
    assert store.get("old")["response"]["body"] == "Pw!x"
    store.close()


def test_a_dev_key_that_cannot_be_created_is_a_clear_error(tmp_path):
    (tmp_path / "config").write_text("a file where the config dir should be")
    with pytest.raises(DataKeyError, match="cannot be created: .*EDGEWORKS_DATA_KEY_FILE"):
        load_data_key(tmp_path / "state", dev=True, environ={"XDG_CONFIG_HOME": str(tmp_path / "config")})
