"""Label and field selectors: the Kubernetes string syntax, its semantics and its errors."""

from __future__ import annotations

import pytest

from services.common.selectors import (
    FieldSelector,
    LabelSelector,
    Operator,
    Requirement,
    SelectorError,
    validate_label_key,
    validate_label_value,
)

WEB_PROD = {"app": "web", "tier": "frontend", "stack": "prod"}
DB_DEV = {"app": "db", "tier": "backend", "stack": "dev", "example.com/owner": "ops"}
UNLABELED: dict[str, str] = {}


@pytest.mark.parametrize(
    ("selector", "matching", "not_matching"),
    [
        pytest.param("", [WEB_PROD, DB_DEV, UNLABELED], [], id="empty-matches-all"),
        pytest.param("   ", [WEB_PROD, UNLABELED], [], id="blank-matches-all"),
        pytest.param("app=web", [WEB_PROD], [DB_DEV, UNLABELED], id="equals"),
        pytest.param("app==web", [WEB_PROD], [DB_DEV, UNLABELED], id="double-equals"),
        pytest.param("app!=web", [DB_DEV, UNLABELED], [WEB_PROD], id="not-equals-matches-absent"),
        pytest.param("tier in (frontend,backend)", [WEB_PROD, DB_DEV], [UNLABELED], id="in"),
        pytest.param("stack notin (prod)", [DB_DEV, UNLABELED], [WEB_PROD], id="notin-matches-absent"),
        pytest.param("example.com/owner", [DB_DEV], [WEB_PROD, UNLABELED], id="exists-prefixed-key"),
        pytest.param("!example.com/owner", [WEB_PROD, UNLABELED], [DB_DEV], id="does-not-exist"),
        pytest.param(
            "tier in (frontend), stack in (prod)", [WEB_PROD], [DB_DEV, UNLABELED], id="design-example"
        ),
        pytest.param("  app = web ,  tier  ", [WEB_PROD], [DB_DEV], id="whitespace-everywhere"),
        pytest.param("app in(web,db),stack notin(dev)", [WEB_PROD], [DB_DEV], id="no-space-before-paren"),
        pytest.param("app=web,app!=web", [], [WEB_PROD, DB_DEV, UNLABELED], id="contradiction"),
        pytest.param("example.com/owner=ops,!tier", [], [DB_DEV], id="and-with-not-exists"),
        pytest.param("app=", [{"app": ""}], [WEB_PROD, UNLABELED], id="equals-empty-value"),
        pytest.param("app in (web,)", [WEB_PROD, {"app": ""}], [DB_DEV], id="in-with-empty-member"),
        pytest.param("replicas>2", [{"replicas": "3"}], [{"replicas": "2"}, {"replicas": "x"}, UNLABELED], id="gt"),
        pytest.param("replicas<2", [{"replicas": "1"}], [{"replicas": "2"}, UNLABELED], id="lt"),
    ],
)
def test_label_selector_matches(selector: str, matching: list[dict], not_matching: list[dict]) -> None:
    parsed = LabelSelector.parse(selector)
    for labels in matching:
        assert parsed.matches(labels), f"{selector!r} should match {labels}"
    for labels in not_matching:
        assert not parsed.matches(labels), f"{selector!r} should not match {labels}"


