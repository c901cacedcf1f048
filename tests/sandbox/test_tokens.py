import base64
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from sandbox import CapabilityAuthority, TokenError, key_id


class FakeClock:
    def __init__(self, now: float = 1_800_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def auth(tmp_path, clock):
    return CapabilityAuthority(tmp_path, clock=clock, default_ttl=300, max_ttl=900)


def private_key(state_dir: Path) -> Ed25519PrivateKey:
    return serialization.load_pem_private_key(
        (state_dir / "keys" / "sandbox-ed25519.pem").read_bytes(), password=None
    )


def claims(clock: FakeClock, **over):
    now = int(clock.now)
    base = {
        "iss": "script:app", "aud": "sandbox", "iat": now, "nbf": now, "exp": now + 60,
        "jti": "j1", "tenant": "t1", "rid": "r1", "caps": ["log"], "chain": [],
    }
    base.update(over)
    return base


def reason(auth, token):
    with pytest.raises(TokenError) as info:
        auth.verify(token)
    return info.value.reason


def test_minted_token_verifies_with_all_claims(auth, clock):
    token = auth.mint("workflow:Refund", ["log", "kv.read:notes/"], tenant="t1", request_id="r9")
    tok = auth.verify(token)
    assert tok.issuer == "workflow:Refund"
    assert tok.tenant == "t1" and tok.request_id == "r9"
    assert tok.caps == ("log", "kv.read:notes/")
    assert tok.expires_at == int(clock.now) + 300
    assert tok.not_before == tok.issued_at == int(clock.now)
    assert len(tok.jti) == 32


def test_key_file_is_private_and_shared(tmp_path, auth, clock):
    path = tmp_path / "keys" / "sandbox-ed25519.pem"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    other = CapabilityAuthority(tmp_path, clock=clock)
    assert other.verify(auth.mint("a", ["log"])).issuer == "a"


def test_expired_token_rejected(auth, clock):
    token = auth.mint("a", ["log"], ttl=60)
    clock.now += 60
    assert reason(auth, token) == "expired"


def test_not_yet_valid_rejected(tmp_path, auth, clock):
    token = jwt.encode(claims(clock, nbf=int(clock.now) + 30), private_key(tmp_path), "EdDSA")
    assert reason(auth, token) == "not_yet_valid"


def test_wrong_audience_rejected(tmp_path, auth, clock):
    token = jwt.encode(claims(clock, aud="edge"), private_key(tmp_path), "EdDSA")
    assert reason(auth, token) == "wrong_audience"


def test_unknown_issuer_rejected(tmp_path, clock):
    strict = CapabilityAuthority(tmp_path, clock=clock, issuers=["workflow:Refund"])
    token = jwt.encode(claims(clock, iss="script:evil"), private_key(tmp_path), "EdDSA")
    assert reason(strict, token) == "unknown_issuer"
    with pytest.raises(ValueError):
        strict.mint("script:evil", ["log"])


def test_alg_none_rejected(auth, clock):
    def b64(obj):
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    token = f"{b64({'alg': 'none', 'typ': 'JWT'})}.{b64(claims(clock))}."
    assert reason(auth, token) == "bad_algorithm"


def test_hs256_forged_with_public_key_rejected(tmp_path, auth, clock):
    public_pem = private_key(tmp_path).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    forged = _hs256(claims(clock), public_pem)
    assert reason(auth, forged) == "bad_algorithm"


def _hs256(payload, secret: bytes) -> str:
    import hashlib
    import hmac

    def b64(raw: bytes) -> str:
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    signing = f"{b64(json.dumps({'alg': 'HS256', 'typ': 'JWT'}).encode())}.{b64(json.dumps(payload).encode())}"
    sig = hmac.new(secret, signing.encode(), hashlib.sha256).digest()
    return f"{signing}.{b64(sig)}"


def test_signature_from_another_key_rejected(auth, clock):
    token = jwt.encode(claims(clock), Ed25519PrivateKey.generate(), "EdDSA")
    assert reason(auth, token) == "bad_signature"


def test_tampered_payload_rejected(auth):
    token = auth.mint("a", ["log"])
    head, body, sig = token.split(".")
    payload = json.loads(base64.urlsafe_b64decode(body + "=="))
    payload["caps"] = ["log", "kv.write:*"]
    body = base64.urlsafe_b64encode(json.dumps(payload).encode()).rstrip(b"=").decode()
    assert reason(auth, f"{head}.{body}.{sig}") == "bad_signature"


@pytest.mark.parametrize("token", ["", "abc", "a.b.c", "a.b", "....", "eyJhbGciOiJFZERTQSJ9.e30.AA"])
def test_malformed_rejected(auth, token):
    assert reason(auth, token) in ("malformed", "bad_signature")


@pytest.mark.parametrize("token", [["a.b.c"], {"token": "a.b.c"}, 7, None, b"a.b.c"])
def test_a_token_that_is_not_a_string_is_malformed(auth, token):
    assert reason(auth, token) == "malformed"
    with pytest.raises(TokenError, match="malformed"):
        auth.attenuate(token, [])


def test_wrong_argument_types_are_named_not_type_errors(auth):
    with pytest.raises(ValueError, match="capabilities must be a list"):
        auth.mint("a", "log")  # not ["l", "o", "g"]
    with pytest.raises(ValueError, match="capabilities must be a list"):
        auth.attenuate(auth.mint("a", ["log"]), 5)
    with pytest.raises(ValueError, match="ttl must be a number"):
        auth.mint("a", ["log"], ttl=[60])
    with pytest.raises(ValueError, match="jti must be a non-empty string"):
        auth.revoke(["jti"])


def test_malformed_claims_rejected(tmp_path, auth, clock):
    token = jwt.encode(claims(clock, caps="log"), private_key(tmp_path), "EdDSA")
    assert reason(auth, token) == "malformed"
    token = jwt.encode(claims(clock, caps=["no such cap"]), private_key(tmp_path), "EdDSA")
    assert reason(auth, token) == "malformed"


def test_lifetime_beyond_max_ttl_rejected(tmp_path, auth, clock):
    token = jwt.encode(claims(clock, exp=int(clock.now) + 3600), private_key(tmp_path), "EdDSA")
    assert reason(auth, token) == "lifetime_too_long"
    with pytest.raises(ValueError):
        auth.mint("a", ["log"], ttl=901)


def test_capabilities_beyond_issuer_ceiling_rejected(tmp_path, clock):
    strict = CapabilityAuthority(tmp_path, clock=clock, issuers={"script:app": ["kv.read:notes/"]})
    token = jwt.encode(
        claims(clock, caps=["kv.read:notes/", "kv.write:*"]), private_key(tmp_path), "EdDSA"
    )
    assert reason(strict, token) == "widened_capabilities"
    assert strict.verify(strict.mint("script:app", ["kv.read:notes/a"])).caps == ("kv.read:notes/a",)


def test_attenuation_narrows(auth, clock):
    parent = auth.mint("a", ["log", "kv.read:notes/"], tenant="t1", request_id="r1")
    child = auth.attenuate(parent, caps=["kv.read:notes/x/"], expires_at=clock.now + 30)
    tok = auth.verify(child)
    assert tok.caps == ("kv.read:notes/x/",)
    assert tok.expires_at == int(clock.now) + 30
    assert tok.tenant == "t1" and tok.request_id == "r1" and tok.issuer == "a"
    assert tok.chain == (auth.verify(parent).jti,)


def test_attenuation_refuses_widening(auth, clock):
    parent = auth.mint("a", ["kv.read:notes/"], ttl=60)
    with pytest.raises(TokenError) as info:
        auth.attenuate(parent, caps=["kv.read:*"])
    assert info.value.reason == "widened_capabilities"
    with pytest.raises(TokenError) as info:
        auth.attenuate(parent, caps=["kv.write:notes/"])
    assert info.value.reason == "widened_capabilities"
    with pytest.raises(TokenError) as info:
        auth.attenuate(parent, expires_at=clock.now + 120)
    assert info.value.reason == "widened_expiry"


def test_attenuation_for_another_tenant_is_refused(auth):
    parent = auth.mint("a", ["log"], tenant="t1")
    assert auth.verify(auth.attenuate(parent, tenant="t1")).tenant == "t1"
    for other in ("t2", None):
        with pytest.raises(TokenError) as info:
            auth.attenuate(parent, tenant=other)
        assert info.value.reason == "wrong_tenant"


def test_revocation_applies_to_token_and_its_attenuations(auth):
    parent = auth.mint("a", ["log"])
    child = auth.attenuate(parent, caps=["log"])
    auth.revoke(auth.verify(parent).jti)
    assert reason(auth, parent) == "revoked"
    assert reason(auth, child) == "revoked"


def test_revocation_in_another_process_takes_effect_immediately(tmp_path, auth):
    token = auth.mint("a", ["log"])
    jti = auth.verify(token).jti  # also caches the verified signature
    code = (
        "import sys; from sandbox import CapabilityAuthority;"
        f"CapabilityAuthority(sys.argv[1]).revoke({jti!r})"
    )
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=True, timeout=60)
    assert reason(auth, token) == "revoked"


