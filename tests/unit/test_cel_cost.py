"""Every CEL rule in the CRD stays within the API server's estimated-cost limits (api/cel_cost.py)."""

import pytest

from expbuild_isolation.api.cel_cost import (
    PER_CRD_LIMIT, PER_RULE_LIMIT, UnknownFunction, over_budget, rule_cost, schema_rule_costs,
)
from expbuild_isolation.api.crd import build_crd, build_policy_crd


def _rules():
    return schema_rule_costs(build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"])


def test_the_crd_has_rules_to_estimate():
    assert len(_rules()) >= 10


def test_every_rule_and_the_crd_stay_within_the_documented_budget():
    assert over_budget(build_crd()) == []
    assert over_budget(build_policy_crd()) == []
    costs = _rules()
    assert max(c.total for c in costs) <= PER_RULE_LIMIT
    assert sum(c.total for c in costs) <= PER_CRD_LIMIT


def test_rules_under_lists_are_counted_once_per_possible_item():
    by_path = {c.path: c for c in _rules()}
    path_rule = by_path["properties[spec].properties[inputs].items.properties[path].x-kubernetes-validations[1]"]
    assert path_rule.cardinality == 256   # inputs: maxItems 256
    assert path_rule.total == path_rule.cost * 256


# "Resource use by validation functions": the documentation's own examples and verdicts
UNBOUNDED = {"type": "array", "items": {"type": "string"}}
BOUNDED = {"type": "array", "maxItems": 25, "items": {"type": "string", "maxLength": 10}}


def test_the_documented_unbounded_rule_exceeds_the_budget_by_more_than_100x():
    assert rule_cost("self.all(x, x.contains('a string'))", UNBOUNDED) > 100 * PER_RULE_LIMIT


def test_the_documented_bounded_rule_is_allowed_at_the_list_and_on_each_item():
    on_list = rule_cost("self.all(x, x.contains('a string'))", BOUNDED)
    assert on_list <= PER_RULE_LIMIT
    items = {"type": "object", "properties": {"foo": {**BOUNDED, "items": {
        **BOUNDED["items"], "x-kubernetes-validations": [{"rule": "self.contains('a string')"}]}}}}
    [per_item] = schema_rule_costs(items)
    assert per_item.cardinality == 25 and per_item.total <= PER_RULE_LIMIT


def test_a_nested_unbounded_list_is_refused_where_a_flat_one_is_allowed():
    flat = {"type": "object", "properties": {"foo": {"type": "array", "items": {"type": "integer"}}},
            "x-kubernetes-validations": [{"rule": "self.foo.all(x, x == 5)"}]}
    nested = {"type": "object", "properties": {"foo": {"type": "array", "items": {
        "type": "array", "items": {"type": "integer"}, "x-kubernetes-validations": [{"rule": "self.all(x, x == 5)"}]}}}}
    [flat_cost] = schema_rule_costs(flat)
    [nested_cost] = schema_rule_costs(nested)
    assert flat_cost.total <= PER_RULE_LIMIT < nested_cost.total


def test_a_regex_on_a_string_without_max_length_costs_a_whole_request():
    unbounded = rule_cost("self.matches('^[a-z]+$')", {"type": "string"})
    bounded = rule_cost("self.matches('^[a-z]+$')", {"type": "string", "maxLength": 63})
    assert unbounded > 1000 * bounded


def test_transition_rules_are_cheap():
    spec = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert rule_cost("self == oldSelf", spec) < 100
    assert rule_cost("self.cancel || !oldSelf.cancel", spec) < 100


def test_an_unpriced_function_is_an_error_not_a_free_pass():
    with pytest.raises(UnknownFunction):
        rule_cost("self.someNewFunction()", {"type": "string", "maxLength": 10})
