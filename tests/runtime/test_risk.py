import pytest

from runtime.risk import (
    UNREADABLE_BODY,
    Predicate,
    RiskDecision,
    RiskEngine,
    RiskRule,
    RiskRuleError,
    compile_path,
)


@pytest.mark.parametrize(
    ("pattern", "path", "matches"),
    [
        ("/orders/{id}", "/orders/42", True),
        ("/orders/{id}", "/orders/42/", True),
        ("/orders/{id}", "/orders", False),
        ("/orders/{id}", "/orders/42/items", False),
        ("/orders/{id}/items/{item}", "/orders/1/items/2", True),
        ("/files/{rest:path}", "/files/a/b/c.txt", True),
        ("/files/{rest:path}", "/files", False),
        ("/api/**", "/api", True),
        ("/api/**", "/api/v1/users/7", True),
        ("/api/**", "/apix", False),
        ("/a/**/z", "/a/z", True),
        ("/a/**/z", "/a/b/c/z", True),
        ("/a/**/z", "/a/b/c", False),
        ("/v*/users", "/v2/users", True),
        ("/v*/users", "/v2/x/users", False),
        ("/pay.json", "/payxjson", False),  # dots are literal
        ("/", "/", True),
        ("/", "/x", False),
    ],
)
def test_path_patterns(pattern: str, path: str, matches: bool):
    assert bool(compile_path(pattern).match(path)) is matches


def test_path_parameters_are_captured():
    assert compile_path("/o/{id}/f/{p:path}").match("/o/9/f/x/y").groupdict() == {
        "id": "9",
        "p": "x/y",
    }


BODY = {
    "amount": 1500,
    "currency": "EUR",
    "customer": {"country": "DE", "tags": ["vip", "new"]},
    "items": [{"sku": "A-1", "qty": 2}],
    "note": "urgent wire transfer",
    "flag": True,
}


@pytest.mark.parametrize(
    ("field", "op", "value", "holds"),
    [
        ("amount", "eq", 1500, True),
        ("amount", "ne", 1500, False),
        ("amount", "gt", 1000, True),
        ("amount", "gt", 1500, False),
        ("amount", "gte", 1500, True),
        ("amount", "lt", 1500.5, True),
        ("amount", "lte", 1499, False),
        ("currency", "in", ["EUR", "USD"], True),
        ("currency", "in", ["GBP"], False),
        ("customer.tags", "contains", "vip", True),
        ("customer.tags", "contains", "old", False),
        ("note", "contains", "wire", True),
        ("customer", "contains", "country", True),
        ("customer.country", "exists", True, True),
        ("customer.city", "exists", False, True),
        ("customer.city", "exists", True, False),
        ("items.0.sku", "eq", "A-1", True),
        ("items.1.sku", "exists", None, False),
        ("note", "matches", r"\bwire\b", True),
        ("note", "matches", r"^wire", False),
        ("currency", "gt", 5, False),  # incomparable: false, no error
        ("flag", "gt", 0, False),  # booleans are not numbers here
        ("amount", "matches", "15", False),
        ("missing", "ne", "x", False),  # absent fields satisfy only exists:false
        ("amount.value", "eq", 1, False),
    ],
)
def test_predicates(field: str, op: str, value, holds: bool):
    assert Predicate(field=field, op=op, value=value).holds(BODY) is holds


def test_predicates_on_non_mapping_bodies():
    p = Predicate(field="amount", op="exists", value=False)
    assert p.holds(None) and p.holds(b"raw") and p.holds([1, 2])
    assert not Predicate(field="0", op="eq", value=1).holds({"x": 1})
    assert Predicate(field="0", op="eq", value=1).holds([1])


RULES = [
    {"path": "/payments/**", "methods": ["POST"], "label": "medium", "action": "allow"},
    {
        "path": "/payments/**",
        "methods": ["post"],
        "when": [{"field": "amount", "op": "gt", "value": 1000}],
        "label": "high",
        "action": "approve",
        "reason": "large payment needs approval",
    },
    {"tenants": ["banned-co"], "label": "low", "action": "block", "reason": "tenant suspended"},
    {"path": "/admin/{what}", "methods": ["*"], "label": "high"},
    {"path": "/exports/*.csv", "methods": ["GET"], "label": "medium", "action": "approve"},
]


@pytest.fixture
def engine() -> RiskEngine:
    return RiskEngine(RULES)


def test_no_match_gives_the_default(engine: RiskEngine):
    assert engine.evaluate("GET", "/health", "acme", None) == RiskDecision(
        "low", "allow", None, "no rule matched"
    )
    assert RiskEngine(RULES, default="medium").evaluate("GET", "/", None, None).label == "medium"


