import base64
import hashlib
import hmac
import json
import logging
import traceback
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from pydantic import ValidationError

from runtime.front.identity import AuthConfig, AuthConfigError, AuthError, Identity, Verifier

NOW = 1_800_000_000
ISS = "https://idp.example.test"
AUD = "edgeworks-app"
HMAC_SECRET = "s3cr3t-" + "k" * 40


def pem(private_key) -> bytes:
    return private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


@pytest.fixture(scope="module")
def ed_key():
    return ed25519.Ed25519PrivateKey.generate()


@pytest.fixture(scope="module")
def rsa_key():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_key():
    return ec.generate_private_key(ec.SECP256R1())


def claims(**overrides):
    base = {
        "sub": "user-1",
        "tenant": "acme",
        "scope": "orders:read orders:write",
        "iss": ISS,
        "aud": AUD,
        "iat": NOW - 10,
        "nbf": NOW - 10,
        "exp": NOW + 300,
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hand_made(header: dict, payload: dict, key: bytes | None) -> str:
    signing_input = b64(json.dumps(header).encode()) + "." + b64(json.dumps(payload).encode())
    sig = b"" if key is None else hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + b64(sig)


@pytest.fixture
def ed_verifier(tmp_path: Path, ed_key) -> Verifier:
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "idp.pem").write_bytes(pem(ed_key))
    cfg = AuthConfig(issuer=ISS, audience=AUD, public_key_file="keys/idp.pem", leeway_s=30)
    return Verifier(cfg, base_dir=tmp_path, clock=lambda: NOW)


def test_valid_eddsa_token_gives_the_identity(ed_verifier: Verifier, ed_key):
    token = jwt.encode(claims(), ed_key, algorithm="EdDSA")
    ident = ed_verifier.verify(f"Bearer {token}")
    assert ident == Identity(
        subject="user-1",
        tenant="acme",
        scopes=("orders:read", "orders:write"),
        claims=claims(),
    )
    assert ed_verifier.algorithms == {"EdDSA"}


def test_scopes_as_a_list_and_custom_claim_names(tmp_path: Path, ed_key):
    (tmp_path / "k.pem").write_bytes(pem(ed_key))
    cfg = AuthConfig(
        public_key_file="k.pem", scopes_claim="scopes", tenant_claim="org", subject_claim="uid"
    )
    v = Verifier(cfg, base_dir=tmp_path, clock=lambda: NOW)
    token = jwt.encode(
        {"uid": "u9", "org": "globex", "scopes": ["a", "b"], "exp": NOW + 60}, ed_key, "EdDSA"
    )
    ident = v.verify(f"bearer {token}")
    assert (ident.subject, ident.tenant, ident.scopes) == ("u9", "globex", ("a", "b"))


def test_hs256_secret_from_the_secrets_mapping():
    cfg = AuthConfig(secret="JWT_KEY", audience=AUD)
    v = Verifier(cfg, secrets={"JWT_KEY": HMAC_SECRET}, clock=lambda: NOW)
    assert v.algorithms == {"HS256"}
    token = jwt.encode(claims(), HMAC_SECRET, algorithm="HS256")
    assert v.verify(f"Bearer {token}").tenant == "acme"


def test_jwks_selects_the_key_by_kid(tmp_path: Path, rsa_key, ec_key):
    keys = []
    for kid, key in (("r1", rsa_key), ("e1", ec_key)):
        jwk = json.loads(jwt.algorithms.get_default_algorithms()[
            "RS256" if kid == "r1" else "ES256"
        ].to_jwk(key.public_key()))
        keys.append({**jwk, "kid": kid})
    (tmp_path / "jwks.json").write_text(json.dumps({"keys": keys}))
    v = Verifier(AuthConfig(jwks_file="jwks.json"), base_dir=tmp_path, clock=lambda: NOW)
    assert v.algorithms == {"RS256", "ES256"}
    rs = jwt.encode(claims(), rsa_key, "RS256", headers={"kid": "r1"})
    es = jwt.encode(claims(), ec_key, "ES256", headers={"kid": "e1"})
    assert v.verify(f"Bearer {rs}").subject == "user-1"
    assert v.verify(f"Bearer {es}").subject == "user-1"
    unknown = jwt.encode(claims(), rsa_key, "RS256", headers={"kid": "zz"})
    with pytest.raises(AuthError) as err:
        v.verify(f"Bearer {unknown}")
    assert err.value.code == "unknown_key"
    swapped = jwt.encode(claims(), ec_key, "ES256", headers={"kid": "r1"})
    with pytest.raises(AuthError) as err:
        v.verify(f"Bearer {swapped}")
    assert err.value.code == "unknown_key"  # r1 is an RSA key: no ES256 key has that kid


