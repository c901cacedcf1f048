"""Host patterns, address classes and the policy's decisions (no network)."""

from __future__ import annotations

import ipaddress

import pytest

from runtime.egress import (
    EgressConfig,
    EgressPolicy,
    address_class,
    parse_address,
    parse_host_pattern,
)
from runtime.egress.policy import Decision


def policy(*rules: dict[str, object], dev: bool = False) -> EgressPolicy:
    return EgressPolicy.build(EgressConfig.model_validate({"rules": list(rules)}), dev=dev)


@pytest.mark.parametrize(("pattern", "host", "matches"), [
    ("api.example.com", "api.example.com", True),
    ("API.Example.com.", "api.example.com", True),
    ("api.example.com", "x.api.example.com", False),
    ("*.example.org", "a.b.example.org", True),
    ("*.example.org", "example.org", False),
    ("*.example.org", "badexample.org", False),
    ("*", "anything.test", True),
    ("10.0.0.0/8", "10.1.2.3", True),
    ("10.0.0.0/8", "11.0.0.1", False),
    ("127.0.0.1", "127.0.0.1", True),
    ("::1", "::1", True),
    ("fc00::/7", "fd12::1", True),
    ("10.0.0.0/8", "ten.example", False),
    ("api.example.com", "10.0.0.1", False),
])
def test_host_patterns_match_names_suffixes_addresses_and_ranges(pattern: str, host: str, matches: bool):
    assert parse_host_pattern(pattern).matches(host, parse_address(host)) is matches


@pytest.mark.parametrize("bad", ["", "exa mple.com", "*.", "10.0.0.0/33", "a..b", "http://x"])
def test_bad_host_patterns_are_refused(bad: str):
    with pytest.raises(ValueError):
        parse_host_pattern(bad)


@pytest.mark.parametrize(("address", "kind"), [
    ("169.254.169.254", "metadata"), ("fd00:ec2::254", "metadata"), ("127.0.0.1", "loopback"),
    ("127.9.9.9", "loopback"), ("::1", "loopback"), ("169.254.1.1", "link-local"), ("fe80::1", "link-local"),
    ("10.0.0.1", "private"), ("172.16.5.4", "private"), ("192.168.1.1", "private"), ("fc00::1", "private"),
    ("100.64.0.1", "private"), ("0.0.0.0", "unspecified"), ("::", "unspecified"), ("224.0.0.1", "multicast"),
    ("ff02::1", "multicast"), ("::ffff:127.0.0.1", "loopback"), ("93.184.216.34", None), ("2606:4700::1111", None),
    # IPv4 addresses spelled through a translator or tunnel are what they reach
    ("64:ff9b::a9fe:a9fe", "metadata"), ("64:ff9b::7f00:1", "loopback"), ("2002:a9fe:a9fe::1", "metadata"),
    ("2002:0a00:0001::1", "private"), ("::127.0.0.1", "loopback"), ("::ffff:169.254.169.254", "metadata"),
    ("64:ff9b::808:808", None),
])
def test_special_addresses_are_classified(address: str, kind: str | None):
    assert address_class(ipaddress.ip_address(address)) == kind


def test_dev_without_a_section_allows_everything_and_serve_allows_nothing():
    open_ = EgressPolicy.build(None, dev=True).decide("script:app", "http", "127.0.0.1", 80, "restricted")
    assert open_.allowed and open_.open
    assert EgressPolicy.address_problem(open_, "x", ipaddress.ip_address("169.254.169.254")) is None
    closed = EgressPolicy.build(None, dev=False).decide("script:app", "https", "api.example.com", 443, "public")
    assert not closed.allowed and closed.reason == "host"
    empty_dev = EgressPolicy.build(EgressConfig(), dev=True).decide("script:app", "https", "x.example", 443, "public")
    assert not empty_dev.allowed  # a section, even empty, closes dev too


def test_rules_select_by_principal_scheme_host_port_and_level():
    p = policy({"principals": ["workflow:app/Agent"], "schemes": ["https"], "hosts": ["api.example.com"],
                "ports": [443], "max_level": "internal"})
    assert p.decide("workflow:app/Agent", "https", "api.example.com", 443, "public").allowed
    assert p.decide("script:app", "https", "api.example.com", 443, "public").reason == "host"
    assert p.decide("workflow:app/Agent", "http", "api.example.com", 443, "public").reason == "scheme"
    assert p.decide("workflow:app/Agent", "https", "evil.example.com", 443, "public").reason == "host"
    assert p.decide("workflow:app/Agent", "https", "api.example.com", 8443, "public").reason == "port"
    level = p.decide("workflow:app/Agent", "https", "api.example.com", 443, "confidential")
    assert level.reason == "level" and "'internal'" in level.message and "workflow:app/Agent" in level.message


def test_a_host_name_rule_does_not_open_the_special_address_it_resolves_to():
    p = policy({"hosts": ["internal.example"]}, {"hosts": ["10.0.0.0/8"]})
    by_name = p.decide("script:app", "http", "internal.example", 80, "internal")
    assert by_name.allowed
    problem = EgressPolicy.address_problem(by_name, "internal.example", ipaddress.ip_address("10.1.1.1"))
    assert problem is not None and "private" in problem and "10.1.1.1" in problem
    assert EgressPolicy.address_problem(by_name, "internal.example", ipaddress.ip_address("93.184.216.34")) is None
    literal = p.decide("script:app", "http", "10.1.1.1", 80, "internal")
    assert EgressPolicy.address_problem(literal, "10.1.1.1", ipaddress.ip_address("10.1.1.1")) is None


def test_a_rule_naming_the_range_next_to_the_name_opens_it():
    p = policy({"hosts": ["internal.example", "10.0.0.0/8"]})
    d = p.decide("script:app", "http", "internal.example", 80, "internal")
    assert EgressPolicy.address_problem(d, "internal.example", ipaddress.ip_address("10.1.1.1")) is None
    assert EgressPolicy.address_problem(d, "internal.example", ipaddress.ip_address("127.0.0.1")) is not None


def test_decisions_are_cached_and_the_policy_survives_the_wire():
    p = policy({"hosts": ["*.example.com"], "assert_identity": True})
    first = p.decide("script:app", "https", "a.example.com", 443, "internal")
    assert p.decide("script:app", "https", "a.example.com", 443, "internal") is first
    assert first.assert_identity
    again = EgressPolicy.from_wire(p.to_wire())
    assert again.decide("script:app", "https", "a.example.com", 443, "internal") == first
    assert isinstance(first, Decision)