def test_highest_label_wins(engine: RiskEngine):
    small = engine.evaluate("POST", "/payments/charge", "acme", {"amount": 10})
    assert (small.label, small.action, small.rule_index) == ("medium", "allow", 0)
    large = engine.evaluate("post", "/payments/charge", "acme", {"amount": 5000})
    assert large == RiskDecision("high", "approve", 1, "large payment needs approval")


def test_block_beats_approve_beats_allow_independently_of_label(engine: RiskEngine):
    d = engine.evaluate("POST", "/payments/charge", "banned-co", {"amount": 5000})
    # the label is still the highest (high), the action the strongest (block, from rule 2)
    assert (d.label, d.action, d.rule_index, d.reason) == ("high", "block", 2, "tenant suspended")


def test_rule_without_conditions_except_tenant_and_method_wildcards(engine: RiskEngine):
    assert engine.evaluate("DELETE", "/admin/users", None, None).label == "high"
    assert engine.evaluate("GET", "/admin/users/1", None, None).label == "low"
    d = engine.evaluate("GET", "/exports/q3.csv", "acme", None)
    assert (d.action, d.rule_index) == ("approve", 4)
    assert "GET /exports/*.csv" in d.reason  # generated reason describes the rule
    assert engine.evaluate("POST", "/exports/q3.csv", "acme", None).rule_index is None


def test_tie_on_action_goes_to_the_higher_label_then_the_first_rule():
    rules = [
        {"label": "medium", "action": "approve"},
        {"label": "high", "action": "approve"},
        {"label": "high", "action": "approve"},
    ]
    assert RiskEngine(rules).evaluate("GET", "/", None, None).rule_index == 1


def test_invalid_rules_are_all_reported_with_index_and_field():
    bad = [
        {"path": "/ok", "label": "low"},
        {"path": "no-slash", "label": "extreme"},
        {"when": [{"field": "a", "op": "between", "value": 1}]},
        {"when": [{"field": "a", "op": "in", "value": "x"}]},
        {"when": [{"field": "a", "op": "matches", "value": "("}]},
        {"methods": ["GET", "not a method"], "action": "maybe", "colour": "red"},
        {"path": "/a/{x}/{x}"},
        {"path": "/a/{rest:path}/b"},
    ]
    with pytest.raises(RiskRuleError) as err:
        RiskEngine(bad)
    errors = err.value.errors
    where = {(i, loc) for i, loc, _ in errors}
    assert (1, "path") in where
    assert (1, "label") in where
    assert (2, "when.0.op") in where
    assert (3, "when.0") in where
    assert (4, "when.0") in where
    assert {(5, "methods"), (5, "action"), (5, "colour")} <= where
    assert (6, "path") in where and (7, "path") in where
    assert not any(i == 0 for i, _, _ in errors)
    assert "rule 4: when.0:" in str(err.value) and "regular expression" in str(err.value)


def test_invalid_default_label():
    with pytest.raises(RiskRuleError):
        RiskEngine([], default="critical")  # type: ignore[arg-type]


def test_rule_models_are_accepted_directly():
    rule = RiskRule(path="/x", label="high", action="block")
    assert RiskEngine([rule]).evaluate("GET", "/x", None, {}).action == "block"


def test_a_body_that_is_not_json_matches_rules_that_read_body_fields_fail_closed(engine: RiskEngine):
    d = engine.evaluate("POST", "/payments/charge", "acme", UNREADABLE_BODY)
    assert (d.label, d.action, d.rule_index) == ("high", "approve", 1)
    assert "not JSON" in d.reason
    # rules without body predicates are unaffected
    assert engine.evaluate("GET", "/admin/users", None, UNREADABLE_BODY).action == "allow"


def test_reads_body_only_when_a_rule_has_body_predicates():
    assert RiskEngine(RULES).reads_body
    assert not RiskEngine([{"path": "/x", "action": "block"}]).reads_body


@pytest.mark.parametrize(("op", "value", "actual", "holds"), [
    ("gt", 1000, "5000", True),
    ("gt", 1000, " 5000.5 ", True),
    ("lte", 1000, "5000", False),
    ("eq", 5000, "5000", True),
    ("eq", 5000, "5000.0", True),
    ("in", [1, 5000], "5000", True),
    ("in", ["5000"], "5000", True),
    ("ne", 5000, "5000", True),  # ne compares values as they are
    ("gt", 1000, "nan", False),
    ("gt", 1000, "inf", False),
    ("gt", 1000, "lots", False),
    ("gt", "a", "b", True),  # string rules stay string comparisons
])
def test_a_number_in_a_string_is_compared_as_the_number_a_model_would_read(op, value, actual, holds):
    assert Predicate(field="amount", op=op, value=value).holds({"amount": actual}) is holds