@pytest.mark.parametrize(
    ("selector", "fragment"),
    [
        pytest.param("a in (", "position 6: found end of string", id="unclosed-paren"),
        pytest.param("a in ()", "needs at least one value", id="empty-set"),
        pytest.param("a notin ()", "'notin' needs at least one value", id="empty-notin-set"),
        pytest.param("=b", "position 0: found '=', expected: label key", id="missing-key"),
        pytest.param("a=b,", "found end of string, expected: label key", id="trailing-comma"),
        pytest.param(",a=b", "found ',', expected: label key", id="leading-comma"),
        pytest.param("a b", "found 'b'", id="missing-operator"),
        pytest.param("a in x", "expected: '(' after 'in'", id="in-without-paren"),
        pytest.param("a in (x y)", "found 'y', expected: ',' or ')'", id="values-without-comma"),
        pytest.param("a=b c", "found 'c', expected: ',' or end of string", id="junk-after-term"),
        pytest.param("!a=b", "after '!key'", id="not-exists-with-value"),
        pytest.param("a=(b)", "found '(', expected: a label value", id="paren-as-value"),
        pytest.param("-a=b", 'invalid label key "-a"', id="key-starts-with-dash"),
        pytest.param("Example.com/a=b", "prefix part", id="uppercase-prefix"),
        pytest.param("a/b/c=d", "qualified name", id="two-slashes"),
        pytest.param("/a=b", "prefix part must be non-empty", id="empty-prefix"),
        pytest.param("example.com/=b", "name part must be non-empty", id="empty-name-part"),
        pytest.param("a=" + "v" * 64, "must be no more than 63 characters", id="value-too-long"),
        pytest.param("a=b_", 'invalid label value "b_"', id="value-ends-with-underscore"),
        pytest.param("a in (x,-y)", 'invalid label value "-y"', id="bad-value-in-set"),
        pytest.param("a>x", "must be an integer", id="gt-non-integer"),
        pytest.param("a<", "expected: an integer", id="lt-missing-value"),
    ],
)
def test_label_selector_rejects(selector: str, fragment: str) -> None:
    with pytest.raises(SelectorError) as raised:
        LabelSelector.parse(selector)
    message = str(raised.value)
    assert fragment in message
    assert selector in message  # the error quotes the selector it refers to


def test_selector_error_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        LabelSelector.parse("a in (")


@pytest.mark.parametrize(
    ("selector", "canonical"),
    [
        ("", ""),
        ("tier in (frontend), stack in (prod)", "stack in (prod),tier in (frontend)"),
        ("b==2, a=1", "a=1,b=2"),
        ("x notin (c,a,b),!y, z", "x notin (a,b,c),!y,z"),
        ("example.com/app!=web", "example.com/app!=web"),
        ("n>3,m<4", "m<4,n>3"),
        ("a in (x,)", "a in (,x)"),
    ],
)
def test_str_is_canonical_and_round_trips(selector: str, canonical: str) -> None:
    parsed = LabelSelector.parse(selector)
    assert str(parsed) == canonical
    assert LabelSelector.parse(str(parsed)) == parsed


def test_requirements_expose_parsed_terms() -> None:
    parsed = LabelSelector.parse("tier in (frontend), app=web, !canary, stack notin (dev,qa)")
    assert parsed.requirements == (
        Requirement("app", Operator.EQUALS, ("web",)),
        Requirement("canary", Operator.DOES_NOT_EXIST),
        Requirement("stack", Operator.NOT_IN, ("dev", "qa")),
        Requirement("tier", Operator.IN, ("frontend",)),
    )
    assert [r.key for r in parsed.requirements if r.is_equality] == ["app", "tier"]


def test_empty_property() -> None:
    assert LabelSelector.parse("").empty
    assert LabelSelector.from_map({}).empty
    assert not LabelSelector.parse("a").empty


def test_from_map_is_equality_and() -> None:
    selector = LabelSelector.from_map({"tier": "frontend", "app": "web"})
    assert str(selector) == "app=web,tier=frontend"
    assert selector == LabelSelector.parse("tier=frontend,app=web")
    assert selector.matches(WEB_PROD)
    assert not selector.matches({"app": "web"})


@pytest.mark.parametrize(
    ("key", "valid"),
    [
        ("app", True),
        ("App.Name_1-x", True),
        ("example.com/app", True),
        ("a" * 63, True),
        ("a" * 64, False),
        (("a" * 63 + ".") * 3 + "com/app", True),  # 195-char prefix
        ("a" * 254 + "/app", False),
        ("", False),
        ("app_", False),
        ("example.com/", False),
        ("/app", False),
        ("EXAMPLE.com/app", False),
        ("a/b/c", False),
        ("app name", False),
    ],
)
def test_validate_label_key(key: str, valid: bool) -> None:
    assert (validate_label_key(key) is None) is valid


