"""JSON parsing with a nesting bound, for every JSON document that comes from outside.

CPython's json parser recurses once per nesting level, so a body of 30,000 `[` ends in a
`RecursionError` (not a `ValueError`) that nobody on the request path expects. `parse_json`
refuses documents nested deeper than `MAX_JSON_DEPTH` with `JSONTooDeep` before parsing them;
it is a `ValueError`, so code that already answers "not JSON" keeps doing so, and the request
path turns it into 400 `{"error": "json_too_deep", "limit": 128}`.

The front (risk rules) and `Request.json()` in the isolate both parse with this function, on the
same bytes, so a rule sees exactly the value the handler sees (same duplicate-key rule, last one
wins; same BOM and UTF-16/32 detection as `json.loads` on bytes).

The bound is a constant: 128 levels is far above what real payloads use, below pydantic's 200
(so a body a route model accepts is never refused by a rule's parse the other way round), and
far below the interpreter's recursion limit.
"""

from __future__ import annotations

import json
import re
from typing import Any

__all__ = ["MAX_JSON_DEPTH", "JSONTooDeep", "RequestJSONTooDeep", "check_depth", "parse_json"]

MAX_JSON_DEPTH = 128

# A string token (skipped whole, so brackets inside strings do not count) or one bracket.
_TOKEN = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]', re.S)


class JSONTooDeep(ValueError):
    def __init__(self, limit: int = MAX_JSON_DEPTH):
        super().__init__(f"JSON nested deeper than {limit} levels")
        self.limit = limit


class RequestJSONTooDeep(JSONTooDeep):
    """The request body is what nests too deeply (from `Request.json()`): the client's fault, a
    400; too deep JSON from anywhere else (an upstream response) is the handler's failure."""


def check_depth(text: str, limit: int = MAX_JSON_DEPTH) -> None:
    """Raise JSONTooDeep if `text` opens more than `limit` arrays/objects inside each other."""
    if text.count("[") + text.count("{") <= limit:  # the common case: two C-speed scans
        return
    depth = 0
    for m in _TOKEN.finditer(text):
        c = m.group()
        if c == "[" or c == "{":
            depth += 1
            if depth > limit:
                raise JSONTooDeep(limit)
        elif c == "]" or c == "}":
            depth -= 1


def parse_json(data: bytes | bytearray | memoryview | str, limit: int = MAX_JSON_DEPTH) -> Any:
    """`json.loads(data)` for untrusted input: ValueError when not JSON, JSONTooDeep (also a
    ValueError) when nested deeper than `limit`."""
    if isinstance(data, bytes | bytearray | memoryview):
        data = bytes(data)
        # What json.loads does with bytes, done here so the depth check sees the same text.
        data = data.decode(json.detect_encoding(data), "surrogatepass")
    check_depth(data, limit)
    try:
        return json.loads(data)
    except RecursionError:  # unreachable below the bound; kept so it can never escape
        raise JSONTooDeep(limit) from None
