"""Host patterns and address classes: what an `[[egress.rules]]` ``hosts`` entry matches, and
which addresses are denied unless a rule names them.

A host pattern is one of: ``*`` (any host name or public address), an exact name
(``api.example.com``; case and a trailing dot do not matter), ``*.suffix`` (any name that ends
with ``.suffix``, at any depth, not ``suffix`` itself), an IP literal (``127.0.0.1``, ``::1``)
or a CIDR range (``10.0.0.0/8``, ``fc00::/7``). Only the last two *name* addresses: a host name
rule never opens a special address that the name resolves to.

Special addresses (`address_class` is not None): loopback, private (RFC 1918, fc00::/7, shared
100.64/10 and the other non-global ranges), link-local (169.254/16, fe80::/10), the cloud
metadata endpoints (169.254.169.254, fd00:ec2::254), unspecified and multicast. An IPv4-mapped
IPv6 address is classed as the IPv4 address it carries.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

__all__ = ["HostPattern", "IPAddress", "IPNetwork", "address_class", "normalize_host", "parse_address",
           "parse_host_pattern"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_METADATA = frozenset({ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254")})
_LABEL_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-_")


def normalize_host(host: str) -> str:
    """Lower case, no trailing dot, no IPv6 brackets."""
    host = host.strip().lower().rstrip(".")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host


def parse_address(host: str) -> IPAddress | None:
    """The IP address `host` spells, or None for a name; a mapped IPv4 address is unwrapped."""
    try:
        addr = ipaddress.ip_address(normalize_host(host).split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))
_COMPATIBLE = ipaddress.ip_network("::/96")  # deprecated IPv4-compatible addresses, ::a.b.c.d


def embedded_ipv4(addr: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries and reaches through a translator or tunnel:
    IPv4-mapped (::ffff:a.b.c.d), NAT64 (64:ff9b::a.b.c.d), 6to4 (2002:AABB:CCDD::), Teredo's
    client, and IPv4-compatible (::a.b.c.d). A rule that does not name the IPv4 address does not
    open it through one of these spellings."""
    if addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    if any(addr in net for net in _NAT64):
        return ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)
    if addr.sixtofour is not None:
        return addr.sixtofour
    if addr.teredo is not None:
        return addr.teredo[1]
    if addr in _COMPATIBLE and int(addr) > 1:
        return ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)
    return None


def address_class(addr: IPAddress) -> str | None:
    """Why `addr` is special ("metadata", "loopback", "link-local", "unspecified", "multicast",
    "private"), or None for a public address."""
    if isinstance(addr, ipaddress.IPv6Address) and (inner := embedded_ipv4(addr)) is not None:
        inner_class = address_class(inner)
        if inner_class is not None or addr.ipv4_mapped is not None:
            return inner_class
    if addr in _METADATA:
        return "metadata"
    if addr.is_loopback:
        return "loopback"
    if addr.is_link_local:
        return "link-local"
    if addr.is_unspecified:
        return "unspecified"
    if addr.is_multicast:
        return "multicast"
    if not addr.is_global:
        return "private"
    return None


@dataclass(frozen=True, slots=True)
class HostPattern:
    """One parsed ``hosts`` entry; `network` is set for IP literals and CIDR ranges."""

    text: str
    name: str | None = None  # exact name
    suffix: str | None = None  # "*.suffix": ".suffix"
    network: IPNetwork | None = None
    any: bool = False

    def matches(self, host: str, addr: IPAddress | None) -> bool:
        """Whether a request's host (normalized; `addr` when it is an IP literal) matches."""
        if self.any:
            return True
        if addr is not None:
            return self.network is not None and addr.version == self.network.version and addr in self.network
        if self.name is not None:
            return host == self.name
        return self.suffix is not None and host.endswith(self.suffix)

    def names_address(self, addr: IPAddress) -> bool:
        """Whether this entry names `addr` explicitly (an IP literal or a range holding it)."""
        return self.network is not None and addr.version == self.network.version and addr in self.network


def parse_host_pattern(text: str) -> HostPattern:
    """Parse one ``hosts`` entry; ValueError says what is wrong with it."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError("a host pattern is a non-empty string")
    value = normalize_host(text)
    if text.strip().startswith("*.") and not value[2:]:
        raise ValueError(f"{text!r} needs a suffix after '*.'")
    if value == "*":
        return HostPattern(text, any=True)
    if "/" in value:
        try:
            network = ipaddress.ip_network(value, strict=False)
        except ValueError:
            raise ValueError(f"{text!r} is not a CIDR range (e.g. '10.0.0.0/8')") from None
        return HostPattern(text, network=network)
    addr = parse_address(value)
    if addr is not None:
        return HostPattern(text, network=ipaddress.ip_network(addr))
    if value.startswith("*."):
        suffix = value[1:]
        _check_name(suffix[1:], text)
        return HostPattern(text, suffix=suffix)
    _check_name(value, text)
    return HostPattern(text, name=value)


def _check_name(name: str, text: str) -> None:
    labels = name.split(".")
    if not name or len(name) > 253 or any(not label or len(label) > 63 or not set(label) <= _LABEL_CHARS
                                          for label in labels):
        raise ValueError(f"{text!r} is not a host name, '*.suffix', IP address or CIDR range")
