"""Which addresses are loopback: the admin plane answers loopback peers in `dev` without
``[auth]``, and `dev` shows exception details to them only."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Any

__all__ = ["is_loopback_client", "is_loopback_host"]


def is_loopback_host(host: str) -> bool:
    """Whether `host` (an address, or ``localhost``) is a loopback address."""
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0].strip("[]"))
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # ::ffff:127.0.0.1 (dual-stack sockets)
    return address.is_loopback


def is_loopback_client(scope: Mapping[str, Any]) -> bool:
    """Whether the ASGI connection comes from a loopback address. Only the socket peer counts,
    never a header; an unknown peer (None, a test client's name) is not loopback."""
    client = scope.get("client")
    if not client:
        return False
    host = client[0]
    return isinstance(host, str) and host != "localhost" and is_loopback_host(host)