def _reject_cases(ed_key, rsa_key):
    other = ed25519.Ed25519PrivateKey.generate()
    good = jwt.encode(claims(), ed_key, "EdDSA")
    h, p, s = good.split(".")
    tampered_payload = b64(json.dumps(claims(tenant="evil")).encode())
    return [
        ("alg_none", hand_made({"alg": "none", "typ": "JWT"}, claims(), None)),
        ("alg_none", hand_made({"alg": "NoNe"}, claims(), None)),
        # the classic confusion: HS256 keyed with the (public) PEM text
        ("alg_not_allowed", hand_made({"alg": "HS256"}, claims(), pem(ed_key))),
        ("alg_not_allowed", jwt.encode(claims(), rsa_key, "RS256")),
        ("bad_signature", jwt.encode(claims(), other, "EdDSA")),
        ("bad_signature", f"{h}.{tampered_payload}.{s}"),
        ("expired", jwt.encode(claims(exp=NOW - 31), ed_key, "EdDSA")),
        ("not_yet_valid", jwt.encode(claims(nbf=NOW + 31), ed_key, "EdDSA")),
        ("not_yet_valid", jwt.encode(claims(iat=NOW + 31), ed_key, "EdDSA")),
        ("wrong_audience", jwt.encode(claims(aud="other-app"), ed_key, "EdDSA")),
        ("wrong_audience", jwt.encode(claims(aud=None), ed_key, "EdDSA")),
        ("wrong_issuer", jwt.encode(claims(iss="https://evil.test"), ed_key, "EdDSA")),
        ("wrong_issuer", jwt.encode(claims(iss=None), ed_key, "EdDSA")),
        ("missing_claim", jwt.encode(claims(exp=None), ed_key, "EdDSA")),
        ("malformed", jwt.encode(claims(exp="tomorrow"), ed_key, "EdDSA")),
        ("malformed", jwt.encode(claims(scope={"a": 1}), ed_key, "EdDSA")),
        ("malformed", "not-a-jwt"),
        ("malformed", f"{b64(b'not json')}.{p}.{s}"),
        ("malformed", jwt.api_jws.encode(b"[1,2", ed_key, "EdDSA")),  # signed, not JSON
        ("malformed", jwt.api_jws.encode(b"[1,2]", ed_key, "EdDSA")),  # signed, not an object
        ("malformed", f"{b64(json.dumps({'typ': 'JWT'}).encode())}.{p}.{s}"),
        # a lone surrogate ("\\ud800" in the JSON) cannot travel as UTF-8 to isolates or the audit log
        ("malformed", jwt.encode(claims(tenant="\ud800"), ed_key, "EdDSA")),
        ("malformed", jwt.encode(claims(sub="a\udfff"), ed_key, "EdDSA")),
        ("malformed", jwt.encode(claims(profile={"k\ud800": 1}), ed_key, "EdDSA")),
        ("malformed", jwt.encode(claims(profile=[[["\udc00"]]]), ed_key, "EdDSA")),
        # JSON nested past the parser's depth, in the payload and in the header
        ("malformed", jwt.api_jws.encode(b'{"a":' + b"[" * 2000 + b"]" * 2000 + b"}", ed_key, "EdDSA")),
        ("malformed", b64(b'{"alg": "EdDSA", "x": ' + b"[" * 2000 + b"]" * 2000 + b"}") + f".{p}.{s}"),
    ]


