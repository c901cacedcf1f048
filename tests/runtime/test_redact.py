import pytest

from runtime.redact import RedactionPatternError, Redactor, is_sensitive_key


@pytest.fixture(scope="module")
def r() -> Redactor:
    return Redactor()


@pytest.mark.parametrize(
    ("text", "secret", "label"),
    [
        ("contact bob.smith+tag@example.co.uk today", "bob.smith+tag@example.co.uk", "email"),
        ("call +1 415 555 2671 now", "+1 415 555 2671", "phone"),
        ("call +33612345678 now", "+33612345678", "phone"),
        ("call +44 (20) 7946-0958 now", "+44 (20) 7946-0958", "phone"),
        ("call (555) 123-4567 now", "(555) 123-4567", "phone"),
        ("call 555-123-4567 now", "555-123-4567", "phone"),
        ("call 555.123.4567 now", "555.123.4567", "phone"),
        ("call 020 7946 0958 now", "020 7946 0958", "phone"),
        ("call 06 12 34 56 78 now", "06 12 34 56 78", "phone"),
        ("pay 4111 1111 1111 1111 ok", "4111 1111 1111 1111", "card"),
        ("pay 5500-0000-0000-0004 ok", "5500-0000-0000-0004", "card"),
        ("pay 378282246310005 ok", "378282246310005", "card"),
        ("Authorization: Bearer abc.def-ghi_jkl", "abc.def-ghi_jkl", "bearer"),
        ("auth bearer ya29.a0AfH6SMBx", "ya29.a0AfH6SMBx", "bearer"),
        (
            "tok eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJ1MSJ9.c2lnbmF0dXJl_-x end",
            "eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJ1MSJ9.c2lnbmF0dXJl_-x",
            "jwt",
        ),
        ("unsigned eyJhbGciOiJub25lIn0.eyJzdWIiOiJ1MSJ9. end", "eyJhbGciOiJub25lIn0", "jwt"),
        ("k sk-proj-AbCdEfGh12345678IjKl end", "sk-proj-AbCdEfGh12345678IjKl", "api_key"),
        ("k sk_live_51HqLyjWDarjtT1zdp7dc end", "sk_live_51HqLyjWDarjtT1zdp7dc", "api_key"),
        (
            "k ghp_16C7e42F292c6912E7710c838347Ae178B4a end",
            "ghp_16C7e42F292c6912E7710c838347Ae178B4a",
            "api_key",
        ),
        ("k AKIAIOSFODNN7EXAMPLE end", "AKIAIOSFODNN7EXAMPLE", "api_key"),
        ("k xoxb-123456789012-abcdefABCDEF end", "xoxb-123456789012-abcdefABCDEF", "api_key"),
        ("GET /x?key=9f86d081884c7d659a2feaa0c55ad015&y=1", "9f86d081884c7d659a2feaa0c55ad015", "key"),
        ("GET url?access_token=Zm9vYmFyYmF6cXV4MTIzNDU2Nzg5", "Zm9vYmFyYmF6cXV4MTIzNDU2Nzg5", "key"),
        ("cfg x_api_key: 'Q2hhbmdlTWVQbGVhc2UxMjM0NQ=='", "Q2hhbmdlTWVQbGVhc2UxMjM0NQ==", "key"),
    ],
)
def test_each_pattern_is_redacted_with_its_label(r: Redactor, text: str, secret: str, label: str):
    out = r.redact(text)
    assert secret not in out
    assert f"[redacted:{label}]" in out
    # Surrounding text is kept.
    assert out.split()[0] == text.split()[0]


@pytest.mark.parametrize(
    "text",
    [
        "order 1234567890 created",
        "ts 1700000000000 and ns 1700000000123456789",
        "date 2024-01-15 at 2026-11-26T06:51:04.123456Z",
        "from 192.168.1.100 running v1.2.3",
        "not a card 4111 1111 1111 1112",  # Luhn fails
        "amount 12345.67 and count 42",
        "token=aaaaaaaaaaaaaaaaaaaaaaaa",  # long but no entropy
        "note=9f86d081884c7d659a2feaa0c55ad015",  # high entropy but the name is not a key
        "uuid 123e4567-e89b-12d3-a456-426614174000",
        "Bearer realm=edgeworks",
        # Digits glued to letters belong to an identifier (Luhn-valid runs inside ids).
        "version b8b8a233b516-20261129030319 resumed",
        "sha a4111111111111111b and run_4111111111111111",
    ],
)
def test_ordinary_values_survive(r: Redactor, text: str):
    assert r.redact(text) == text


