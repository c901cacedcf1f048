"""Redaction of secrets and personal data before anything is persisted or logged.

`Redactor.redact(value)` returns a redacted copy of a JSON-like value: strings are scanned,
dicts and lists/tuples are walked recursively (tuples come back as lists), every other value
is returned unchanged. Each finding is replaced by ``[redacted:<label>]``.

What is found inside strings (one pass per kind, each skipped
when a cheap substring test rules it out):

- ``bearer``: ``Bearer <token>`` (the scheme word and the token both go);
- ``jwt``: three base64url segments whose header starts ``eyJ`` (an empty signature, as
  ``alg: none`` tokens have, still counts);
- ``api_key``: ``sk-…``/``sk_live_…``, GitHub tokens (``ghp_``/``gho_``/``ghu_``/``ghs_``/
  ``ghr_``), AWS access key ids (``AKIA``/``ASIA``), Slack tokens (``xoxb-``/``xoxa-``/``xoxp-``);
- ``key``: a long (16+ characters) high-entropy value (base64/base64url/hex, dots allowed) after
  ``key=``, ``token=``, ``secret=``, ``password=`` and similar (the ``name=`` prefix is kept);
- ``secret``: any value, however short and whatever its punctuation, after a name that only
  ever holds a credential (``password``, ``passwd``, ``pwd``, ``passphrase``, ``secret``,
  ``credentials``, ``api_key``/``api-key``, ``private_key``) and ``=`` or ``:``: quoted (up to
  the closing quote: ``'password': 'Pw!x'``, ``"password":"a.b"``) or bare (up to white space
  or one of ``&;,)}]``: ``password=Pw!x;``); and the password of a URL (``scheme://user:pw@``);
- ``email``: e-mail addresses, also percent-encoded (``bob%40example.com``);
- ``card``: 13-19 digits, optionally grouped by single spaces or dashes, first digit 2-6
  (the card networks' ranges, which keeps millisecond timestamps out), and Luhn-valid, not
  glued to a letter, digit or underscore (digits inside an identifier such as a hex hash or a version
  id ``b8b8a233b516-20261129030319`` are part of that identifier, never a card);
- ``phone``: ``+`` and 8-15 digits with optional separators, or a national format with
  separators (``(555) 123-4567``, ``555-123-4567``, ``020 7946 0958``, ``06 12 34 56 78``).
  A run of digits without separators is never a phone number, so ids and timestamps survive;
- ``custom``: each of the configured extra regexes;
- ``secret``: the values of the app's secrets this process holds (`mask_secret_values`), as
  literal strings, found first, wherever they appear (values under `MIN_SECRET_CHARS` characters
  are not masked by value: masking ``abc`` everywhere would mangle every log line).

Dict entries whose key names a credential (parts such as ``password``, ``secret``, ``token``,
``authorization``, ``api_key``, ``cookie``, ``private_key``; ``tokens`` and ``token_count``
are counts, not credentials) are masked whole as ``[redacted:secret]`` whatever their value.
String keys are scanned like values.

Modes. What replaces a finding is the redactor's ``mode`` (the manifest's ``[redaction]``
section sets one per classification level, see `RedactionPolicy`):

- ``mask`` (the default): ``[redacted:<label>]``, as above;
- ``hash``: ``[hash:<12 hex>]``, the start of an HMAC-SHA256 of the finding under a key the
  runtime derives from its data key, so equal values stay linkable across lines and entries
  while the value itself cannot be recovered or confirmed without the key;
- ``drop``: ``[dropped]``.

With ``whole_values`` (a hash or drop mode at the highest level: data whose every string may be
personal) each string *value* is replaced whole, not only its findings; keys are still only
scanned, and the fields named in `IDENTIFIER_FIELDS` (request ids, script names, statuses,
levels: names the runtime chooses) are scanned, not replaced, so entries stay correlatable. The
app's secret values (`mask_secret_values`) are masked ``[redacted:secret]`` in every mode.

A `Redactor` is safe to share between threads: its only state is two bounded caches of
results (key names, strings up to 64 characters), whose updates are atomic dict operations.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import math
import re
from collections.abc import Callable, Iterable
from typing import Any, Literal

__all__ = ["IDENTIFIER_FIELDS", "MIN_SECRET_CHARS", "RedactionMode", "Redactor", "RedactionPatternError",
           "is_sensitive_key", "mask_secret_values", "mask_secrets"]

RedactionMode = Literal["mask", "hash", "drop"]
# Fields whose values the runtime chooses (ids, names, enumerations): never replaced whole.
IDENTIFIER_FIELDS = frozenset({
    "ts", "event", "request_id", "level", "classification", "kind", "script", "status", "previous",
    "outcome", "method", "risk", "route", "principal", "code", "type", "version", "binding", "workflow",
    "step", "key", "attempt", "attempts", "action", "limit", "logger",
})
_Mark = Callable[[str, str], str]  # (label, finding) -> what replaces the finding

_MASK_SECRET = "[redacted:secret]"

_SENSITIVE_PARTS = frozenset(
    {
        "password",
        "passwd",
        "pwd",
        "passphrase",
        "secret",
        "token",
        "authorization",
        "auth",
        "cookie",
        "apikey",
        "credential",
        "credentials",
        "privatekey",
        "jwt",
        "bearer",
    }
)
# "token" next to one of these names a quantity (token_count, max_tokens), not a credential.
_QUANTITY_PARTS = frozenset({"count", "counts", "usage", "used", "limit", "total", "max", "min"})
_SENSITIVE_JOINED = ("apikey", "privatekey", "password", "secretkey", "accesskey", "setcookie")
_KEY_PARTS_RE = re.compile(r"[A-Z]?[a-z0-9]+|[A-Z]+(?![a-z])")

_BEARER = re.compile(r"(?i:\bbearer)[ \t]+[A-Za-z0-9\-._~+/]{8,}=*")
_JWT = re.compile(r"\beyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*")
_API_KEY = re.compile(
    r"\b(?:sk-[A-Za-z0-9_-]{16,}|sk_(?:live|test)_[A-Za-z0-9]{16,}"
    r"|gh[pousr]_[A-Za-z0-9]{20,}|(?:AKIA|ASIA)[0-9A-Z]{16}(?![0-9A-Za-z])"
    r"|xox[bapr]-[A-Za-z0-9-]{10,})"
)
# The value after `=`/`:`; the name before it is checked in `_replace_key`, which is much
# cheaper than asking the regex engine to try every name at every position.
_KEY_VALUE = re.compile(r"[=:][ \t]*[\"']?([A-Za-z0-9+/_\-.~]{16,}={0,2})(?![A-Za-z0-9+/_\-.~=])")
_KEY_NAME = re.compile(
    r"(?i:key|token|secret|passw(?:or)?d|sig(?:nature)?|auth|credentials?)[\"']?[ \t]*$"
)
# A name that only ever holds a credential: its value goes whatever its length or characters.
_SECRET_VALUE = re.compile(
    r"(?i:passw(?:or)?d|pwd|passphrase|secret|credentials?|api[_-]?key|private[_-]?key)"
    r"[\"']?[ \t]*[=:][ \t]*"
    r"(?:\"((?:[^\"\\\n]|\\.)*)\"|'((?:[^'\\\n]|\\.)*)'|([^\s\"'&;,)}\]]+))"
)
_URL_PASSWORD = re.compile(r"(?<=://)([^/\s:@]*):([^/\s@]+)@")
_EMAIL = re.compile(
    r"\b[A-Za-z0-9._%+-]+(?:@|%40)[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b"
)
_DIGIT = re.compile(r"\d")
_CARD = re.compile(r"(?<![\w+\-])[2-6]\d(?:[ -]?\d){11,17}(?![\w\-])")
_PHONE = re.compile(
    r"(?<![\w+])(?:"
    r"\+\d{1,3}(?:[ .\-]?\(\d{1,4}\))?(?:[ .\-]?\d{1,5}){2,6}"
    r"|\(\d{2,5}\)[ .\-]?\d{3,4}[ .\-]\d{3,4}"
    r"|\d{3}[.\-]\d{3}[.\-]\d{4}"
    r"|\d{3} \d{3} \d{4}"
    r"|0\d{1,4}[ \-]\d{3,4}[ \-]\d{3,4}"
    r"|0\d(?:[ .]\d{2}){4}"
    r")(?![\w\-])"
)
_NOT_DIGIT = re.compile(r"\D")
_CACHED_LEN = 64
_CACHE_SIZE = 4096

MIN_SECRET_CHARS = 6  # `redact_text` leaves shorter texts alone, so a shorter value is never masked


class _SecretValues:
    """The secret values every `Redactor` of this process masks. Process-wide on purpose: one
    process serves one app, and its redactors are made in many places (logs, audit records,
    approvals, the AI gateway, workflow errors); a secret the process holds must be masked by
    all of them. `generation` changes with the set, so redactors drop results they cached."""

    def __init__(self) -> None:
        self.values: tuple[str, ...] = ()
        self.generation = 0

    def add(self, values: Iterable[str]) -> list[str]:
        new = {v for v in values if len(v) >= MIN_SECRET_CHARS} - set(self.values)
        if new:
            # Longest first: a value that contains another is masked whole.
            self.values = tuple(sorted({*self.values, *new}, key=len, reverse=True))
            self.generation += 1
        return [v for v in values if len(v) < MIN_SECRET_CHARS]


_SECRETS = _SecretValues()


def mask_secret_values(values: Iterable[str]) -> list[str]:
    """From now on every `Redactor` of this process replaces each of `values` wherever it appears
    with ``[redacted:secret]``. Returns the values too short to be masked (under
    `MIN_SECRET_CHARS` characters), so the caller can warn about them by name."""
    return _SECRETS.add(list(values))


def mask_secrets(text: str) -> str:
    """`text` with only the app's secret values masked (see `mask_secret_values`): for details
    meant for the developer, such as the traceback `dev` shows, where other findings may stay."""
    for value in _SECRETS.values:
        if value in text:
            text = text.replace(value, _MASK_SECRET)
    return text


class RedactionPatternError(ValueError):
    """A configured extra pattern is not a valid regular expression."""

    def __init__(self, index: int, pattern: str, error: str) -> None:
        super().__init__(f"redaction pattern {index} ({pattern!r}) is invalid: {error}")
        self.index = index
        self.pattern = pattern


def is_sensitive_key(key: str) -> bool:
    """True when a mapping key names a credential whose value must be masked whole."""
    parts = [p.lower() for p in _KEY_PARTS_RE.findall(key)]
    hits = [p for p in parts if p in _SENSITIVE_PARTS]
    if hits and (hits != ["token"] or not _QUANTITY_PARTS.intersection(parts)):
        return True
    joined = "".join(parts)
    return any(j in joined for j in _SENSITIVE_JOINED)


def _luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def _entropy(s: str) -> float:
    counts: dict[str, int] = {}
    for ch in s:
        counts[ch] = counts.get(ch, 0) + 1
    n = len(s)
    return -sum(c / n * math.log2(c / n) for c in counts.values())


class Redactor:
    """Finds and masks secrets and personal data; see the module docstring for what is found."""

    def __init__(self, extra_patterns: Iterable[str] = (), *, mode: RedactionMode = "mask",
                 hash_key: bytes | None = None, whole_values: bool = False) -> None:
        extra: list[re.Pattern[str]] = []
        for i, rx in enumerate(extra_patterns):
            try:
                extra.append(re.compile(rx))
            except re.error as exc:
                raise RedactionPatternError(i, rx, str(exc)) from None
        self._extra = tuple(extra)
        self._key_cache: dict[str, bool] = {}
        self._text_cache: dict[str, str] = {}
        self._secrets_seen = _SECRETS.generation  # the secret values its cached results masked
        self.mode = mode
        self.whole_values = whole_values and mode != "mask"
        mark = _marker(mode, hash_key)
        self._mark = mark
        # What replaces each finding: literal strings in mask mode (the fast path re.sub takes).
        self._rep: dict[str, str | Callable[[re.Match[str]], str]] = {
            label: f"[redacted:{label}]" if mode == "mask" else functools.partial(_mark_match, mark, label)
            for label in ("bearer", "jwt", "api_key", "email", "custom")}
        self._rep_key = functools.partial(_replace_key, mark)
        self._rep_secret = functools.partial(_replace_secret, mark)
        self._rep_card = functools.partial(_replace_card, mark)
        self._rep_phone = functools.partial(_replace_phone, mark)
        self._rep_url: str | Callable[[re.Match[str]], str] = (
            r"\1:[redacted:secret]@" if mode == "mask" else functools.partial(_mark_url_password, mark))

    def redact(self, value: Any, default: Callable[[Any], Any] | None = None) -> Any:
        """A redacted copy of `value`: str, dict, list and tuple recursively.

        Other values come back unchanged, or, when `default` is given, as ``default(value)``
        (redacted in turn when it is a new object), and non-string dict keys as ``str(key)``:
        the audit log passes a converter so that one walk yields redacted, JSON-ready data."""
        if isinstance(value, str):
            return self.redact_text(value)
        if isinstance(value, dict):
            out: dict[Any, Any] = {}
            scan, whole = self.scan_text, self.whole_values
            for k, v in value.items():
                if not isinstance(k, str):
                    if default is None:
                        out[k] = self.redact(v)
                        continue
                    k = str(k)
                if self._sensitive(k):
                    out[scan(k)] = self._secret_value(v)
                    continue
                t = type(v)  # the common scalars without a recursive call: most values are these
                if t is str:
                    v = scan(v) if not whole or k in IDENTIFIER_FIELDS else self.redact_text(v)
                elif not (v is None or t is int or t is bool or (t is float and (default is None or math.isfinite(v)))):
                    v = self.redact(v, default)
                out[scan(k)] = v
            return out
        if isinstance(value, list | tuple):
            return [self.redact(v, default) for v in value]
        if default is None:
            return value
        converted = default(value)
        return converted if converted is value else self.redact(converted, default)

    def redact_entry(self, key: str, value: Any, default: Callable[[Any], Any] | None = None) -> Any:
        """The value of a mapping entry `key` as `redact` of the mapping gives it (the key itself
        is not scanned: for names chosen by code, such as a log record's fields)."""
        if value is None or isinstance(value, bool | int | float):
            return value
        if self._sensitive(key):
            return self._secret_value(value)
        if isinstance(value, str):
            return self.scan_text(value) if not self.whole_values or key in IDENTIFIER_FIELDS else self.redact_text(value)
        return self.redact(value, default)

    def _secret_value(self, value: Any) -> str:
        """What the value of a credential-named entry becomes."""
        if self.mode == "mask":
            return _MASK_SECRET
        return self._mark("secret", value if isinstance(value, str) else repr(value))

    def redact_text(self, text: str) -> str:
        """`text` as a value: whole replaced under `whole_values`, else `scan_text`."""
        if self.whole_values and text:
            return self._mark("value", text)
        return self.scan_text(text)

    def scan_text(self, text: str) -> str:
        """`text` with every finding replaced (``[redacted:<label>]`` in mask mode)."""
        if len(text) < MIN_SECRET_CHARS:
            return text
        if len(text) <= _CACHED_LEN:
            if self._secrets_seen != _SECRETS.generation:
                self._text_cache = {}
                self._secrets_seen = _SECRETS.generation
            # Short strings (ids, tenants, paths, methods) repeat: remember their result.
            hit = self._text_cache.get(text)
            if hit is None:
                if len(self._text_cache) >= _CACHE_SIZE:
                    self._text_cache.clear()
                hit = self._text_cache[text] = self._scan(text)
            return hit
        return self._scan(text)

    def _scan(self, text: str) -> str:
        # Each pass runs only when a cheap substring test says it could match; a finding
        # replaced by an earlier pass cannot match a later one.
        for value in _SECRETS.values:
            if value in text:
                text = text.replace(value, _MASK_SECRET)
        rep = self._rep
        if "earer" in text or "EARER" in text:
            text = _BEARER.sub(rep["bearer"], text)
        if "eyJ" in text:
            text = _JWT.sub(rep["jwt"], text)
        text = _API_KEY.sub(rep["api_key"], text)
        if "=" in text or ":" in text:
            text = _KEY_VALUE.sub(self._rep_key, text)
            text = _SECRET_VALUE.sub(self._rep_secret, text)
            if "://" in text:
                text = _URL_PASSWORD.sub(self._rep_url, text)
        if "@" in text or "%40" in text:
            text = _EMAIL.sub(rep["email"], text)
        if _DIGIT.search(text):
            text = _CARD.sub(self._rep_card, text)
            text = _PHONE.sub(self._rep_phone, text)
        for rx in self._extra:
            text = rx.sub(rep["custom"], text)
        return text

    def _sensitive(self, key: str) -> bool:
        hit = self._key_cache.get(key)
        if hit is None:
            hit = is_sensitive_key(key)
            if len(self._key_cache) < _CACHE_SIZE:
                self._key_cache[key] = hit
        return hit


def _mask(label: str, finding: str) -> str:
    return f"[redacted:{label}]"


def _drop(label: str, finding: str) -> str:
    return "[dropped]"


def _marker(mode: RedactionMode, hash_key: bytes | None) -> _Mark:
    if mode == "mask":
        return _mask
    if mode == "drop":
        return _drop
    if mode != "hash":
        raise ValueError(f"unknown redaction mode {mode!r}")
    if not hash_key:
        raise ValueError("the hash redaction mode needs a key")
    key = hash_key

    def hashed(label: str, finding: str) -> str:
        digest = hmac.new(key, finding.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()
        return f"[hash:{digest[:12]}]"

    return hashed


def _mark_match(mark: _Mark, label: str, m: re.Match[str]) -> str:
    return mark(label, m.group(0))


def _mark_url_password(mark: _Mark, m: re.Match[str]) -> str:
    return f"{m.group(1)}:{mark('secret', m.group(2))}@"


_REPLACED = ("[redacted:", "[hash:", "[dropped]")  # what an earlier pass already put in


def _replace_key(mark: _Mark, m: re.Match[str]) -> str:
    value = m.group(1)
    before = m.string[max(0, m.start() - 40) : m.start()]
    if not _KEY_NAME.search(before) or _entropy(value) < 3.0:
        return m.group(0)
    whole = m.group(0)
    return whole[: len(whole) - len(value)] + mark("key", value)


def _replace_secret(mark: _Mark, m: re.Match[str]) -> str:
    group = next(g for g in (1, 2, 3) if m.group(g) is not None)
    value = m.group(group)
    if not value or value.startswith(_REPLACED):
        return m.group(0)
    start, end = m.start(group) - m.start(), m.end(group) - m.start()
    whole = m.group(0)
    return whole[:start] + mark("secret", value) + whole[end:]


def _replace_card(mark: _Mark, m: re.Match[str]) -> str:
    digits = _NOT_DIGIT.sub("", m.group(0))
    if 13 <= len(digits) <= 19 and _luhn_ok(digits):
        return mark("card", digits)
    return m.group(0)


def _replace_phone(mark: _Mark, m: re.Match[str]) -> str:
    digits = sum(ch.isdigit() for ch in m.group(0))
    return mark("phone", m.group(0)) if 8 <= digits <= 15 else m.group(0)
