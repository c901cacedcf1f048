"""Make a module's tables observable: export every table the module defines but does not export.

A guest that grows a table past `table_elements` sees `table.grow` return -1, like a failed
`memory.grow`; wasmtime-py has no hook that reports the refusal, so the call typically spins
until its fuel runs out. The runner tells that apart from an ordinary infinite loop by the
table's size when the call failed, and for that it needs the table: wasmtime only hands out
exported items, so before compiling a tool the sandbox adds an export
`__edgeworks_table_<index>` for each table that has none (adding exports changes nothing the
guest can observe).

Only the module's own tables (its table section) are considered: a tool cannot import a table
(`sandbox.hostlink` links functions only). The module is returned unchanged when it has no
table section, already exports every table, has no export section to extend, or cannot be read
(wasmtime then reports the problem when compiling it).
"""

from __future__ import annotations

__all__ = ["TABLE_EXPORT_PREFIX", "export_tables"]

TABLE_EXPORT_PREFIX = "__edgeworks_table_"
_HEADER = b"\0asm\x01\0\0\0"
_TABLE_SECTION, _EXPORT_SECTION = 4, 7
_TABLE_KIND = 1


class _Malformed(Exception):
    pass


def export_tables(wasm: bytes) -> bytes:
    try:
        return _export_tables(bytes(wasm))
    except _Malformed:
        return wasm


def _export_tables(wasm: bytes) -> bytes:
    if not wasm.startswith(_HEADER):
        raise _Malformed
    sections: list[tuple[int, int, int, int]] = []  # (id, header start, content start, end)
    pos = len(_HEADER)
    while pos < len(wasm):
        size, start = _read_u32(wasm, pos + 1)
        end = start + size
        if end > len(wasm):
            raise _Malformed
        sections.append((wasm[pos], pos, start, end))
        pos = end
    tables = [s for s in sections if s[0] == _TABLE_SECTION]
    exports = [s for s in sections if s[0] == _EXPORT_SECTION]
    if len(tables) != 1 or len(exports) != 1:
        return wasm
    n_tables, _ = _read_u32(wasm, tables[0][2])
    _, header, start, end = exports[0]
    count, first = _read_u32(wasm, start)
    pos = first
    names: set[bytes] = set()
    exported: set[int] = set()
    for _ in range(count):
        length, pos = _read_u32(wasm, pos)
        names.add(wasm[pos : pos + length])
        pos += length
        kind = wasm[pos]
        index, pos = _read_u32(wasm, pos + 1)
        if kind == _TABLE_KIND:
            exported.add(index)
    if pos != end:
        raise _Malformed
    added = b""
    for index in range(n_tables):
        name = f"{TABLE_EXPORT_PREFIX}{index}".encode()
        if index in exported or name in names:
            continue
        added += _u32(len(name)) + name + bytes([_TABLE_KIND]) + _u32(index)
        count += 1
    if not added:
        return wasm
    content = _u32(count) + wasm[first:end] + added
    return wasm[:header] + bytes([_EXPORT_SECTION]) + _u32(len(content)) + content + wasm[end:]


def _read_u32(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data) or shift > 28:
            raise _Malformed
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _u32(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)
