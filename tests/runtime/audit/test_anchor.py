"""Signed audit checkpoints (``runtime.audit.anchor``): where the signing key comes from and what is
refused, that a signature covers every field, the checkpoint wire format, and the anchor sink
(an append-only file and a webhook) that never raises on a failed write."""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import socket
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from runtime.audit.anchor import (
    ENV_SIGNING_KEY_FILE,
    AnchorError,
    AnchorSink,
    Checkpoint,
    checkpoint_message,
    default_anchor_path,
    default_signing_key_path,
    load_public_key,
    load_signing_key,
    public_verifier,
    read_anchor,
)

REPO = Path(__file__).resolve().parents[3]
ROOT = bytes(range(32))


@pytest.fixture(autouse=True)
def xdg(tmp_path, monkeypatch) -> dict[str, str]:
    """Keep every default path under tmp_path, never in the real home."""
    env = {"XDG_CONFIG_HOME": str(tmp_path / "config"), "XDG_STATE_HOME": str(tmp_path / "xstate")}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv(ENV_SIGNING_KEY_FILE, raising=False)
    return env


@pytest.fixture
def state(tmp_path) -> Path:
    path = tmp_path / "app" / ".edgeworks"
    path.mkdir(parents=True)
    return path


def private_pem() -> bytes:
    return Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def checkpoint(state: Path, **changes) -> Checkpoint:
    signer = load_signing_key(state)
    return dataclasses.replace(signer.sign_checkpoint(7, ROOT, ts=1700000000.25, origin="log-1"),
                               **changes)


# -- the signing key ---------------------------------------------------------------------------

def test_the_key_is_created_private_on_first_load_and_reloaded_after(state, tmp_path):
    first = load_signing_key(state)
    path = tmp_path / "config" / "edgeworks" / "audit-signing.key"
    assert default_signing_key_path() == path
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert load_signing_key(state).key_id == first.key_id
    assert len(first.key_id) == 16
    assert first.public_key_pem.startswith("-----BEGIN PUBLIC KEY-----")
    assert [p.name for p in path.parent.iterdir()] == ["audit-signing.key"]  # no temp file left


def test_the_manifest_setting_wins_over_the_variable_which_wins_over_the_default(state, tmp_path,
                                                                                 monkeypatch):
    (tmp_path / "from-env.key").write_bytes(private_pem())
    (tmp_path / "from-manifest.key").write_bytes(private_pem())
    default = load_signing_key(state).key_id
    monkeypatch.setenv(ENV_SIGNING_KEY_FILE, str(tmp_path / "from-env.key"))
    from_env = load_signing_key(state)
    assert from_env.key_id != default and ENV_SIGNING_KEY_FILE in from_env.source
    from_manifest = load_signing_key(state, configured=str(tmp_path / "from-manifest.key"))
    assert from_manifest.key_id not in (default, from_env.key_id)
    assert "[audit] signing_key_file" in from_manifest.source
    explicit = load_signing_key(state, environ={"XDG_CONFIG_HOME": str(tmp_path / "other")})
    assert explicit.key_id not in (default, from_env.key_id, from_manifest.key_id)


def test_a_key_inside_the_state_dir_is_refused_naming_it(state, monkeypatch):
    inside = state / "audit-signing.key"
    with pytest.raises(AnchorError, match=f"signing_key_file {inside} is inside the state dir"):
        load_signing_key(state, configured=str(inside))
    monkeypatch.setenv(ENV_SIGNING_KEY_FILE, str(state / "sub" / ".." / "k"))
    with pytest.raises(AnchorError, match=f"{ENV_SIGNING_KEY_FILE} {state / 'k'} is inside"):
        load_signing_key(state)
    assert list(state.iterdir()) == []  # nothing was created there


