"""Manifests for the fuzzers: derived from the pydantic models' JSON schema, valid and broken.

``specs`` are what the models' own JSON schema admits (hypothesis-jsonschema); the models may still
refuse some (their cross-field rules are not in the schema). ``broken`` takes one of those and
damages it where a user could: a value replaced by any JSON value or by a known-nasty string, a key
dropped, an unknown key added. ``yaml_texts`` turns manifests into the text a user would hand to
``run``, plus texts built to hurt a parser (alias bombs, deep nesting, repeated keys, garbage).
"""

from __future__ import annotations

from typing import Any

import yaml
from hypothesis import strategies as st
from hypothesis_jsonschema import from_schema

from expbuild_isolation.api.task import ExecutionTaskSpec

NASTY = ["", ".", "..", "../x", "../../etc/passwd", "/etc/passwd", "a\x00b", "\x00", "1e30", "999999Ei", "1Ei", "-1",
         "1e999999999", "0", "0s", "99999999999d", "x" * 3000, "\u202e", "🙂", "\n", "$(id)", "${HOME}", "*", "~",
         "C:\\x", "a/../../b", "./.", "//", "NaN", "inf", "true", "null", "{}", "[]"]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=30) | st.sampled_from(NASTY),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=10)

specs = from_schema(ExecutionTaskSpec.model_json_schema(by_alias=True, mode="validation"))


def _paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    """Every place in ``value`` a mutation can hit: dict keys and list indexes, at any depth."""
    found = [prefix]
    if isinstance(value, dict):
        for key, item in value.items():
            found += _paths(item, prefix + (key,))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += _paths(item, prefix + (index,))
    return found


@st.composite
def broken(draw: st.DrawFn, spec: dict[str, Any]) -> dict[str, Any]:
    """``spec`` with one place damaged."""
    spec = yaml.safe_load(yaml.safe_dump(spec))   # a deep copy
    path = draw(st.sampled_from(_paths(spec)))
    how = draw(st.sampled_from(["replace", "replace", "nasty", "drop", "extra"]))
    if not path:
        return draw(json_values) if how == "replace" else spec
    parent = spec
    for step in path[:-1]:
        parent = parent[step]
    last = path[-1]
    if how == "drop":
        del parent[last]
    elif how == "extra" and isinstance(parent, dict):
        parent[draw(st.text(min_size=1, max_size=12))] = draw(json_values)
    else:
        parent[last] = draw(json_values if how == "replace" else st.sampled_from(NASTY))
    return spec


any_spec = st.one_of(specs, specs.flatmap(lambda s: broken(s)))


def manifest(spec: Any, name: str = "fuzz") -> dict[str, Any]:
    return {"apiVersion": "expbuild.io/v1alpha1", "kind": "ExecutionTask", "metadata": {"name": name}, "spec": spec}


def alias_bomb(levels: int) -> str:
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [f"a{i}: &a{i} [{','.join([f'*a{i - 1}'] * 9)}]" for i in range(1, levels)]
    return "\n".join(lines)


HEAD = "apiVersion: expbuild.io/v1alpha1\nkind: ExecutionTask\nmetadata: {name: fuzz}\n"
hostile_texts = st.one_of(
    st.integers(3, 12).map(lambda n: alias_bomb(n) + f"\n{HEAD}spec: {{command: *a{n - 1}}}\n"),
    st.integers(10, 6000).map(lambda n: HEAD + "spec: {command: " + "[" * n + "]" * n + "}\n"),
    st.sampled_from(["command", "spec", "kind", "env"]).map(
        lambda key: HEAD + f"spec:\n  {key}: [sh]\n  {key}: [sh]\n" if key != "kind" else HEAD + "kind: X\nspec: {}\n"),
    st.text(max_size=200),
    st.binary(max_size=200).map(lambda b: b.decode("latin-1")),
    st.just(HEAD + "spec: &s {command: [sh], x: *s}\n"),
)


def as_yaml(value: Any) -> str:
    return yaml.safe_dump(value, allow_unicode=False)