def test_each_rejection_has_its_own_code_and_never_shows_the_token(
    ed_verifier: Verifier, ed_key, rsa_key, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.DEBUG)
    cases = _reject_cases(ed_key, rsa_key)
    for code, token in cases:
        with pytest.raises(AuthError) as err:
            ed_verifier.verify(f"Bearer {token}")
        e = err.value
        assert (e.code, e.status) == (code, 401), (code, e.code)
        assert e.www_authenticate.startswith(
            'Bearer realm="edgeworks", error="invalid_token", error_description="'
        )
        shown = "".join(traceback.format_exception(e)) + repr(e) + e.www_authenticate
        for part in token.split("."):
            if len(part) > 8:
                assert part not in shown, code
    assert not any(token in caplog.text for _, token in cases)


def test_leeway_accepts_small_clock_skew(ed_verifier: Verifier, ed_key):
    token = jwt.encode(claims(exp=NOW - 29, nbf=NOW + 29, iat=NOW + 29), ed_key, "EdDSA")
    assert ed_verifier.verify(f"Bearer {token}").subject == "user-1"


def test_default_leeway_is_five_seconds_each_way(tmp_path: Path, ed_key):
    (tmp_path / "k.pem").write_bytes(pem(ed_key))
    v = Verifier(AuthConfig(public_key_file="k.pem"), base_dir=tmp_path, clock=lambda: NOW)
    assert v.config.leeway_s == 5
    v.verify(f"Bearer {jwt.encode({'exp': NOW - 4, 'iat': NOW + 4}, ed_key, 'EdDSA')}")
    with pytest.raises(AuthError, match="expired"):
        v.verify(f"Bearer {jwt.encode({'exp': NOW - 6}, ed_key, 'EdDSA')}")
    with pytest.raises(AuthError, match="not valid yet"):
        v.verify(f"Bearer {jwt.encode({'exp': NOW + 60, 'nbf': NOW + 6}, ed_key, 'EdDSA')}")


def test_leeway_is_bounded_to_a_minute():
    AuthConfig(secret="S", leeway_s=60)
    with pytest.raises(ValidationError, match="less than or equal to 60"):
        AuthConfig(secret="S", leeway_s=61)


def test_expiry_follows_the_injected_clock(tmp_path: Path, ed_key):
    (tmp_path / "k.pem").write_bytes(pem(ed_key))
    clock = [NOW]
    v = Verifier(AuthConfig(public_key_file="k.pem", leeway_s=0), base_dir=tmp_path,
                 clock=lambda: clock[0])
    token = jwt.encode({"exp": NOW + 60}, ed_key, "EdDSA")
    v.verify(f"Bearer {token}")
    clock[0] = NOW + 60
    with pytest.raises(AuthError, match="expired"):
        v.verify(f"Bearer {token}")


@pytest.mark.parametrize("header", [None, "", "   "])
def test_missing_token(ed_verifier: Verifier, header):
    with pytest.raises(AuthError) as err:
        ed_verifier.verify(header)
    assert (err.value.status, err.value.code) == (401, "missing_token")


@pytest.mark.parametrize("header", ["Basic dXNlcjpwYXNz", "Bearer", "Token a.b.c", "Bearer a.b"])
def test_malformed_authorization_headers(ed_verifier: Verifier, header):
    with pytest.raises(AuthError) as err:
        ed_verifier.verify(header)
    assert err.value.code == "malformed"


def test_authorize_modes_tenant_and_scopes(ed_verifier: Verifier):
    ident = Identity("u", "acme", ("orders:read",), {})
    no_tenant = Identity("u", None, ("orders:read",), {})
    assert ed_verifier.authorize(ident, "required", ["orders:read"], require_tenant=True) is ident
    assert ed_verifier.authorize(None, "optional") is None
    assert ed_verifier.authorize(None, "none") is None
    with pytest.raises(AuthError) as err:
        ed_verifier.authorize(None, "required")
    assert (err.value.status, err.value.code) == (401, "missing_token")
    assert 'error="invalid_token"' in err.value.headers()["WWW-Authenticate"]
    with pytest.raises(AuthError) as err:
        ed_verifier.authorize(no_tenant, "required", require_tenant=True)
    assert (err.value.status, err.value.code) == (401, "missing_tenant")
    with pytest.raises(AuthError) as err:
        ed_verifier.authorize(ident, "required", ["orders:read", "orders:delete"])
    e = err.value
    assert (e.status, e.code) == (403, "insufficient_scope")
    assert e.www_authenticate == (
        'Bearer realm="edgeworks", error="insufficient_scope",'
        ' error_description="the token lacks a required scope", scope="orders:read orders:delete"'
    )


