"""How a user's value appears in an error message: a short excerpt, never the whole input.

A 300 KB string, or a YAML alias bomb that expands to millions of nodes, must not come back
whole in a one-line error. ``shown`` builds a bounded repr without ever calling ``repr`` on the
whole value, so its cost stays small whatever it is given.
"""

from __future__ import annotations

from typing import Any

EXCERPT_CHARS = 60


def shown(value: Any, limit: int = EXCERPT_CHARS) -> str:
    """``repr(value)`` cut to about ``limit`` characters, saying how long the original was."""
    parts: list[str] = []
    _write(value, parts, [limit])
    text = "".join(parts)
    if isinstance(value, str) and len(value) > limit:
        return f"{text} ({len(value)} characters)"
    if isinstance(value, (list, dict)) and text.endswith("..."):
        return f"{text} ({len(value)} {'items' if isinstance(value, list) else 'keys'})"
    return text


def _write(value: Any, parts: list[str], budget: list[int]) -> None:
    """Append a repr of ``value`` to ``parts`` until ``budget[0]`` characters are spent."""
    if budget[0] <= 0:
        return
    if isinstance(value, (list, tuple, dict)):
        opening, closing = ("{", "}") if isinstance(value, dict) else ("[", "]") if isinstance(value, list) else ("(", ")")
        _spend(opening, parts, budget)
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for index, (key, item) in enumerate(items):
            if budget[0] <= 0:
                return
            if index:
                _spend(", ", parts, budget)
            if isinstance(value, dict):
                _write(key, parts, budget)
                _spend(": ", parts, budget)
            _write(item, parts, budget)
        _spend(closing, parts, budget)
        return
    if isinstance(value, str) and len(value) > budget[0]:
        _spend(repr(value[:budget[0]]), parts, budget, cut=True)
        return
    _spend(repr(value) if isinstance(value, (str, int, float, bool, type(None))) else f"<{type(value).__name__}>",
           parts, budget)


def _spend(text: str, parts: list[str], budget: list[int], *, cut: bool = False) -> None:
    if budget[0] <= 0:
        return   # already cut, and the "..." is written
    if len(text) > budget[0] and not cut:
        text = text[:budget[0]]
    parts.append(text)
    budget[0] -= len(text)
    if budget[0] <= 0 or cut:
        budget[0] = 0
        parts.append("...")
