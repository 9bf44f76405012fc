"""Input validation: what the API refuses, and that what it keeps is what pgvector stores."""

from __future__ import annotations

import pytest
from fastapi import HTTPException

from memories.api import _vector_literal


def refused(values: list[float], dim: int) -> str:
    with pytest.raises(HTTPException) as caught:
        _vector_literal(values, dim)
    assert caught.value.status_code == 422
    return str(caught.value.detail)


def test_a_vector_of_the_right_size_becomes_a_float32_literal() -> None:
    assert _vector_literal([1.0, 0.5, -2.0], 3) == "[1.0,0.5,-2.0]"
    # 0.1 is stored as the nearest 32-bit float, and shown as such.
    assert _vector_literal([0.1, 1.0], 2) == "[0.10000000149011612,1.0]"


def test_the_wrong_size_is_refused_with_both_sizes() -> None:
    said = refused([1.0, 2.0], 3)
    assert said == "embedding has 2 values, this service expects 3 (EMBEDDING_DIM)"


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_values_that_are_not_finite_are_refused(bad: float) -> None:
    assert "finite" in refused([1.0, bad], 2)


def test_values_beyond_float32_are_refused() -> None:
    assert "32-bit floats" in refused([1.0, 1e39], 2)


def test_a_vector_that_rounds_to_zero_has_no_cosine_distance() -> None:
    assert "all zeros" in refused([0.0, 1e-46], 2)