def test_authenticate_optional_still_refuses_a_bad_token(ed_verifier: Verifier, ed_key):
    assert ed_verifier.authenticate(None, "optional") is None
    assert ed_verifier.authenticate("Bearer garbage", "none") is None
    with pytest.raises(AuthError):
        ed_verifier.authenticate("Bearer x.y.z", "optional")
    token = jwt.encode(claims(tenant=None), ed_key, "EdDSA")
    with pytest.raises(AuthError) as err:
        ed_verifier.authenticate(f"Bearer {token}", "required", require_tenant=True)
    assert err.value.code == "missing_tenant"


def test_config_validation():
    with pytest.raises(ValidationError, match="exactly one"):
        AuthConfig()
    with pytest.raises(ValidationError, match="exactly one"):
        AuthConfig(secret="a", public_key_file="k.pem")
    with pytest.raises(ValidationError, match="none"):
        AuthConfig(secret="a", algorithms=["none"])
    with pytest.raises(ValidationError, match="HS256 needs a secret"):
        AuthConfig(public_key_file="k.pem", algorithms=["RS256", "HS256"])
    with pytest.raises(ValidationError, match="secret key verifies"):
        AuthConfig(secret="a", algorithms=["RS256"])
    with pytest.raises(ValidationError, match="unknown algorithm"):
        AuthConfig(secret="a", algorithms=["XX1"])
    with pytest.raises(ValidationError, match="extra"):
        AuthConfig(secret="a", issuerr="typo")


def test_verifier_config_errors(tmp_path: Path, rsa_key):
    with pytest.raises(AuthConfigError, match="not defined"):
        Verifier(AuthConfig(secret="JWT_KEY"), secrets={})
    with pytest.raises(AuthConfigError, match="shorter"):
        Verifier(AuthConfig(secret="JWT_KEY"), secrets={"JWT_KEY": "short"})
    with pytest.raises(AuthConfigError, match="public_key_file"):
        Verifier(AuthConfig(public_key_file="missing.pem"), base_dir=tmp_path)
    (tmp_path / "rsa.pem").write_bytes(pem(rsa_key))
    with pytest.raises(AuthConfigError, match="ES256 does not fit"):
        Verifier(AuthConfig(public_key_file="rsa.pem", algorithms=["ES256"]), base_dir=tmp_path)
    v = Verifier(AuthConfig(public_key_file="rsa.pem", algorithms=["PS256"]), base_dir=tmp_path)
    assert v.algorithms == {"PS256"}
    (tmp_path / "jwks.json").write_text(json.dumps({"keys": [{"kty": "oct", "k": "AAAA"}]}))
    with pytest.raises(AuthConfigError, match="only public keys"):
        Verifier(AuthConfig(jwks_file="jwks.json"), base_dir=tmp_path)
    (tmp_path / "bad.json").write_text("[]")
    with pytest.raises(AuthConfigError, match="not a JWKS"):
        Verifier(AuthConfig(jwks_file="bad.json"), base_dir=tmp_path)


def test_a_pinned_rs256_verifier_refuses_ps256(tmp_path: Path, rsa_key):
    (tmp_path / "rsa.pem").write_bytes(pem(rsa_key))
    v = Verifier(AuthConfig(public_key_file="rsa.pem"), base_dir=tmp_path, clock=lambda: NOW)
    assert v.algorithms == {"RS256"}
    assert v.verify("Bearer " + jwt.encode(claims(), rsa_key, "RS256")).subject == "user-1"
    with pytest.raises(AuthError) as err:
        v.verify("Bearer " + jwt.encode(claims(), rsa_key, "PS256"))
    assert err.value.code == "alg_not_allowed"
    # HS256 keyed with the RSA public key PEM: the algorithm-confusion attack.
    with pytest.raises(AuthError) as err:
        v.verify("Bearer " + hand_made({"alg": "HS256", "typ": "JWT"}, claims(), pem(rsa_key)))
    assert err.value.code == "alg_not_allowed"


def test_oversized_tokens_are_refused_before_parsing(ed_verifier: Verifier):
    with pytest.raises(AuthError) as err:
        ed_verifier.verify("Bearer " + "a" * 9000 + ".b.c")
    assert err.value.code == "malformed"
