import pytest

from sandbox import Capability, CapabilityError, CapabilitySet


def test_kv_prefix_grants_keys_under_it_only():
    caps = CapabilitySet(["kv.read:notes/"])
    assert caps.allows_key("kv.read", "notes/a")
    assert caps.allows_key("kv.read", "notes/x/y")
    assert not caps.allows_key("kv.read", "note")
    assert not caps.allows_key("kv.read", "other/notes/a")
    assert not caps.allows_key("kv.write", "notes/a")  # read does not imply write


def test_kv_star_grants_every_key():
    assert CapabilitySet(["kv.write:*"]).allows_key("kv.write", "anything")


def test_host_pattern_wildcard_matches_subdomains_not_apex():
    caps = CapabilitySet(["http.fetch:*.example.com"])
    assert caps.allows_host("api.example.com", 443, "https")
    assert caps.allows_host("a.b.example.com", 80, "http")
    assert not caps.allows_host("example.com", 443, "https")
    assert not caps.allows_host("evilexample.com", 443, "https")
    assert not caps.allows_host("api.example.com.evil.org", 443, "https")


def test_host_pattern_without_port_means_default_port_only():
    caps = CapabilitySet(["http.fetch:api.example.com"])
    assert caps.allows_host("API.example.com", 443, "https")
    assert not caps.allows_host("api.example.com", 8443, "https")


def test_host_pattern_with_port_and_any_port():
    assert CapabilitySet(["http.fetch:127.0.0.1:8080"]).allows_host("127.0.0.1", 8080, "http")
    assert not CapabilitySet(["http.fetch:127.0.0.1:8080"]).allows_host("127.0.0.1", 8081, "http")
    assert CapabilitySet(["http.fetch:127.0.0.1:*"]).allows_host("127.0.0.1", 9, "http")


@pytest.mark.parametrize(
    "bad", ["", "kv.read", "kv.read:", "http.fetch:a:b:c", "http.fetch:*", "fs.read:rel", "disk.read:/", " log",
            "http.fetch:*.*.com", "http.fetch:host:0"],
)
def test_malformed_capabilities_are_rejected(bad):
    with pytest.raises(CapabilityError):
        Capability.parse(bad)


def test_coverage_for_attenuation():
    parent = CapabilitySet(["kv.read:notes/", "http.fetch:*.example.com:*", "log"])
    assert parent.uncovered(CapabilitySet(["kv.read:notes/2024/", "log"])) == []
    assert parent.uncovered(CapabilitySet(["http.fetch:api.example.com:443"])) == []
    assert parent.uncovered(CapabilitySet(["kv.read:*"])) == ["kv.read:*"]
    assert parent.uncovered(CapabilitySet(["kv.read:other/"])) == ["kv.read:other/"]
    assert parent.uncovered(CapabilitySet(["http.fetch:example.com:443"])) == [
        "http.fetch:example.com:443"
    ]
    assert parent.uncovered(CapabilitySet(["clock"])) == ["clock"]


def test_fs_paths_cover_their_subtree_only():
    caps = CapabilitySet(["fs.read:/data"])
    assert caps.allows_path("fs.read", "/data")
    assert caps.allows_path("fs.read", "/data/x")
    assert not caps.allows_path("fs.read", "/database")
    assert not caps.allows_path("fs.write", "/data")
    assert CapabilitySet(["fs.write:/"]).allows_path("fs.write", "/anything")
    with pytest.raises(CapabilityError):
        Capability.parse("fs.read:relative/path")
