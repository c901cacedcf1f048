"""The test run's egress guard: no socket of a test process, or of a process it starts, may
connect outside 127.0.0.0/8 and ::1.

`install()` (run by sitecustomize in every child process, and by tests/conftest.py in pytest's
own) wraps `socket.socket.connect`/`connect_ex`, and the event loops' `sock_connect` and
`create_connection` (asyncio's and uvloop's, each when its module is first imported: importing
them here would cost every process ~0.1 s). A connection elsewhere raises PermissionError before any packet leaves
and is appended to the file named by ``EDGEWORKS_TEST_EGRESS_GUARD``, which the conftest
fixture reads after each test to fail it. Unix sockets are not affected. Host names are
resolved (getaddrinfo) and every address checked.
"""

from __future__ import annotations

import functools
import importlib.machinery
import os
import socket
import sys
from typing import Any

ENV = "EDGEWORKS_TEST_EGRESS_GUARD"


def _loopback(host: str) -> bool:
    if host.startswith("127.") or host == "::1":  # the usual case, without importing ipaddress
        return True
    import ipaddress

    try:
        addr = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return addr.is_loopback


def _refuse(target: str) -> None:
    message = f"test egress guard: connection to {target} refused (tests may reach 127.0.0.0/8 and ::1 only)"
    path = os.environ.get(ENV)
    if path:
        try:
            with open(path, "a", encoding="utf-8") as f:
                f.write(f"pid {os.getpid()} ({' '.join(sys.argv)[:200]}): {message}\n")
        except OSError:
            pass
    raise PermissionError(message)


def _check_address(family: int, address: Any) -> None:
    if family not in (socket.AF_INET, socket.AF_INET6) or not isinstance(address, tuple) or not address:
        return
    host = str(address[0])
    if _loopback(host):
        return
    try:
        infos = socket.getaddrinfo(host, address[1] if len(address) > 1 else None, family, socket.SOCK_STREAM)
    except OSError:
        return _refuse(f"{host} (unresolvable)")
    for info in infos:
        if not _loopback(str(info[4][0])):
            _refuse(f"{host} ({info[4][0]})")


def _check_host(host: Any, port: Any) -> None:
    if host is None:
        return
    if isinstance(host, list | tuple):
        for h in host:
            _check_host(h, port)
        return
    host = str(host)
    if _loopback(host):
        return
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError:
        return
    for info in infos:
        if not _loopback(str(info[4][0])):
            _refuse(f"{host}:{port} ({info[4][0]})")


def _wrap_socket() -> None:
    cls = socket.socket
    original_connect, original_connect_ex = cls.connect, cls.connect_ex

    @functools.wraps(original_connect)
    def connect(self: socket.socket, address: Any) -> None:
        _check_address(self.family, address)
        return original_connect(self, address)

    @functools.wraps(original_connect_ex)
    def connect_ex(self: socket.socket, address: Any) -> int:
        _check_address(self.family, address)
        return original_connect_ex(self, address)

    cls.connect = connect  # type: ignore[method-assign,assignment]
    cls.connect_ex = connect_ex  # type: ignore[method-assign,assignment]


def _wrap_loop(cls: Any) -> None:
    if getattr(cls, "_edgeworks_guarded", False):
        return
    original_sock_connect, original_create_connection = cls.sock_connect, cls.create_connection

    async def sock_connect(self: Any, sock: socket.socket, address: Any) -> Any:
        _check_address(sock.family, address)
        return await original_sock_connect(self, sock, address)

    async def create_connection(self: Any, protocol_factory: Any, host: Any = None, port: Any = None,
                                *args: Any, **kwargs: Any) -> Any:
        _check_host(host, port)
        return await original_create_connection(self, protocol_factory, host, port, *args, **kwargs)

    cls.sock_connect, cls.create_connection = sock_connect, create_connection
    cls._edgeworks_guarded = True


_LOOPS = {"asyncio.base_events": "BaseEventLoop", "uvloop": "Loop"}  # module -> its loop class


class _LoopHook:
    """A meta path finder that guards an event loop class once its module is imported."""

    def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
        attr = _LOOPS.get(name)
        if attr is None:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return None
        exec_module = spec.loader.exec_module

        def exec_and_guard(module: Any) -> None:
            exec_module(module)
            _wrap_loop(getattr(module, attr))

        spec.loader.exec_module = exec_and_guard  # type: ignore[method-assign]
        return spec

    def invalidate_caches(self) -> None:
        pass


def install() -> None:
    if getattr(socket, "_edgeworks_guarded", False):
        return
    socket._edgeworks_guarded = True  # type: ignore[attr-defined]
    _wrap_socket()
    for name, attr in _LOOPS.items():
        if name in sys.modules:
            _wrap_loop(getattr(sys.modules[name], attr))
    sys.meta_path.insert(0, _LoopHook())