class TwoIssuers:
    """A key source with one key per issuer, as the runtime's principal keys are."""

    def __init__(self, *issuers: str):
        self.keys = {i: Ed25519PrivateKey.generate() for i in issuers}
        self.kids = {key_id(k.public_key()): i for i, k in self.keys.items()}

    def signing_key(self, issuer):
        if issuer not in self.keys:
            raise ValueError(f"no key for {issuer!r}")
        return key_id(self.keys[issuer].public_key()), self.keys[issuer]

    def public_key(self, kid):
        issuer = self.kids.get(kid)
        return None if issuer is None else (issuer, self.keys[issuer].public_key())


def test_a_minted_token_names_its_signing_key(auth):
    header = jwt.get_unverified_header(auth.mint("a", ["log"]))
    assert header["kid"] == key_id(auth._keys.signing_key("a")[1].public_key())


def test_each_issuer_signs_with_its_own_key(tmp_path, clock):
    keys = TwoIssuers("script:app", "workflow:app/Job")
    authority = CapabilityAuthority(tmp_path, clock=clock, keys=keys)
    token = authority.mint("workflow:app/Job", ["log"])
    assert jwt.get_unverified_header(token)["kid"] == key_id(keys.keys["workflow:app/Job"].public_key())
    assert authority.verify(token).issuer == "workflow:app/Job"
    assert authority.verify(authority.attenuate(token, [])).issuer == "workflow:app/Job"
    assert not (tmp_path / "keys").exists()  # no authority-wide key is made when keys are given


