"""Rules: cache keys derived from an event's type, from the config file's `[[rules]]`.

    [[rules]]
    type = "user:{id}"                          # a type pattern
    keys = ["user:{id}", "user:{id}:profile"]   # key templates
    prefixes = ["feed:{id}:"]                   # prefix templates (optional)
    flush = false                               # true: a matching event flushes (optional)

Pattern: `:`-separated segments matched against the whole event type.
- a literal segment matches itself (`user`);
- `{name}` matches any one segment and captures it;
- `*` matches any one segment without capturing it;
- `{name...}`, as the last segment only, matches one or more remaining segments and
  captures them joined with `:`.

Template: text in which `{name}` is replaced by what the pattern captured, `{type}` by the
whole event type; `{{` and `}}` are literal braces. A template may use only names its
pattern captures (checked when the config is loaded). Every matching rule applies, and an
event's own keys and prefixes always apply too.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from cachewire.sidecar.errors import ConfigError
from cachewire.sidecar.sinks.base import Invalidation

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_CAPTURE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)(\.\.\.)?\}")
_PLACEHOLDER = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")
_RULE_FIELDS = {"type", "keys", "prefixes", "flush"}

# A compiled pattern segment: ("lit", text) | ("any", "") | ("cap", name) | ("rest", name)
Segment = tuple[str, str]
# A compiled template: literal text and capture names, alternating, starting with text.
Template = tuple[str, ...]


def compile_pattern(pattern: str) -> tuple[Segment, ...]:
    if not isinstance(pattern, str) or not pattern:
        raise ValueError("type must be a non-empty string")
    segments: list[Segment] = []
    parts = pattern.split(":")
    seen: set[str] = set()
    for i, part in enumerate(parts):
        if not part:
            raise ValueError(f"type {pattern!r} has an empty segment")
        capture = _CAPTURE.fullmatch(part)
        if part == "*":
            segments.append(("any", ""))
        elif capture:
            name, rest = capture.group(1), capture.group(2)
            if name == "type":
                raise ValueError("{type} is reserved for the whole event type")
            if name in seen:
                raise ValueError(f"type {pattern!r} captures {{{name}}} twice")
            seen.add(name)
            if rest and i != len(parts) - 1:
                raise ValueError(f"{{{name}...}} must be the last segment of {pattern!r}")
            segments.append(("rest" if rest else "cap", name))
        elif "{" in part or "}" in part or "*" in part:
            raise ValueError(
                f"segment {part!r} of {pattern!r}: a capture is a whole "
                "segment such as {id} or {rest...}, or * alone"
            )
        else:
            segments.append(("lit", part))
    return tuple(segments)


def compile_template(text: str, names: set[str]) -> Template:
    if not isinstance(text, str) or not text:
        raise ValueError("a template must be a non-empty string")
    out: list[str] = []
    literal: list[str] = []
    pos = 0
    for m in _PLACEHOLDER.finditer(text):
        literal.append(text[pos : m.start()])
        pos = m.end()
        token = m.group(0)
        if token in ("{{", "}}"):
            literal.append(token[0])
        elif token in ("{", "}"):
            raise ValueError(f"template {text!r} has an unmatched {token!r} (write {token * 2})")
        else:
            name = m.group(1)
            if not _NAME.fullmatch(name):
                raise ValueError(f"template {text!r}: {{{name}}} is not a name")
            if name != "type" and name not in names:
                known = ", ".join(f"{{{n}}}" for n in sorted(names | {"type"}))
                raise ValueError(f"template {text!r} uses {{{name}}}; the pattern gives {known}")
            out.extend(("".join(literal), name))
            literal = []
    literal.append(text[pos:])
    out.append("".join(literal))
    return tuple(out)


def render(template: Template, values: Mapping[str, str]) -> str:
    parts = list(template)
    for i in range(1, len(parts), 2):
        parts[i] = values[parts[i]]
    return "".join(parts)


@dataclass(frozen=True, slots=True)
class Rule:
    pattern: str
    segments: tuple[Segment, ...]
    keys: tuple[Template, ...] = ()
    prefixes: tuple[Template, ...] = ()
    flush: bool = False

    def match(self, parts: Sequence[str]) -> dict[str, str] | None:
        """The captures when the type (split on `:`) matches, else None."""
        segments = self.segments
        has_rest = bool(segments) and segments[-1][0] == "rest"
        if len(parts) < len(segments) or (not has_rest and len(parts) != len(segments)):
            return None
        values: dict[str, str] = {}
        for i, (kind, arg) in enumerate(segments):
            if kind == "lit":
                if parts[i] != arg:
                    return None
            elif kind == "cap":
                values[arg] = parts[i]
            elif kind == "rest":
                values[arg] = ":".join(parts[i:])
        return values


def make_rule(raw: Any, where: str = "rule") -> Rule:
    """One `[[rules]]` table → a Rule; ConfigError names the rule and the field."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: must be a table with type, keys, prefixes, flush")
    unknown = set(raw) - _RULE_FIELDS
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
    if "type" not in raw:
        raise ConfigError(f"{where}: type is required")
    try:
        segments = compile_pattern(raw["type"])
    except ValueError as exc:
        raise ConfigError(f"{where}.type: {exc}") from None
    where = f"{where} ({raw['type']})"
    names = {arg for kind, arg in segments if kind in ("cap", "rest")}
    templates: dict[str, tuple[Template, ...]] = {}
    for field in ("keys", "prefixes"):
        value = raw.get(field, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{where}.{field}: must be a list of strings")
        try:
            templates[field] = tuple(compile_template(v, names) for v in value)
        except ValueError as exc:
            raise ConfigError(f"{where}.{field}: {exc}") from None
    flush = raw.get("flush", False)
    if not isinstance(flush, bool):
        raise ConfigError(f"{where}.flush: must be true or false")
    if not templates["keys"] and not templates["prefixes"] and not flush:
        raise ConfigError(f"{where}: needs keys, prefixes or flush = true")
    return Rule(raw["type"], segments, templates["keys"], templates["prefixes"], flush)


def parse_rules(raw: Any) -> tuple[Rule, ...]:
    if not isinstance(raw, list):
        raise ConfigError("rules: must be an array of tables ([[rules]])")
    return tuple(make_rule(r, f"rules[{i}]") for i, r in enumerate(raw))


def _dedupe(items: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(items))


class Rules:
    """Applies every matching rule to an invalidation."""

    def __init__(self, rules: Sequence[Rule] = ()) -> None:
        self.rules = tuple(rules)

    @property
    def need_prefixes(self) -> list[str]:
        """Patterns of the rules that derive prefixes (memcached cannot enumerate them)."""
        return [r.pattern for r in self.rules if r.prefixes]

    def derive(self, event_type: str) -> tuple[tuple[str, ...], tuple[str, ...], bool]:
        """(keys, prefixes, flush) that the rules derive from a type."""
        if not self.rules:
            return (), (), False
        parts = event_type.split(":")
        keys: list[str] = []
        prefixes: list[str] = []
        flush = False
        for rule in self.rules:
            values = rule.match(parts)
            if values is None:
                continue
            values["type"] = event_type
            keys.extend(render(t, values) for t in rule.keys)
            prefixes.extend(render(t, values) for t in rule.prefixes)
            flush = flush or rule.flush
        return tuple(keys), tuple(prefixes), flush

    def expand(self, inv: Invalidation) -> Invalidation:
        keys, prefixes, flush = self.derive(inv.type)
        if not keys and not prefixes and not flush:
            return inv
        return replace(
            inv,
            keys=_dedupe((*inv.keys, *keys)),
            prefixes=_dedupe((*inv.prefixes, *prefixes)),
            flush=inv.flush or flush,
        )
