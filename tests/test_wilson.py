"""The Wilson interval at its edges: no successes has a lower bound of exactly 0, all successes an upper
bound of exactly 1 (not float noise such as 2.8e-17 in report.json)."""

import pytest

from gen.eval_compare import wilson


@pytest.mark.parametrize("n", [1, 3, 12, 30, 1000])
def test_the_interval_ends_exactly_at_the_edges(n: int) -> None:
    assert wilson(0, n)[0] == 0.0
    assert wilson(n, n)[1] == 1.0
    if n > 1:
        low, high = wilson(n // 2, n)
        assert 0.0 < low < high < 1.0