@pytest.mark.parametrize(
    ("value", "valid"),
    [("", True), ("web", True), ("1.2_3-x", True), ("v" * 63, True), ("v" * 64, False),
     ("-web", False), ("web.", False), ("a/b", False), ("a b", False)],
)
def test_validate_label_value(value: str, valid: bool) -> None:
    reason = validate_label_value(value)
    assert (reason is None) is valid
    if not valid:
        assert reason  # a reason a user can read, not just a flag


POD_FIELDS = ("metadata.name", "metadata.namespace", "spec.nodeName", "status.phase")


@pytest.mark.parametrize(
    ("selector", "fields", "expected"),
    [
        ("", {"spec.nodeName": "n1"}, True),
        ("spec.nodeName=n1", {"spec.nodeName": "n1"}, True),
        ("spec.nodeName==n1", {"spec.nodeName": "n2"}, False),
        ("spec.nodeName!=n1", {"spec.nodeName": "n2"}, True),
        # The scheduler's query: pods not bound to any node.
        ("spec.nodeName=", {"spec.nodeName": ""}, True),
        ("spec.nodeName=", {"spec.nodeName": "n1"}, False),
        ("spec.nodeName=", {}, True),
        ("spec.nodeName=n1,status.phase!=Failed", {"spec.nodeName": "n1", "status.phase": "Running"}, True),
        ("spec.nodeName=n1, status.phase!=Failed", {"spec.nodeName": "n1", "status.phase": "Failed"}, False),
        ("metadata.name=a\\,b", {"metadata.name": "a,b"}, True),
        ("metadata.name=a\\=b\\\\", {"metadata.name": "a=b\\"}, True),
        ("spec.nodeName=n1,", {"spec.nodeName": "n1"}, True),
    ],
)
def test_field_selector_matches(selector: str, fields: dict[str, str], expected: bool) -> None:
    assert FieldSelector.parse(selector, POD_FIELDS).matches(fields) is expected


@pytest.mark.parametrize(
    ("selector", "fragment"),
    [
        pytest.param("spec.host=n1", 'field label "spec.host" not supported', id="unknown-field"),
        pytest.param("nodeName", "expected FIELD=VALUE", id="no-operator"),
        pytest.param("=n1", "missing field name", id="no-field"),
        pytest.param("metadata.name=a=b", "must be escaped", id="unescaped-equals"),
        pytest.param("metadata.name=a\\b", "invalid escape sequence", id="bad-escape"),
    ],
)
def test_field_selector_rejects(selector: str, fragment: str) -> None:
    with pytest.raises(SelectorError) as raised:
        FieldSelector.parse(selector, POD_FIELDS)
    assert fragment in str(raised.value)


def test_unknown_field_error_lists_supported_fields() -> None:
    with pytest.raises(SelectorError) as raised:
        FieldSelector.parse("spec.host=n1", POD_FIELDS)
    for field in POD_FIELDS:
        assert field in str(raised.value)


def test_field_selector_equals_names_the_indexable_value() -> None:
    selector = FieldSelector.parse("status.phase!=Failed,spec.nodeName=node-1", POD_FIELDS)
    assert selector.equals("spec.nodeName") == "node-1"
    assert selector.equals("status.phase") is None  # only != on it
    assert selector.equals("metadata.name") is None
    assert FieldSelector.parse("spec.nodeName=", POD_FIELDS).equals("spec.nodeName") == ""


def test_field_selector_empty_and_round_trip() -> None:
    assert FieldSelector.parse("", POD_FIELDS).empty
    selector = FieldSelector.parse("spec.nodeName=n1,metadata.name!=a\\,b", POD_FIELDS)
    assert not selector.empty
    assert FieldSelector.parse(str(selector), POD_FIELDS) == selector
