"""Slow and oversized clients through a real server: a head past `max_header_bytes` gets 431, a
head or body that stops arriving gets 408, each with a JSON error and the connection closed,
and other clients are served meanwhile. Nothing here asserts a duration: the clients only wait
(with generous bounds) for the server to act."""

import json
import select
import socket

import pytest

from tests.support import Server, wait_until, write_app

APP = '''
from workers import Response

async def fetch(request, env, ctx):
    return Response.json({"got": len(await request.bytes())})
'''


def manifest(server: str) -> str:
    return f"""
[server]
{server}

[[scripts]]
name = "app"
main = "app.py"
routes = ["/*"]
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    app = write_app(tmp_path_factory.mktemp("slow") / "app",
                    manifest("header_timeout_s = 1\nbody_timeout_s = 1"), {"app.py": APP})
    with Server(app) as s:
        yield s


def connect(server: Server) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    return sock


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """Read until the server closes the connection; the closing is part of what is tested."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, body


def trickle_until_answered(sock: socket.socket, piece: bytes, max_pieces: int = 300) -> None:
    """Send `piece` every 0.1 s until the server answers (it must, long before max_pieces)."""
    for _ in range(max_pieces):
        if select.select([sock], [], [], 0.1)[0]:
            return
        sock.sendall(piece)
    raise AssertionError("the server never answered the slow client")


def others_are_served(server: Server) -> None:
    with server.client() as c:
        assert c.post("/x", content=b"ok").json() == {"got": 2}


def test_a_one_mebibyte_header_is_431_and_the_connection_is_closed(server):
    with connect(server) as sock:
        sock.sendall(b"GET /x HTTP/1.1\r\nHost: a\r\nX-Big: ")
        try:
            trickle_until_answered(sock, b"a" * 65536, max_pieces=16)  # up to 1 MiB
        except (BrokenPipeError, ConnectionResetError):
            pytest.fail("the server reset the connection instead of answering 431")
        status, headers, body = read_response(sock)
    assert status == 431
    err = json.loads(body)
    assert err["error"] == "headers_too_large" and err["limit_bytes"] == 16 * 1024
    assert headers["connection"] == "close" and headers["x-request-id"] == err["request_id"]
    others_are_served(server)


def test_a_complete_head_over_the_limit_is_431_and_one_under_it_is_served(server):
    with connect(server) as sock:
        sock.sendall(b"GET /x HTTP/1.1\r\nHost: a\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n")
        assert read_response(sock)[0] == 431
    with server.client() as c:
        assert c.get("/x", headers={"x-fine": "a" * 8000}).status_code == 200


def test_a_head_sent_too_slowly_is_408_and_others_are_served_meanwhile(server):
    with connect(server) as sock:
        sock.sendall(b"GET /x HTTP/1.1\r\nHost: a\r\n")
        others_are_served(server)
        trickle_until_answered(sock, b"X")
        status, headers, body = read_response(sock)
    assert status == 408
    assert json.loads(body)["error"] == "header_timeout" and json.loads(body)["limit_s"] == 1
    assert headers["connection"] == "close"


def test_a_slow_second_request_on_a_kept_alive_connection_is_408(server):
    with connect(server) as sock:
        sock.sendall(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
        first = b""
        while not first.endswith(b'{"got":0}'):
            first += sock.recv(65536)
        assert first.startswith(b"HTTP/1.1 200")
        sock.sendall(b"GET /x HTTP/1.1\r\n")
        trickle_until_answered(sock, b"X")
        status, _, body = read_response(sock)
    assert status == 408 and json.loads(body)["error"] == "header_timeout"


def test_a_connection_that_sends_nothing_is_408(server):
    with connect(server) as sock:
        status, _, body = read_response(sock)
    assert status == 408 and json.loads(body)["error"] == "header_timeout"


def test_a_body_that_stalls_is_408_and_never_reaches_the_handler(server):
    with connect(server) as sock:
        sock.sendall(b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 1000\r\n\r\n" + b"a" * 100)
        others_are_served(server)
        status, headers, body = read_response(sock)
    assert status == 408
    assert json.loads(body)["error"] == "body_timeout" and headers["connection"] == "close"
    wait_until(lambda: any(r["error"] == "body_timeout" for r in server.logs("client_refused")))
    # the truncated body was not dispatched to the handler
    wait_until(lambda: any(r.get("error") == "client_disconnected" for r in server.logs("request")))


@pytest.mark.parametrize("path", [b"/__edgeworks/kill", b"/__edgeworks/workflows/app/JOB"])
def test_an_admin_body_that_stalls_is_408_and_leaves_no_traceback(server, path):
    with connect(server) as sock:
        sock.sendall(b"POST " + path + b" HTTP/1.1\r\nHost: a\r\nContent-Length: 1000\r\n\r\n{")
        status, _, body = read_response(sock)
    assert status == 408 and json.loads(body)["error"] == "body_timeout"
    wait_until(lambda: any(r["path"] == path.decode() for r in server.logs("admin_client_gone")))
    assert "Traceback" not in server.output()


def test_a_body_that_keeps_coming_is_not_cut_off(server):
    with connect(server) as sock:
        sock.sendall(b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 12\r\n\r\n")
        for _ in range(12):  # each piece within the body timeout, the whole body beyond it
            select.select([], [], [], 0.15)
            sock.sendall(b"a")
        data = b""
        while not data.endswith(b'{"got":12}') and (chunk := sock.recv(65536)):
            data += chunk
    assert data.startswith(b"HTTP/1.1 200") and data.endswith(b'{"got":12}')


def test_past_max_connections_requests_get_503(tmp_path):
    app = write_app(tmp_path / "app", manifest("max_connections = 3"), {"app.py": APP})
    with Server(app) as s:
        idle = [connect(s), connect(s)]
        try:
            with s.client() as c:
                assert c.get("/x").status_code == 503
        finally:
            for sock in idle:
                sock.close()
        with s.client() as c:
            assert wait_until(lambda: c.get("/x").status_code == 200)


def test_server_limits_are_validated_with_their_key_path(tmp_path):
    from runtime.config import ConfigError, load_app

    write_app(tmp_path, manifest("max_header_bytes = 10\nbody_timeout_s = 0"), {"app.py": APP})
    with pytest.raises(ConfigError) as e:
        load_app(tmp_path)
    assert "server.max_header_bytes" in str(e.value) and "server.body_timeout_s" in str(e.value)
