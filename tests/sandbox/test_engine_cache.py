"""The compiled-module cache: memory hits within an engine, disk hits across engines."""

from sandbox import CapabilityAuthority, Sandbox, SandboxEngine, ToolSpec

from .conftest import ECHO_WAT


def build(tmp_path, engine):
    app = tmp_path / "app"
    app.mkdir(exist_ok=True)
    authority = CapabilityAuthority(tmp_path / "state")
    tools = [
        ToolSpec(name="echo", kind="wasm", source=ECHO_WAT),
        ToolSpec(name="py", kind="python", source="result = input + 1"),
    ]
    return Sandbox(tmp_path / "state", app, tools, authority, engine=engine), authority


def test_second_engine_loads_from_disk_without_compiling(tmp_path):
    first = SandboxEngine(workers=1)
    second = SandboxEngine(workers=1)
    try:
        sb1, auth = build(tmp_path, first)
        token = auth.mint("script:app", [])
        assert sb1.run_sync("py", 1, token=token) == 2
        assert sb1.run_sync("echo", [1], token=token) == [1]
        assert (first.stats.compiles, first.stats.disk_hits, first.stats.disk_writes) == (2, 0, 2)
        files = sorted(p.name for p in (tmp_path / "state" / "sandbox" / "cache").iterdir())
        assert len(files) == 2 and all(f.endswith(".cwasm") for f in files)

        sb2, _ = build(tmp_path, second)
        assert sb2.run_sync("py", 41, token=token) == 42
        assert sb2.run_sync("echo", {"a": 1}, token=token) == {"a": 1}
        assert (second.stats.compiles, second.stats.disk_hits) == (0, 2)
    finally:
        first.close()
        second.close()


def test_same_engine_reuses_compiled_module_in_memory(tmp_path):
    engine = SandboxEngine(workers=1)
    try:
        sb1, auth = build(tmp_path, engine)
        sb1.prepare_all()
        sb2, _ = build(tmp_path, engine)
        sb2.prepare_all()
        assert engine.stats.compiles == 2
        assert engine.stats.memory_hits == 2
    finally:
        engine.close()


def test_corrupt_cache_file_is_recompiled_and_replaced(tmp_path):
    first, second = SandboxEngine(workers=1), SandboxEngine(workers=1)
    try:
        sb1, auth = build(tmp_path, first)
        sb1.prepare_all()
        for path in (tmp_path / "state" / "sandbox" / "cache").iterdir():
            path.write_bytes(b"garbage")
        sb2, _ = build(tmp_path, second)
        assert sb2.run_sync("echo", [2], token=auth.mint("script:app", [])) == [2]
        assert (second.stats.disk_hits, second.stats.compiles, second.stats.disk_writes) == (0, 1, 1)
        third = SandboxEngine(workers=1)
        try:
            sb3, _ = build(tmp_path, third)
            assert sb3.run_sync("echo", [3], token=auth.mint("script:app", [])) == [3]
            assert (third.stats.disk_hits, third.stats.compiles) == (1, 0)
        finally:
            third.close()
    finally:
        first.close()
        second.close()


def test_cache_key_names_content_and_wasmtime_version():
    engine = SandboxEngine(workers=1)
    try:
        from sandbox.engine import WASMTIME_VERSION

        key = engine.cache_key(b"\0asm\x01\0\0\0")
        assert f"-wt{WASMTIME_VERSION}-" in key
        assert key != engine.cache_key(b"\0asm\x01\0\0\0\0")
    finally:
        engine.close()