def test_a_token_claiming_another_issuer_than_its_key_is_refused(tmp_path, clock):
    keys = TwoIssuers("script:app", "workflow:app/Job")
    authority = CapabilityAuthority(tmp_path, clock=clock, keys=keys)
    kid = key_id(keys.keys["script:app"].public_key())
    forged = jwt.encode(claims(clock, iss="workflow:app/Job"), keys.keys["script:app"], "EdDSA", headers={"kid": kid})
    assert reason(authority, forged) == "wrong_key"
    unsigned_kid = jwt.encode(claims(clock), keys.keys["script:app"], "EdDSA")
    assert reason(authority, unsigned_kid) == "unknown_key"
    stranger = Ed25519PrivateKey.generate()
    foreign = jwt.encode(claims(clock), stranger, "EdDSA", headers={"kid": key_id(stranger.public_key())})
    assert reason(authority, foreign) == "unknown_key"


def test_minting_beyond_the_issuer_ceiling_is_refused_naming_what_is_not_covered(tmp_path, clock):
    strict = CapabilityAuthority(tmp_path, clock=clock, issuers={"script:app": ["kv.read:notes/"], "script:free": None})
    with pytest.raises(TokenError) as info:
        strict.mint("script:app", ["kv.read:notes/a", "kv.write:notes/", "log"])
    assert info.value.reason == "beyond_ceiling"
    assert "kv.write:notes/, log" in info.value.message and "kv.read:notes/a" not in info.value.message
    assert strict.verify(strict.mint("script:free", ["kv.write:*"])).caps == ("kv.write:*",)
