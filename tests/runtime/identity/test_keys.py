"""Principal keys: one per principal, private on disk, shared by every process of a state dir."""

import os
import stat
import subprocess
import sys

import jwt
import pytest

from runtime.identity import PrincipalKeys
from sandbox import CapabilityAuthority, TokenError


def test_each_principal_has_its_own_private_key_file(tmp_path):
    keys = PrincipalKeys(tmp_path)
    app_kid, _ = keys.signing_key("script:app")
    job_kid, _ = keys.signing_key("workflow:app/Job")
    assert app_kid != job_kid
    assert sorted(p.name for p in (tmp_path / "principals").iterdir()) == ["script.app.key", "workflow.app.Job.key"]
    assert stat.S_IMODE(os.stat(tmp_path / "principals").st_mode) == 0o700
    for path in (tmp_path / "principals").iterdir():
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_a_key_is_created_once_and_read_back_by_another_instance(tmp_path):
    kid, _ = PrincipalKeys(tmp_path).signing_key("script:app")
    assert PrincipalKeys(tmp_path).signing_key("script:app")[0] == kid
    assert PrincipalKeys(tmp_path).public_key(kid)[0] == "script:app"


def test_a_key_made_by_another_process_is_found_by_its_kid(tmp_path):
    keys = PrincipalKeys(tmp_path)
    keys.signing_key("script:app")  # this process already indexed its own keys
    code = ("import sys; from runtime.identity import PrincipalKeys;"
            "print(PrincipalKeys(sys.argv[1]).signing_key('workflow:app/Job')[0])")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, check=True,
                         timeout=60)
    principal, _ = keys.public_key(out.stdout.strip())
    assert principal == "workflow:app/Job"
    assert keys.public_key("no-such-kid") is None and keys.public_key(None) is None


@pytest.mark.parametrize("name", ["cli", "script:App", "workflow:app", "workflow:app/Job/x", "script:../x", ""])
def test_only_principals_have_keys(tmp_path, name):
    with pytest.raises(ValueError, match="not a principal"):
        PrincipalKeys(tmp_path).signing_key(name)
    assert not (tmp_path / "principals").exists()


def test_the_jwks_lists_public_keys_only(tmp_path):
    keys = PrincipalKeys(tmp_path)
    jwks = keys.jwks(["workflow:app/Job", "script:app", "script:app"])
    assert [k["kid"] for k in jwks["keys"]] == [keys.signing_key(p)[0] for p in ("script:app", "workflow:app/Job")]
    for k in jwks["keys"]:
        assert set(k) == {"kty", "crv", "x", "kid", "alg", "use"}
        assert (k["kty"], k["crv"], k["alg"], k["use"]) == ("OKP", "Ed25519", "EdDSA", "sig")
        assert jwt.PyJWK(k).key_id == k["kid"]


def test_the_authority_signs_each_issuer_with_its_key_and_binds_the_key_to_it(tmp_path):
    keys = PrincipalKeys(tmp_path)
    authority = CapabilityAuthority(tmp_path, keys=keys)
    token = authority.mint("workflow:app/Job", ["log"])
    assert jwt.get_unverified_header(token)["kid"] == keys.signing_key("workflow:app/Job")[0]
    assert authority.verify(token).issuer == "workflow:app/Job"
    claims = jwt.decode(token, options={"verify_signature": False})
    kid, app_key = keys.signing_key("script:app")
    forged = jwt.encode({**claims, "jti": "x"}, app_key, "EdDSA", headers={"kid": kid})  # app's key, Job's name
    with pytest.raises(TokenError) as info:
        authority.verify(forged)
    assert info.value.reason == "wrong_key"
    assert not (tmp_path / "keys").exists()
