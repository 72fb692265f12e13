"""One number formatter for the report, scaling.md and compare: each rule checked on values whose text is
known from the format's definition (decimals fixed per metric, three significant digits, grouping)."""
import math

import pytest

from bench.results import numbers


@pytest.mark.parametrize("value, name, text", [
    (0.19412, "test_bpd", "0.194"),       # the registry fixes bits/dim at three decimals
    (2229.47, "fid", "2,229"),            # from 1,000 up no decimals: an untrained model's FID
    (192.13, "fid", "192.1"),             # 100 and up: at most one decimal
    (0.04567, "made_up", "0.0457"),       # undeclared: three significant digits
    (float("nan"), "fid", "-"),
    (None, "fid", "-"),
])
def test_a_metric_is_written_with_its_decimals(value, name, text):
    assert numbers.metric(value, name) == text


def test_the_decimals_follow_the_registry():
    declared = {n: d for n, d in numbers.DECIMALS.items() if d is not None}
    name, decimals = next(iter(declared.items()))
    assert numbers.metric_decimals(name, 1.5) == decimals
    assert numbers.metric_decimals("undeclared", 1.5) == 2 and numbers.metric_decimals("undeclared", 15.0) == 1


def test_significant_percent_scientific_and_exact():
    assert numbers.significant(12.345) == "12.3" and numbers.significant(1234.5) == "1,234"
    assert numbers.percent(0.0123) == "1.2%" and numbers.percent(0.5) == "50%"
    assert numbers.scientific(1234567.0) == "1.23e+06"
    assert numbers.exact(123456.7) == "123,457" and numbers.exact(1.23456789) == "1.23457"
    assert numbers.exact(math.nan) == "nan" and numbers.exact(None) == "-" and numbers.exact("absent") == "absent"
    assert numbers.fixed(1234.5, 1) == "1,234.5" and numbers.fixed(1234.5, 1, grouped=False) == "1234.5"
