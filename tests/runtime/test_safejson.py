import json

import pytest

from runtime.safejson import MAX_JSON_DEPTH, JSONTooDeep, check_depth, parse_json


def nested(depth: int, open_: str = "[", close: str = "]") -> str:
    return open_ * depth + close * depth


def test_parses_what_json_loads_parses_from_bytes():
    for raw in [b'{"a": 1, "a": 2}', b'\xef\xbb\xbf{"a": 1}', '{"a": 1}'.encode("utf-16"),
                '{"a": 1}'.encode("utf-32"), b"NaN", b"[1e400]", b"12345678901234567890123"]:
        assert repr(parse_json(raw)) == repr(json.loads(raw))


def test_nesting_up_to_the_bound_parses_and_one_more_level_is_refused():
    assert parse_json(nested(MAX_JSON_DEPTH)) is not None
    with pytest.raises(JSONTooDeep) as e:
        parse_json(nested(MAX_JSON_DEPTH + 1))
    assert e.value.limit == MAX_JSON_DEPTH and isinstance(e.value, ValueError)


def test_thirty_thousand_levels_are_refused_not_a_recursion_error():
    with pytest.raises(JSONTooDeep):
        parse_json(nested(30_000).encode())
    with pytest.raises(JSONTooDeep):
        parse_json('{"a":' * 30_000 + "1" + "}" * 30_000)


def test_brackets_inside_strings_do_not_count():
    text = json.dumps(["[{" * 5000, 'q\\"[[[' * 500])
    check_depth(text)
    assert parse_json(text)[0].startswith("[{")


def test_many_siblings_are_not_depth():
    check_depth("[" + ",".join(["[]"] * 10_000) + "]")


def test_invalid_json_is_a_plain_value_error():
    with pytest.raises(ValueError) as e:
        parse_json(b"amount=1")
    assert not isinstance(e.value, JSONTooDeep)
