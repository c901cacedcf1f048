"""Isolates are forked from a pre-imported zygote; without it (disabled or dead) they are spawned,
and the server keeps serving either way."""

import os
import signal
import socket
import subprocess
import sys

from tests.support import ROOT, Server, alive, copy_example, wait_until


def parent_of(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


def cmdline(pid: int) -> str:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return f.read().replace(b"\0", b" ").decode()


# dev: the tests read isolate pids from the admin health details, open to loopback clients in dev
def test_isolates_are_forked_from_the_zygote_and_it_goes_away_with_the_server(tmp_path):
    with Server(copy_example(tmp_path), mode="dev") as s, s.client() as c:
        isolate = s.pids("app")[0]
        zygote = parent_of(isolate)
        assert zygote != s.proc.pid
        assert "runtime.front.zygote" in cmdline(zygote)
        assert parent_of(zygote) == s.proc.pid
        assert c.get("/hello").text == "hello"
    assert not alive(zygote)


def test_without_the_zygote_isolates_are_spawned_by_the_front(tmp_path):
    with Server(copy_example(tmp_path), mode="dev", env={"EDGEWORKS_ZYGOTE": "0"}) as s, s.client() as c:
        assert parent_of(s.pids("app")[0]) == s.proc.pid
        assert c.get("/hello").text == "hello"


def test_a_dead_zygote_takes_its_isolates_along_and_the_front_falls_back_to_spawning(tmp_path):
    with Server(copy_example(tmp_path), mode="dev") as s, s.client() as c:
        isolate = s.pids("app")[0]
        zygote = parent_of(isolate)
        os.kill(zygote, signal.SIGKILL)
        wait_until(lambda: not alive(isolate))
        wait_until(lambda: c.get("/hello").status_code == 200 and (p := s.pids("app")) and p[0] != isolate, timeout=20)
        assert parent_of(s.pids("app")[0]) == s.proc.pid
        assert c.post("/counter/z").json() == {"value": 1}


def test_a_zygote_whose_front_is_gone_exits_quietly():
    # A front that fails its start-up exits at once, maybe before its zygote has said hello:
    # the zygote's write to the closed socket must end it without a traceback on stderr.
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    proc = subprocess.Popen([sys.executable, "-m", "runtime.front.zygote", str(theirs.fileno())],
                            pass_fds=(theirs.fileno(),), stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, cwd=ROOT)
    theirs.close()
    ours.close()
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0 and b"Traceback" not in err, err.decode()
