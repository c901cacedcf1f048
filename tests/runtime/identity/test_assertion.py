"""Outbound assertions: short-lived, signed by the principal's key, for one origin."""

import jwt
import pytest

from runtime.identity import Assertions, PrincipalKeys, audience_origin


class Clock:
    now = 1_700_000_000.0  # in the past

    def __call__(self):
        return self.now


def verify(token, keys, audience):
    jwk = next(k for k in keys.jwks(["workflow:app/Job", "script:app"])["keys"]
               if k["kid"] == jwt.get_unverified_header(token)["kid"])
    return jwt.decode(token, jwt.PyJWK(jwk).key, algorithms=["EdDSA"], audience=audience)


def test_an_assertion_names_the_principal_for_one_origin(tmp_path):
    keys = PrincipalKeys(tmp_path)
    token = Assertions(keys)("workflow:app/Job", "https://API.example.com:443/v1/x?q=1")
    claims = verify(token, keys, "https://api.example.com")
    assert claims["iss"] == claims["sub"] == "workflow:app/Job"
    assert claims["exp"] - claims["iat"] == 60 and len(claims["jti"]) == 32
    assert jwt.get_unverified_header(token)["kid"] == keys.signing_key("workflow:app/Job")[0]
    with pytest.raises(jwt.InvalidAudienceError):
        verify(token, keys, "https://evil.example.com")


def test_an_assertion_expires_after_its_ttl(tmp_path):
    clock = Clock()
    keys = PrincipalKeys(tmp_path)
    token = Assertions(keys, clock=clock)("script:app", "https://api.example.com")
    with pytest.raises(jwt.ExpiredSignatureError):
        verify(token, keys, "https://api.example.com")  # minted at the fake clock's time, long ago
    assert jwt.decode(token, options={"verify_signature": False})["exp"] == int(clock.now) + 60


def test_no_assertion_for_a_caller_that_is_not_a_principal(tmp_path):
    assert Assertions(tmp_path)("cli", "https://api.example.com") is None
    assert not (tmp_path / "principals").exists()


@pytest.mark.parametrize(("url", "origin"), [
    ("https://api.example.com", "https://api.example.com"),
    ("HTTP://Api.Example.com:80/", "http://api.example.com"),
    ("http://127.0.0.1:8080/a", "http://127.0.0.1:8080"),
    ("https://[::1]:8443", "https://[::1]:8443"),
])
def test_the_audience_is_the_origin(url, origin):
    assert audience_origin(url) == origin


@pytest.mark.parametrize("url", ["ftp://x.example.com", "api.example.com", "https://"])
def test_a_url_without_an_http_origin_is_refused(url):
    with pytest.raises(ValueError, match="origin"):
        audience_origin(url)
