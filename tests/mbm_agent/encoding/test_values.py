"""The lowest layer's value rules (mbm_agent/encoding/values.py) that are not about observations."""

from __future__ import annotations

import numpy as np

from mbm_agent.encoding.values import is_finite_number


def test_is_finite_number_takes_real_numbers_only() -> None:
    for good in (0, -3, 0.5, 1e300, np.float64(0.2)):
        assert is_finite_number(good), good
    for bad in (True, False, float("nan"), float("inf"), -float("inf"), "1", None, [1]):
        assert not is_finite_number(bad), bad
