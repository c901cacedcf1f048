"""A version's `.dev.vars` (the app's secrets) is sealed with the data key in the version store,
never written there in clear; without a key a bundle carrying it is refused and leaves nothing;
versions written in clear by older builds are sealed when a store with a key opens."""

import hashlib
import io
import os
import tarfile

import pytest

from runtime.admin.versions import BundleError, SecretsNeedKey, VersionStore, pack_dir
from runtime.config import ConfigError
from runtime.datakey import DataKey
from runtime.secrets import SEALED_SECRETS, read_secrets
from tests.support import write_app

SECRET = "s3cr3t-Pw!-" + "q" * 8
VARS = f"API_KEY={SECRET}\n".encode()


def key() -> DataKey:
    return DataKey(os.urandom(32), "test")


def app_dir(root, vars_text=VARS):
    app = write_app(root, '[[scripts]]\nname = "a"\nmain = "a.py"\n', {"a.py": "x = 1\n"})
    (app / ".dev.vars").write_bytes(vars_text)
    return app


def raw_files(root):
    for dirpath, _, names in os.walk(root):
        for n in names:
            yield os.path.join(dirpath, n)


def assert_no_clear_secret(state):
    needles = [SECRET.encode(), VARS, hashlib.sha256(VARS).hexdigest().encode()]
    for path in raw_files(state):
        with open(path, "rb") as f:
            data = f.read()
        assert not any(n in data for n in needles), path


def test_a_staged_version_holds_its_secrets_sealed_and_they_open_after_reopening(tmp_path):
    k, state = key(), tmp_path / "state"
    store = VersionStore(state, key=k)
    staged = store.stage(pack_dir(app_dir(tmp_path / "app")))
    meta = store.commit(staged, by=None, message=None)
    assert not (staged.root / ".dev.vars").exists() and (staged.root / SEALED_SECRETS).is_file()
    assert meta.files[".dev.vars"].startswith("keyed:") and meta.bytes == len(VARS) + len(b"x = 1\n") + len(
        (staged.root / "edgeworks.toml").read_bytes())
    assert_no_clear_secret(state)
    again = VersionStore(state, key=k)
    assert read_secrets(again.app_dir(meta.id), k) == {"API_KEY": SECRET}


def test_without_a_key_a_bundle_with_secrets_is_refused_and_leaves_nothing(tmp_path):
    store = VersionStore(tmp_path / "state")
    with pytest.raises(SecretsNeedKey, match="EDGEWORKS_DATA_KEY_FILE"):
        store.stage(pack_dir(app_dir(tmp_path / "app")))
    assert list(store.dir.iterdir()) == []


def test_without_a_key_the_startup_snapshot_leaves_the_secrets_out(tmp_path):
    store = VersionStore(tmp_path / "state")
    meta = store.record_dir(app_dir(tmp_path / "app"), by=None, message=None)
    assert ".dev.vars" not in meta.files
    assert sorted(p.name for p in store.app_dir(meta.id).iterdir()) == ["a.py", "edgeworks.toml"]
    assert read_secrets(store.app_dir(meta.id), None) == {}


def test_the_same_app_dir_is_the_same_snapshot_under_one_key(tmp_path):
    k, app = key(), app_dir(tmp_path / "app")
    store = VersionStore(tmp_path / "state", key=k)
    first = store.record_dir(app, by=None, message=None)
    assert store.record_dir(app, by=None, message=None).id == first.id
    (app / ".dev.vars").write_bytes(b"API_KEY=other\n")
    assert store.record_dir(app, by=None, message=None).id != first.id  # a secrets change is a change


def test_sealed_secrets_open_only_for_their_version_and_key(tmp_path):
    k = key()
    store = VersionStore(tmp_path / "state", key=k)
    one = store.commit(store.stage(pack_dir(app_dir(tmp_path / "one"))), by=None, message=None)
    two = store.commit(store.stage(pack_dir(app_dir(tmp_path / "two", b"API_KEY=two\n"))), by=None, message=None)
    with pytest.raises(ConfigError, match="another key|data key"):
        read_secrets(store.app_dir(one.id), key())
    with pytest.raises(ConfigError, match="no data key is configured"):
        read_secrets(store.app_dir(one.id), None)
    (store.app_dir(two.id) / SEALED_SECRETS).write_bytes((store.app_dir(one.id) / SEALED_SECRETS).read_bytes())
    with pytest.raises(ConfigError, match="does not verify"):
        read_secrets(store.app_dir(two.id), k)


def test_secrets_that_are_not_text_are_a_config_error_naming_the_file(tmp_path):
    k = key()
    store = VersionStore(tmp_path / "state", key=k)
    staged = store.stage(pack_dir(app_dir(tmp_path / "app", b"\xff\xfe not text")))
    with pytest.raises(ConfigError, match=r"\.dev\.vars: not UTF-8 text"):
        read_secrets(staged.root, k)


def test_a_bundle_using_the_secrets_file_as_a_directory_is_refused(tmp_path):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name in ("edgeworks.toml", ".dev.vars", ".dev.vars/x"):
            info = tarfile.TarInfo(name)
            info.size = 1
            tar.addfile(info, io.BytesIO(b"x"))
    store = VersionStore(tmp_path / "state", key=key())
    with pytest.raises(BundleError, match="not a directory"):
        store.stage(buf.getvalue())
    assert list(store.dir.iterdir()) == []


def _old_build_version(state, app):
    """A committed version as builds before sealing wrote it: `.dev.vars` in clear, its sha256 listed."""
    store = VersionStore(state, key=key())
    (app / ".dev.vars").unlink()
    meta = store.commit(store.stage(pack_dir(app)), by=None, message=None)
    (store.app_dir(meta.id) / ".dev.vars").write_bytes(VARS)
    files = {**meta.files, ".dev.vars": hashlib.sha256(VARS).hexdigest()}
    (store.dir / meta.id / "meta.json").write_text(meta.model_copy(update={"files": files}).model_dump_json())
    return meta.id


def test_clear_secrets_of_older_versions_are_sealed_when_a_store_with_a_key_opens(tmp_path):
    state, k = tmp_path / "state", key()
    vid = _old_build_version(state, app_dir(tmp_path / "app"))
    assert read_secrets(VersionStore(state).app_dir(vid), None) == {"API_KEY": SECRET}  # no key: left readable
    store = VersionStore(state, key=k)
    assert not (store.app_dir(vid) / ".dev.vars").exists()
    assert_no_clear_secret(state)
    assert read_secrets(store.app_dir(vid), k) == {"API_KEY": SECRET}
    # the listed content is what staging the same app dir with this key gives
    fresh = store.stage(pack_dir(app_dir(tmp_path / "again")))
    assert store.get(vid).content_hash == fresh.content_hash
