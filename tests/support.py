"""Helpers for end-to-end tests: write an app to a temp dir, run a real server on a free port on
127.0.0.1, and stop it by pid, checking that no isolate process outlives it."""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import textwrap
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_app(root: Path, manifest: str, files: dict[str, str]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "edgeworks.toml").write_text(textwrap.dedent(manifest))
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root


def copy_example(parent: Path) -> Path:
    """A private copy of the example app in functions/ (tests never write into the checkout)."""
    app = parent / "functions"
    shutil.copytree(ROOT / "functions", app, ignore=shutil.ignore_patterns(".edgeworks", "__pycache__"))
    return app


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def descendants(pid: int) -> set[int]:
    """Every live process below `pid` (its isolates and zygote), from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[-1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), ()):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def wait_until(pred: Any, timeout: float = 10.0, interval: float = 0.02) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(interval)


def data_key_file(parent: Path) -> Path:
    """A data key file in `parent` (created once)."""
    path = parent / "data-key"
    if not path.exists():
        path.write_bytes(base64.urlsafe_b64encode(os.urandom(32)) + b"\n")
    return path


def outside_state(parent: Path) -> dict[str, str]:
    """Environment that keeps what the runtime keeps outside its state dir (the audit signing key,
    the anchor file) in `parent`, never in the user's home."""
    return {"EDGEWORKS_AUDIT_SIGNING_KEY_FILE": str(parent / "audit-signing.key"),
            "XDG_STATE_HOME": str(parent / "xdg-state"), "XDG_CONFIG_HOME": str(parent / "xdg-config")}


class Server:
    """`edgeworks dev|serve APP` as a subprocess; use as a context manager."""

    def __init__(self, app_dir: Path, mode: str = "dev", *, args: tuple[str, ...] = (),
                 env: dict[str, str] | None = None, state_dir: Path | None = None,
                 admin_token: str | None = None):
        self.app_dir = app_dir
        self.mode = mode
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.state_dir = state_dir or app_dir / ".edgeworks"
        self.log_path = app_dir.parent / f"server-{self.port}.log"
        self.args = args
        # A data key outside the state dir (held requests are sealed with it), so no test
        # server writes the user's ~/.config; pass EDGEWORKS_DATA_KEY_FILE="" for none.
        self.env = {"EDGEWORKS_DATA_KEY_FILE": str(data_key_file(app_dir.parent)), **os.environ,
                    **outside_state(app_dir.parent), **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None
        self.seen_pids: set[int] = set()
        self.admin_token = admin_token  # for /health/details (pids) when the app has [auth]

    def command(self) -> list[str]:
        return [sys.executable, "-m", "runtime.cli", self.mode, str(self.app_dir), "--port",
                str(self.port), "--state-dir", str(self.state_dir), *self.args]

    def start(self, timeout: float = 30.0) -> Server:
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.command(), stdout=self._log, stderr=subprocess.STDOUT,
                                     cwd=ROOT, env=self.env, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self._log.close()
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.output()}")
            try:
                self.health()
                return self
            except httpx.HTTPError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"server did not become healthy:\n{self.output()}")

    def health(self) -> dict[str, Any]:
        """The open liveness answer; also notes the server's processes for the orphan check."""
        r = httpx.get(f"{self.url}/__edgeworks/health", timeout=2)
        r.raise_for_status()
        if self.proc is not None:
            self.seen_pids.update(descendants(self.proc.pid))
        return r.json()

    def details(self) -> dict[str, Any]:
        """The admin health details: the current version, each script's pids and restarts."""
        headers = {"authorization": f"Bearer {self.admin_token}"} if self.admin_token else {}
        r = httpx.get(f"{self.url}/__edgeworks/health/details", headers=headers, timeout=2)
        r.raise_for_status()
        data = r.json()
        for s in data["scripts"].values():
            self.seen_pids.update(s["pids"])
        return data

    def pids(self, script: str) -> list[int]:
        return self.details()["scripts"][script]["pids"]

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def logs(self, event: str | None = None) -> list[dict[str, Any]]:
        out = []
        for line in self.output().splitlines():
            if line.startswith("{"):
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue
                if event is None or rec.get("event") == event:
                    out.append(rec)
        return out

    def client(self, **kw: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=kw.pop("timeout", 30), **kw)

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        try:
            self.health()
        except (httpx.HTTPError, KeyError):
            pass
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        code = self.proc.returncode
        self.proc = None
        deadline = time.monotonic() + 5  # a child may still be exiting (its parent died first)
        while any(alive(p) for p in self.seen_pids) and time.monotonic() < deadline:
            time.sleep(0.02)
        orphans = [p for p in self.seen_pids if alive(p)]
        for p in orphans:
            os.kill(p, signal.SIGKILL)
        assert not orphans, f"isolate processes outlived the server: {orphans}"
        return code

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def run_cli(*args: str, cwd: Path = ROOT, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "runtime.cli", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def tar_of(*names: str, manifest: bool = False) -> bytes:
    """A tar.gz bundle whose members are one-byte files at `names` (an empty edgeworks.toml first
    when `manifest`): for bundles whose paths, not contents, are the point."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        if manifest:
            tar.addfile(tarfile.TarInfo("edgeworks.toml"), io.BytesIO(b""))
        for name in names:
            info = tarfile.TarInfo(name)
            info.size = 1
            tar.addfile(info, io.BytesIO(b"x"))
    return buf.getvalue()