@pytest.mark.parametrize("content", [b"garbage", b"", b"\xff\xfe",
                                     b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"])
def test_a_file_that_is_not_an_ed25519_private_key_is_refused_naming_it(state, tmp_path, content):
    bad = tmp_path / "bad.key"
    bad.write_bytes(content)
    with pytest.raises(AnchorError, match=f"{ENV_SIGNING_KEY_FILE} {bad} is not"):
        load_signing_key(state, environ={ENV_SIGNING_KEY_FILE: str(bad)})


def test_a_key_of_another_algorithm_is_refused_naming_it(state, tmp_path):
    from cryptography.hazmat.primitives.asymmetric import ec

    other = tmp_path / "ec.key"
    other.write_bytes(ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    with pytest.raises(AnchorError, match=f"{other} holds a .*not an Ed25519 key"):
        load_signing_key(state, configured=str(other))


def test_processes_creating_the_key_at_once_end_with_one_key(state, tmp_path, xdg):
    code = ("import sys; from pathlib import Path; from runtime.audit.anchor import load_signing_key; "
            "print(load_signing_key(Path(sys.argv[1])).key_id)")
    env = {**{k: v for k, v in os.environ.items() if k != "EDGEWORKS_AUDIT_SIGNING_KEY_FILE"}, **xdg,
           "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen([sys.executable, "-c", code, str(state)], cwd=REPO, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(4)]
    results = [proc.communicate(timeout=60) for proc in procs]
    assert all(proc.returncode == 0 for proc in procs), [err for _, err in results]
    key_ids = {out.strip() for out, _ in results}
    assert key_ids == {load_signing_key(state).key_id}
    assert [p.name for p in (tmp_path / "config" / "edgeworks").iterdir()] == ["audit-signing.key"]


# -- signing and verifying -----------------------------------------------------------------------

def test_a_signed_checkpoint_verifies_and_covers_the_documented_message(state):
    signer = load_signing_key(state)
    cp = signer.sign_checkpoint(7, ROOT, ts=1700000000.25, origin="log-1")
    assert (cp.origin, cp.size, cp.root, cp.ts, cp.key_id) == ("log-1", 7, ROOT.hex(),
                                                              1700000000.25, signer.key_id)
    assert checkpoint_message("log-1", 7, ROOT.hex(), 1700000000.25) == (
        b"edgeworks-audit-checkpoint/v1\nlog-1\n7\n" + ROOT.hex().encode() + b"\n1700000000.250000\n")
    public = serialization.load_pem_public_key(signer.public_key_pem.encode())
    public.verify(base64.b64decode(cp.signature),  # type: ignore[union-attr]
                  checkpoint_message("log-1", 7, ROOT.hex(), 1700000000.25))
    assert public_verifier(signer).verify(cp)


@pytest.mark.parametrize("changes", [{"size": 8}, {"root": bytes(32).hex()}, {"ts": 1700000001.25},
                                     {"origin": "log-2"}, {"key_id": "0" * 16},
                                     {"signature": base64.b64encode(bytes(64)).decode()},
                                     {"signature": "not base64!"}])
def test_an_altered_checkpoint_does_not_verify(state, changes):
    verifier = public_verifier(load_signing_key(state))
    assert verifier.verify(checkpoint(state))
    assert verifier.verify(checkpoint(state, **changes)) is False


def test_another_keys_verifier_rejects_the_checkpoint(state, tmp_path):
    (tmp_path / "other.key").write_bytes(private_pem())
    other = load_public_key(tmp_path / "other.key")
    assert other.verify(checkpoint(state)) is False
    assert other.verify(checkpoint(state, key_id=other.key_id)) is False


def test_the_public_key_loads_from_a_public_or_a_private_pem(state, tmp_path):
    signer = load_signing_key(state)
    (tmp_path / "pub.pem").write_text(signer.public_key_pem)
    for path in (tmp_path / "pub.pem", default_signing_key_path()):
        verifier = load_public_key(path)
        assert verifier.key_id == signer.key_id
        assert verifier.verify(checkpoint(state))
    (tmp_path / "junk.pem").write_text("junk")
    with pytest.raises(AnchorError, match=f"public key file {tmp_path / 'junk.pem'}"):
        load_public_key(tmp_path / "junk.pem")
    with pytest.raises(AnchorError, match=f"public key file {tmp_path / 'missing.pem'} cannot"):
        load_public_key(tmp_path / "missing.pem")


# -- the wire format -----------------------------------------------------------------------------

def test_a_checkpoint_round_trips_through_canonical_json(state):
    cp = checkpoint(state)
    text = cp.to_json()
    assert "\n" not in text and " " not in text
    assert list(json.loads(text)) == sorted(json.loads(text))
    assert Checkpoint.from_json(text) == cp


def _mutated(state: Path, **fields) -> str:
    obj = json.loads(checkpoint(state).to_json())
    for name, value in fields.items():
        if value is KeyError:
            del obj[name]
        else:
            obj[name] = value
    return json.dumps(obj)


@pytest.mark.parametrize(("fields", "named"), [
    ({"size": -1}, "size"), ({"size": "7"}, "size"), ({"size": True}, "size"), ({"size": 7.0}, "size"),
    ({"root": "xyz"}, "root"), ({"root": "abc"}, "root"), ({"root": "AB"}, "root"),
    ({"ts": "now"}, "ts"), ({"origin": 3}, "origin"), ({"origin": "a\nb"}, "origin"),
    ({"key_id": "short"}, "key_id"), ({"signature": "!!"}, "signature"),
    ({"signature": base64.b64encode(b"x" * 10).decode()}, "signature"),
    ({"root": KeyError}, "missing field root"), ({"extra": 1}, "unexpected field extra"),
])
def test_a_malformed_checkpoint_is_refused_naming_the_field(state, fields, named):
    with pytest.raises(AnchorError, match=named):
        Checkpoint.from_json(_mutated(state, **fields))


@pytest.mark.parametrize(("text", "problem"), [("{", "not JSON"), ("[1]", "JSON object"),
                                               ('{"ts": NaN}', "not JSON")])
def test_a_checkpoint_that_is_not_a_json_object_is_refused(text, problem):
    with pytest.raises(AnchorError, match=problem):
        Checkpoint.from_json(text)


# -- the anchor sink -----------------------------------------------------------------------------

class _Webhook:
    """A loopback HTTP server in a thread that records every POST and answers `status`."""

    def __init__(self, status: int = 204):
        self.received: list[tuple[str, bytes]] = []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                hook.received.append((self.headers["content-type"], body))
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/anchor?token=s3cret"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


@pytest.fixture
def webhook() -> Iterator[_Webhook]:
    hook = _Webhook()
    yield hook
    hook.close()


@pytest.fixture
def failing_webhook() -> Iterator[_Webhook]:
    hook = _Webhook(status=500)
    yield hook
    hook.close()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_the_sink_appends_lines_that_read_anchor_reads_back(state, tmp_path):
    path = default_anchor_path(state)
    assert path.parent == tmp_path / "xstate" / "edgeworks" / "anchors"
    sink = AnchorSink(path=path, url=None, state_dir=state)
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    cps = [checkpoint(state, size=n) for n in (1, 2, 3)]
    assert [sink.write(cp) for cp in cps] == [[], [], []]
    assert path.read_text() == "".join(cp.to_json() + "\n" for cp in cps)
    assert read_anchor(path) == cps


def test_a_sink_file_inside_the_state_dir_is_refused(state):
    with pytest.raises(AnchorError, match=f"anchor file {state / 'anchors.jsonl'} is inside"):
        AnchorSink(path=state / "anchors.jsonl", url=None, state_dir=state)


def test_the_webhook_receives_the_exact_json(state, tmp_path, webhook):
    cp = checkpoint(state)
    sink = AnchorSink(path=tmp_path / "a.jsonl", url=webhook.url, state_dir=state)
    assert sink.write(cp) == []
    assert webhook.received == [("application/json", cp.to_json().encode())]
    assert read_anchor(tmp_path / "a.jsonl") == [cp]


def test_a_failing_webhook_is_a_problem_and_the_line_is_still_written(state, tmp_path,
                                                                      failing_webhook):
    cp = checkpoint(state)
    path = tmp_path / "a.jsonl"
    failing = AnchorSink(path=path, url=failing_webhook.url, state_dir=state)
    problems = failing.write(cp)
    assert problems == [f"webhook http://127.0.0.1:{failing_webhook.server.server_port}/anchor: "
                        "HTTP 500"]  # the query, which may carry a token, is not shown
    unreachable = AnchorSink(path=path, url=f"http://127.0.0.1:{closed_port()}/", state_dir=state,
                             timeout_s=2.0)
    [problem] = unreachable.write(cp)
    assert problem.startswith("webhook http://127.0.0.1:") and "ConnectError" in problem
    assert read_anchor(path) == [cp, cp]


def test_a_file_that_cannot_be_written_is_a_problem(state, tmp_path):
    path = tmp_path / "a.jsonl"
    sink = AnchorSink(path=path, url=None, state_dir=state)
    path.mkdir()  # now a directory: opening it for writing fails
    [problem] = sink.write(checkpoint(state))
    assert problem.startswith(f"anchor file {path}: ")


def test_a_torn_last_line_is_skipped_and_a_bad_middle_line_names_its_number(state, tmp_path):
    cp = checkpoint(state)
    path = tmp_path / "a.jsonl"
    path.write_text(cp.to_json() + "\n" + cp.to_json()[:20])
    assert read_anchor(path) == [cp]
    path.write_text(cp.to_json() + "\n" + cp.to_json())  # complete, only the newline is missing
    assert read_anchor(path) == [cp, cp]
    path.write_text(cp.to_json() + "\n" + cp.to_json()[:20] + "\n" + cp.to_json() + "\n")
    with pytest.raises(AnchorError, match=f"anchor file {path} line 2: checkpoint: not JSON"):
        read_anchor(path)
    path.write_text(cp.to_json() + "\n" + _mutated(state, size=-1) + "\n")
    with pytest.raises(AnchorError, match="line 2: checkpoint field size"):
        read_anchor(path)
    with pytest.raises(AnchorError, match="cannot be read"):
        read_anchor(tmp_path / "missing.jsonl")
