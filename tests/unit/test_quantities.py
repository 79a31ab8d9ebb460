from decimal import Decimal

import pytest

from expbuild_isolation.api.quantities import (
    QuantityError, format_bytes, parse_bytes, parse_cpu, parse_duration, parse_quantity,
)


@pytest.mark.parametrize("text, expected", [
    ("2Gi", 2 * 2**30), ("512Mi", 512 * 2**20), ("1Ki", 1024), ("1k", 1000), ("1M", 10**6),
    ("1.5Gi", int(1.5 * 2**30)), ("1e3", 1000), ("100", 100), (4096, 4096), ("0.5Ki", 512), ("+1Mi", 2**20),
])
def test_byte_quantities_parse_exactly(text, expected):
    assert parse_bytes(text) == expected


@pytest.mark.parametrize("text, expected", [("500m", 0.5), ("2", 2.0), ("1.5", 1.5), (3, 3.0), ("100m", 0.1)])
def test_cpu_quantities_parse_to_cores(text, expected):
    assert parse_cpu(text) == pytest.approx(expected)


def test_fractional_bytes_round_up():
    assert parse_bytes("1500m") == 2


@pytest.mark.parametrize("text, hint", [("2GB", '"2Gi"'), ("512MB", '"512Mi"'), ("1 GiB", '"1Gi"'), ("2g", '"2Gi"')])
def test_lookalike_units_get_a_did_you_mean(text, hint):
    with pytest.raises(QuantityError, match="did you mean " + hint):
        parse_bytes(text)


@pytest.mark.parametrize("bad", ["", "Gi", "2 Gi x", "-1Gi", "1.2.3", "abc", "1Zi", True, float("inf")])
def test_malformed_or_negative_byte_quantities_are_refused(bad):
    with pytest.raises(QuantityError):
        parse_bytes(bad)


@pytest.mark.parametrize("bad", ["0", "-1", "0m", "0.0001"])
def test_cpu_must_be_positive_and_at_least_1m(bad):
    with pytest.raises(QuantityError):
        parse_cpu(bad)


@pytest.mark.parametrize("text, seconds", [
    ("90s", 90), ("10m", 600), ("1h30m", 5400), ("250ms", 0.25), ("1d", 86400), ("2h", 7200), ("45", 45),
    (30, 30), (1.5, 1.5), ("1m30s", 90),
])
def test_durations_parse_to_seconds(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("bad", ["", "10", "10x", "m", "1h 30m", "-5s", "0s", 0, "1.s", "s10"])
def test_bad_durations_are_refused(bad):
    if bad == "10":
        assert parse_duration(bad) == 10  # plain seconds are fine
        return
    with pytest.raises(QuantityError):
        parse_duration(bad)


def test_exact_decimal_value_is_kept():
    assert parse_quantity("100m") == Decimal("0.100")


@pytest.mark.parametrize("amount, text", [(2**31, "2Gi"), (3 * 2**20, "3Mi"), (1000, "1000"), (1536, "1536")])
def test_format_bytes_gives_the_shortest_exact_quantity(amount, text):
    assert format_bytes(amount) == text
    assert parse_bytes(text) == amount


@pytest.mark.parametrize("text", ["1e999999999", "1e5000", "999999Ei", "1e30"])
def test_absurd_quantities_are_refused_quickly_not_computed(text):
    with pytest.raises(QuantityError, match="larger than any size"):
        parse_bytes(text)


@pytest.mark.parametrize("text", ["30m1h", "1s1s", "1h 30m", "5µs", "d", "1.d"])
def test_durations_list_each_unit_once_largest_first(text):
    with pytest.raises(QuantityError, match="not a duration"):
        parse_duration(text)
