"""`serve` on a fresh state dir with a pool of isolates: every process opens the shared SQLite
files (kill switches, alarm index, shared objects, sandbox KV, audit) for the first time at
once, and the runtime must start every time (it used to exit 3 with `database is locked` in
about one start of eight; `tests/objects/test_sqlitefile.py` reproduces the race reliably)."""

from __future__ import annotations

from tests.support import Server, copy_example

STARTS = 4


def test_serve_with_a_pool_starts_cleanly_on_fresh_state_every_time(tmp_path):
    app = copy_example(tmp_path)
    manifest = app / "edgeworks.toml"
    manifest.write_text(manifest.read_text().replace('main = "app.py"', 'main = "app.py"\npool_size = 3', 1))
    for n in range(STARTS):
        with Server(app, "serve", state_dir=tmp_path / f"state-{n}") as server, server.client() as c:
            assert c.get("/hello").status_code == 200
            assert c.post("/counter/a").status_code == 200
