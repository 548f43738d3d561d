"""`[verify] method = "numeric"` reads a LaTeX fraction with a signed part as its value: `\\frac{-1}{2}`
is -0.5. The fraction rewrite took digits only, so `\\frac{-1}{2}` was read as its last number, 2."""

from __future__ import annotations

import pytest

from gen.verify import _number


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("\\boxed{\\frac{-1}{2}}", -0.5),
        ("x = \\dfrac{3}{-4}", -0.75),
        ("-\\frac{1}{2}", -0.5),
        ("\\frac{1}{2}", 0.5),
    ],
)
def test_a_signed_latex_fraction_is_read_as_its_value(text: str, value: float) -> None:
    assert _number(text) == value
