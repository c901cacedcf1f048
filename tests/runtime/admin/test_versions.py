"""The version store's failure paths: names the filesystem refuses are bundle errors (never a bare
OSError), a full disk is the store's error, and what a killed deploy left is removed when the
store is next opened, unless its process still runs."""

import errno
import os
import subprocess
import sys

import pytest

from runtime.admin import versions
from runtime.admin.versions import PENDING, BundleError, VersionStore, pack_dir, unpack_bundle
from tests.support import tar_of, write_app


@pytest.mark.parametrize("names, needle", [
    (("a", "a/b.py"), "a is a file in this bundle"),
    (("a", "a/b/c.py"), "a is a file in this bundle"),
    (("x" * 256,), "longer than 255 bytes"),
    (("d/" + "y" * 300 + ".py",), "longer than 255 bytes"),
    (("/".join(["q" * 250] * 20),), "File name too long"),
    (("caf\udce9.py",), "not UTF-8"),
])
def test_names_the_filesystem_refuses_are_bundle_errors_and_leave_nothing(tmp_path, names, needle):
    dest = tmp_path / "out"
    with pytest.raises(BundleError, match=needle):
        unpack_bundle(tar_of(*names), dest)
    assert not dest.exists()


def test_a_full_disk_is_the_stores_error_not_the_bundles(tmp_path, monkeypatch):
    def full(*_args, **_kw):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(versions, "open", full, raising=False)
    with pytest.raises(OSError) as e:
        unpack_bundle(tar_of("a.py"), tmp_path / "out")
    assert not isinstance(e.value, BundleError) and e.value.errno == errno.ENOSPC
    assert not (tmp_path / "out").exists()


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_opening_the_store_removes_what_an_interrupted_deploy_left(tmp_path):
    state = tmp_path / "state"
    store = VersionStore(state)
    app = write_app(tmp_path / "app", "[[scripts]]\nname = 'a'\nmain = 'a.py'\n", {"a.py": "X = 1\n"})
    kept = store.commit(store.stage(pack_dir(app)), by=None, message="kept")
    killed = store.stage(pack_dir(app))  # staged, never committed: its deployer was killed
    (killed.root.parent / PENDING).write_text(str(_dead_pid()))
    legacy = state / "versions" / "0123456789ab-20260101000000"  # no owner recorded at all
    (legacy / "app").mkdir(parents=True)
    running = store.stage(pack_dir(app))  # staged by a process that still runs (this one)
    staging = state / "versions" / f".staging-{_dead_pid()}-abc"
    (staging / "app").mkdir(parents=True)
    tmp = state / f".deployment.{_dead_pid()}.tmp"
    tmp.write_text("{}")
    ours = state / f".deployment.{os.getpid()}.tmp"
    ours.write_text("{}")

    again = VersionStore(state)
    assert not killed.root.parent.exists() and not legacy.exists() and not staging.exists() and not tmp.exists()
    assert running.root.exists() and ours.exists()
    assert [m.id for m in again.list()] == [kept.id] and again.get(kept.id).message == "kept"
    again.commit(running, by=None, message="later")
    assert not (running.root.parent / PENDING).exists()
    assert VersionStore(state).get(running.id) is not None