def test_luhn_valid_digit_run_of_a_timestamp_shape_is_kept_but_card_prefix_is_redacted(r):
    # First digit 1 is no card network: millisecond timestamps survive even when Luhn-valid.
    assert r.redact("1000000000009") == "1000000000009"
    assert r.redact("4000000000006") == "[redacted:card]"


def test_sensitive_keys_are_masked_whole_recursively(r: Redactor):
    value = {
        "password": "hunter2",
        "user": {"apiKey": {"nested": "x"}, "access_token": "t", "tokens": 12, "name": "ok"},
        "headers": [{"Authorization": "Basic dXNlcjpwYXNz", "X-Api-Key": "k1"}],
        "client_secret": 5,
        "token_count": 3,
    }
    out = r.redact(value)
    assert out == {
        "password": "[redacted:secret]",
        "user": {
            "apiKey": "[redacted:secret]",
            "access_token": "[redacted:secret]",
            "tokens": 12,
            "name": "ok",
        },
        "headers": [{"Authorization": "[redacted:secret]", "X-Api-Key": "[redacted:secret]"}],
        "client_secret": "[redacted:secret]",
        "token_count": 3,
    }
    assert value["password"] == "hunter2", "input must not be mutated"


@pytest.mark.parametrize(
    ("key", "sensitive"),
    [
        ("password", True),
        ("db_passwd", True),
        ("secret", True),
        ("Authorization", True),
        ("api_key", True),
        ("apikey", True),
        ("x-api-key", True),
        ("privateKey", True),
        ("set-cookie", True),
        ("refreshToken", True),
        ("tokens", False),
        ("input_tokens", False),
        ("max_tokens", False),
        ("token_count", False),
        ("username", False),
        ("path", False),
    ],
)
def test_sensitive_key_names(key: str, sensitive: bool):
    assert is_sensitive_key(key) is sensitive


def test_lists_tuples_keys_and_other_types(r: Redactor):
    out = r.redact({"a@b.io": ("x a@b.io", 3, None, 1.5, True)})
    assert out == {"[redacted:email]": ["x [redacted:email]", 3, None, 1.5, True]}


def test_extra_patterns_and_invalid_extra_pattern():
    r = Redactor([r"ACME-\d{6}", r"(?P<name>emp)\d{4}"])
    assert r.redact("order ACME-123456 by emp1234") == "order [redacted:custom] by [redacted:custom]"
    with pytest.raises(RedactionPatternError) as err:
        Redactor(["ok", "(unclosed"])
    assert err.value.index == 1


def test_redacting_twice_is_stable(r: Redactor):
    once = r.redact("a@b.io 4111 1111 1111 1111 Bearer abcdefghijkl sk-AAAAAAAAAAAAAAAAAAAAAA")
    assert r.redact(once) == once


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("KeyError: {'user': 'bob', 'password': 'Pw!x'}", "Pw!x"),
        ("login failed for password=Pw!x; retry", "Pw!x"),
        ('body {"password":"a.b","user":"bob"}', "a.b"),
        ('body {"client_secret": "s\\"q"}', 's\\"q'),
        ("X-Api-Key: k1!", "k1!"),
        ("query db_passwd=p@ss&user=bob", "p@ss"),
        ("passphrase: 'two words'", "two words"),
        ("connect postgres://app:s3cr!t@db.local:5432/x failed", "s3cr!t"),
        ("url access_token=ya29.a0AfH6SMBxQ9kLm2 expired", "ya29.a0AfH6SMBxQ9kLm2"),
    ],
)
def test_short_secrets_with_punctuation_after_a_credential_name_are_redacted(r: Redactor, text: str, secret: str):
    out = r.redact(text)
    assert secret not in out
    assert "[redacted:" in out
    assert out.split()[0] == text.split()[0]


@pytest.mark.parametrize(
    "text",
    [
        "passwordless: true",
        "secretary: Bob",
        "the password is wrong",
        "https://example.com:8443/path",
        "password: [redacted:secret]",
    ],
)
def test_credential_like_words_without_a_value_survive(r: Redactor, text: str):
    assert r.redact(text) == text


def test_an_email_in_a_url_path_is_redacted_plain_or_percent_encoded(r: Redactor):
    assert r.redact("GET /users/bob@example.com/orders") == "GET /users/[redacted:email]/orders"
    assert r.redact("GET /u?to=bob%40example.com") == "GET /u?to=[redacted:email]"
