"""Label selectors, field selectors and the name syntax they rest on.

Parsing is the only way to build a selector from text, and `str()` of a parsed
selector parses back to an equal one (the canonical form: requirements sorted
by key, values sorted). The grammar and semantics follow Kubernetes'
`labels.Parse` and `fields.ParseSelector`:

    label selector:  a=b  a==b  a!=b  a in (x,y)  a notin (x)  a  !a  a>1  a<1
                     comma is AND, whitespace between tokens is ignored,
                     the empty string selects everything.
    field selector:  f=v  f==v  f!=v, comma is AND; "\\," "\\=" "\\\\" escape.

`a!=b` and `a notin (x)` also match objects that have no label `a`, as in
Kubernetes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Iterable, Iterator, Mapping


class SelectorError(ValueError):
    """A malformed label or field selector; the message names the term and the problem."""


# ---------------------------------------------------------------------------
# Name syntax (Kubernetes apimachinery/pkg/util/validation). Each function
# returns the reason a string is invalid, or None when it is valid.

DNS1123_LABEL_MAX_LENGTH = 63
DNS1123_SUBDOMAIN_MAX_LENGTH = 253
LABEL_VALUE_MAX_LENGTH = 63
QUALIFIED_NAME_MAX_LENGTH = 63

_DNS1123_LABEL_FMT = "[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS1123_SUBDOMAIN_FMT = rf"{_DNS1123_LABEL_FMT}(\.{_DNS1123_LABEL_FMT})*"
_DNS1035_LABEL_FMT = "[a-z]([-a-z0-9]*[a-z0-9])?"
_QUALIFIED_NAME_FMT = "([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]"
_LABEL_VALUE_FMT = f"({_QUALIFIED_NAME_FMT})?"

_DNS1123_LABEL_RE = re.compile(_DNS1123_LABEL_FMT)
_DNS1123_SUBDOMAIN_RE = re.compile(_DNS1123_SUBDOMAIN_FMT)
_DNS1035_LABEL_RE = re.compile(_DNS1035_LABEL_FMT)
_QUALIFIED_NAME_RE = re.compile(_QUALIFIED_NAME_FMT)
_LABEL_VALUE_RE = re.compile(_LABEL_VALUE_FMT)


def _too_long(limit: int) -> str:
    return f"must be no more than {limit} characters"


def validate_dns1123_label(value: str) -> str | None:
    """A lowercase RFC 1123 label: namespaces, container and volume names."""
    if len(value) > DNS1123_LABEL_MAX_LENGTH:
        return _too_long(DNS1123_LABEL_MAX_LENGTH)
    if not _DNS1123_LABEL_RE.fullmatch(value):
        return (
            "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', "
            "and must start and end with an alphanumeric character (e.g. 'my-name', or '123-abc', "
            f"regex used for validation is '{_DNS1123_LABEL_FMT}')"
        )
    return None


def validate_dns1123_subdomain(value: str) -> str | None:
    """A lowercase RFC 1123 subdomain: pod, controller and node names, label key prefixes."""
    if len(value) > DNS1123_SUBDOMAIN_MAX_LENGTH:
        return _too_long(DNS1123_SUBDOMAIN_MAX_LENGTH)
    if not _DNS1123_SUBDOMAIN_RE.fullmatch(value):
        return (
            "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' "
            "or '.', and must start and end with an alphanumeric character (e.g. 'example.com', "
            f"regex used for validation is '{_DNS1123_SUBDOMAIN_FMT}')"
        )
    return None


def validate_dns1035_label(value: str) -> str | None:
    """An RFC 1035 label (starts with a letter): service names, which become DNS names."""
    if len(value) > DNS1123_LABEL_MAX_LENGTH:
        return _too_long(DNS1123_LABEL_MAX_LENGTH)
    if not _DNS1035_LABEL_RE.fullmatch(value):
        return (
            "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with "
            "an alphabetic character, and end with an alphanumeric character (e.g. 'my-name', or "
            f"'abc-123', regex used for validation is '{_DNS1035_LABEL_FMT}')"
        )
    return None


def validate_label_key(key: str) -> str | None:
    """A qualified name: an optional DNS-1123 subdomain prefix and "/", then a name of ≤63 characters.

    Label keys and annotation keys follow this rule.
    """
    prefix, slash, name = key.rpartition("/")
    if slash:
        if "/" in prefix:
            return (
                "a qualified name must consist of alphanumeric characters, '-', '_' or '.', and must "
                "start and end with an alphanumeric character, with an optional DNS subdomain prefix "
                "and '/' (e.g. 'example.com/MyName')"
            )
        if not prefix:
            return "prefix part must be non-empty"
        reason = validate_dns1123_subdomain(prefix)
        if reason:
            return f"prefix part {reason}"
    if not name:
        return "name part must be non-empty"
    if len(name) > QUALIFIED_NAME_MAX_LENGTH:
        return f"name part {_too_long(QUALIFIED_NAME_MAX_LENGTH)}"
    if not _QUALIFIED_NAME_RE.fullmatch(name):
        return (
            "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and "
            "end with an alphanumeric character (e.g. 'MyName', or 'my.name', or '123-abc', regex "
            f"used for validation is '{_QUALIFIED_NAME_FMT}')"
        )
    return None


def validate_label_value(value: str) -> str | None:
    """Empty, or ≤63 alphanumeric characters, '-', '_' and '.', alphanumeric at both ends."""
    if len(value) > LABEL_VALUE_MAX_LENGTH:
        return _too_long(LABEL_VALUE_MAX_LENGTH)
    if not _LABEL_VALUE_RE.fullmatch(value):
        return (
            "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' "
            "or '.', and must start and end with an alphanumeric character (e.g. 'MyValue', or "
            f"'my_value', or '12345', regex used for validation is '{_LABEL_VALUE_FMT}')"
        )
    return None


# ---------------------------------------------------------------------------
# Label selectors


class Operator(StrEnum):
    EQUALS = "="
    NOT_EQUALS = "!="
    IN = "in"
    NOT_IN = "notin"
    EXISTS = "exists"
    DOES_NOT_EXIST = "!"
    GREATER_THAN = "gt"
    LESS_THAN = "lt"


@dataclass(frozen=True)
class Requirement:
    """One term of a label selector: key, operator and (sorted) values."""

    key: str
    operator: Operator
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        op = self.operator
        if op is Operator.EXISTS:
            return self.key in labels
        if op is Operator.DOES_NOT_EXIST:
            return self.key not in labels
        value = labels.get(self.key)
        if op is Operator.EQUALS or op is Operator.IN:
            return value is not None and value in self.values
        if op is Operator.NOT_EQUALS or op is Operator.NOT_IN:
            return value is None or value not in self.values
        # gt / lt compare integers; a label that is absent or not an integer never matches.
        if value is None:
            return False
        try:
            actual = int(value)
        except ValueError:
            return False
        bound = int(self.values[0])
        return actual > bound if op is Operator.GREATER_THAN else actual < bound

    @property
    def is_equality(self) -> bool:
        """True when the term pins the key to one value (`a=b` or `a in (b)`)."""
        return self.operator in (Operator.EQUALS, Operator.IN) and len(self.values) == 1

    def __str__(self) -> str:
        op = self.operator
        if op is Operator.EXISTS:
            return self.key
        if op is Operator.DOES_NOT_EXIST:
            return f"!{self.key}"
        if op is Operator.IN or op is Operator.NOT_IN:
            return f"{self.key} {op.value} ({','.join(self.values)})"
        if op is Operator.GREATER_THAN:
            return f"{self.key}>{self.values[0]}"
        if op is Operator.LESS_THAN:
            return f"{self.key}<{self.values[0]}"
        return f"{self.key}{op.value}{self.values[0]}"


# Characters that end an identifier; everything else (but whitespace) is part of one.
_SPECIAL = frozenset("=!(),<>")
_END = ""  # the token at the end of the input


@dataclass(frozen=True)
class _Token:
    text: str  # "" at the end of the input
    position: int  # 0-based offset into the selector
    identifier: bool  # a key, value or keyword (in, notin), not a symbol

    def describe(self) -> str:
        return "end of string" if self.text == _END and not self.identifier else f"'{self.text}'"


def _tokenize(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch.isspace():
            i += 1
        elif ch in _SPECIAL:
            two = text[i : i + 2]
            if two in ("!=", "=="):
                tokens.append(_Token(two, i, False))
                i += 2
            else:
                tokens.append(_Token(ch, i, False))
                i += 1
        else:
            start = i
            while i < n and not text[i].isspace() and text[i] not in _SPECIAL:
                i += 1
            tokens.append(_Token(text[start:i], start, True))
    tokens.append(_Token(_END, n, False))
    return tokens


class _LabelParser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = _tokenize(text)
        self.index = 0

    def peek(self) -> _Token:
        return self.tokens[self.index]

    def next(self) -> _Token:
        token = self.tokens[self.index]
        if self.index < len(self.tokens) - 1:
            self.index += 1
        return token

    def error(self, token: _Token, problem: str) -> SelectorError:
        return SelectorError(
            f'invalid label selector "{self.text}": at position {token.position}: {problem}'
        )

    def unexpected(self, token: _Token, expected: str) -> SelectorError:
        return self.error(token, f"found {token.describe()}, expected: {expected}")

    def parse(self) -> list[Requirement]:
        requirements: list[Requirement] = []
        if self.peek().text == _END and not self.peek().identifier:
            return requirements
        while True:
            requirements.append(self.requirement())
            token = self.next()
            if token.text == _END and not token.identifier:
                return requirements
            if token.identifier or token.text != ",":
                raise self.unexpected(token, "',' or end of string")

    def key(self, token: _Token) -> str:
        if not token.identifier:
            raise self.unexpected(token, "label key")
        reason = validate_label_key(token.text)
        if reason:
            raise self.error(token, f'invalid label key "{token.text}": {reason}')
        return token.text

    def value(self, token: _Token, key: str) -> str:
        reason = validate_label_value(token.text)
        if reason:
            raise self.error(token, f'invalid label value "{token.text}" for key "{key}": {reason}')
        return token.text

    def requirement(self) -> Requirement:
        token = self.next()
        if not token.identifier and token.text == "!":
            key = self.key(self.next())
            follow = self.peek()
            if not follow.identifier and follow.text in (",", _END):
                return Requirement(key, Operator.DOES_NOT_EXIST)
            raise self.unexpected(follow, "',' or end of string after '!key'")
        key = self.key(token)
        follow = self.peek()
        if not follow.identifier and follow.text in (",", _END):
            return Requirement(key, Operator.EXISTS)  # "key" alone
        op_token = self.next()
        if not op_token.identifier:
            if op_token.text in ("=", "=="):
                return Requirement(key, Operator.EQUALS, (self.exact_value(key),))
            if op_token.text == "!=":
                return Requirement(key, Operator.NOT_EQUALS, (self.exact_value(key),))
            if op_token.text in (">", "<"):
                value_token = self.next()
                if not value_token.identifier:
                    raise self.unexpected(value_token, "an integer")
                try:
                    int(value_token.text)
                except ValueError:
                    raise self.error(
                        value_token,
                        f"for '>' and '<' operators the value must be an integer, got '{value_token.text}'",
                    ) from None
                op = Operator.GREATER_THAN if op_token.text == ">" else Operator.LESS_THAN
                return Requirement(key, op, (value_token.text,))
        elif op_token.text in ("in", "notin"):
            values = self.value_set(key, op_token)
            op = Operator.IN if op_token.text == "in" else Operator.NOT_IN
            return Requirement(key, op, values)
        raise self.unexpected(op_token, "one of '=', '==', '!=', 'in', 'notin', '>', '<', ',' or end of string")

    def exact_value(self, key: str) -> str:
        token = self.peek()
        if not token.identifier and token.text in (",", _END):
            return ""  # "a=" selects an empty value, as in Kubernetes
        if not token.identifier:
            raise self.unexpected(token, "a label value")
        self.next()
        return self.value(token, key)

    def value_set(self, key: str, op_token: _Token) -> tuple[str, ...]:
        open_token = self.next()
        if open_token.identifier or open_token.text != "(":
            raise self.unexpected(open_token, f"'(' after '{op_token.text}'")
        values: set[str] = set()
        # Kubernetes accepts empty members ("(a,)" holds "a" and ""), but not an empty set.
        expecting_value = True
        while True:
            token = self.next()
            if token.identifier:
                if not expecting_value:
                    raise self.unexpected(token, "',' or ')'")
                values.add(self.value(token, key))
                expecting_value = False
            elif token.text == ",":
                if expecting_value:
                    values.add("")
                expecting_value = True
            elif token.text == ")":
                if expecting_value and values:
                    values.add("")
                if not values:
                    raise self.error(
                        token, f"'{op_token.text}' needs at least one value in its parentheses"
                    )
                return tuple(sorted(values))
            else:
                raise self.unexpected(token, "a label value, ',' or ')'")


@dataclass(frozen=True)
class LabelSelector:
    """Requirements ANDed together; no requirement selects everything."""

    requirements: tuple[Requirement, ...] = ()

    @classmethod
    def parse(cls, text: str) -> LabelSelector:
        """Parses the Kubernetes string syntax; raises SelectorError on malformed input."""
        requirements = _LabelParser(text).parse()
        # Sorted by key (stable, so terms on one key keep their order): the canonical form.
        return cls(tuple(sorted(requirements, key=lambda r: r.key)))

    @classmethod
    def from_map(cls, selector: Mapping[str, str]) -> LabelSelector:
        """The selector of a service or replication controller: every key equals its value."""
        return cls(
            tuple(Requirement(k, Operator.EQUALS, (v,)) for k, v in sorted(selector.items()))
        )

    @property
    def empty(self) -> bool:
        return not self.requirements

    def matches(self, labels: Mapping[str, str]) -> bool:
        for requirement in self.requirements:
            if not requirement.matches(labels):
                return False
        return True

    def __iter__(self) -> Iterator[Requirement]:
        return iter(self.requirements)

    def __str__(self) -> str:
        return ",".join(str(r) for r in self.requirements)


# ---------------------------------------------------------------------------
# Field selectors


@dataclass(frozen=True)
class FieldRequirement:
    field: str
    operator: Operator  # EQUALS or NOT_EQUALS
    value: str

    def matches(self, fields: Mapping[str, str]) -> bool:
        actual = fields.get(self.field, "")
        if self.operator is Operator.EQUALS:
            return actual == self.value
        return actual != self.value

    def __str__(self) -> str:
        return f"{self.field}{self.operator.value}{_escape_field_value(self.value)}"


_FIELD_ESCAPES = {"\\": "\\", ",": ",", "=": "="}


def _escape_field_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace(",", "\\,").replace("=", "\\=")


def _split_unescaped_commas(text: str) -> list[str]:
    """Splits on commas not preceded by a backslash; escapes stay in the parts."""
    parts: list[str] = []
    current: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text):
            current.append(text[i : i + 2])
            i += 2
            continue
        if ch == ",":
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
        i += 1
    parts.append("".join(current))
    return parts


def _find_operator(term: str) -> tuple[int, str] | None:
    """The first unescaped '!=', '==' or '=' in term, as (index, operator)."""
    i = 0
    while i < len(term):
        ch = term[i]
        if ch == "\\":
            i += 2
            continue
        if term.startswith("!=", i):
            return i, "!="
        if term.startswith("==", i):
            return i, "=="
        if ch == "=":
            return i, "="
        i += 1
    return None


def _unescape_field_value(text: str, term: str) -> str:
    out: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "\\":
            escaped = text[i + 1 : i + 2]
            if escaped not in _FIELD_ESCAPES:
                raise SelectorError(
                    f'invalid field selector term "{term}": invalid escape sequence '
                    f'"\\{escaped}" (only "\\\\", "\\," and "\\=" may be escaped)'
                )
            out.append(_FIELD_ESCAPES[escaped])
            i += 2
            continue
        if ch in ",=":
            # an unescaped '=' after the operator is ambiguous: Kubernetes rejects it too
            raise SelectorError(
                f'invalid field selector term "{term}": "{ch}" in a value must be escaped as "\\{ch}"'
            )
        out.append(ch)
        i += 1
    return "".join(out)


@dataclass(frozen=True)
class FieldSelector:
    """Field requirements ANDed together; no requirement selects everything."""

    requirements: tuple[FieldRequirement, ...] = ()

    @classmethod
    def parse(cls, text: str, allowed: Iterable[str]) -> FieldSelector:
        """Parses "f=v,f!=v"; a field not in `allowed` raises SelectorError naming both."""
        allowed_fields = sorted(set(allowed))
        if not text.strip():
            return cls()
        requirements: list[FieldRequirement] = []
        for raw_term in _split_unescaped_commas(text):
            term = raw_term.strip()
            if not term:
                continue  # "a=b," is accepted, as in Kubernetes
            found = _find_operator(term)
            if found is None:
                raise SelectorError(
                    f'invalid field selector term "{term}": expected FIELD=VALUE, FIELD==VALUE or FIELD!=VALUE'
                )
            index, op_text = found
            field = term[:index].strip()
            if not field:
                raise SelectorError(f'invalid field selector term "{term}": missing field name')
            if field not in allowed_fields:
                raise SelectorError(
                    f'field label "{field}" not supported in field selector '
                    f"(supported: {', '.join(allowed_fields)})"
                )
            value = _unescape_field_value(term[index + len(op_text) :].strip(), term)
            op = Operator.NOT_EQUALS if op_text == "!=" else Operator.EQUALS
            requirements.append(FieldRequirement(field, op, value))
        return cls(tuple(sorted(requirements, key=lambda r: r.field)))

    @property
    def empty(self) -> bool:
        return not self.requirements

    def matches(self, fields: Mapping[str, str]) -> bool:
        for requirement in self.requirements:
            if not requirement.matches(fields):
                return False
        return True

    def equals(self, field: str) -> str | None:
        """The value an `=` term requires of `field` (for an index lookup), or None."""
        for requirement in self.requirements:
            if requirement.field == field and requirement.operator is Operator.EQUALS:
                return requirement.value
        return None

    def __str__(self) -> str:
        return ",".join(str(r) for r in self.requirements)
