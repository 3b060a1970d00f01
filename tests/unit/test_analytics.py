"""The nearest-rank percentiles of the workspace figures."""

from __future__ import annotations

import pytest

from fenlo_server.storage.analytics import percentile


def test_nearest_rank_percentiles() -> None:
    values = [float(v) for v in range(1, 101)]  # 1..100
    assert percentile(values, 0.5) == 50.0
    assert percentile(values, 0.95) == 95.0
    assert percentile([7.5], 0.5) == percentile([7.5], 0.95) == 7.5
    assert percentile([1.0, 2.0], 0.5) == 1.0
    assert percentile([1.0, 2.0], 0.95) == 2.0
    assert percentile([], 0.5) == 0.0


@pytest.mark.parametrize("size", [3, 20, 101])
def test_percentiles_are_values_of_the_sample_in_order(size: int) -> None:
    values = sorted(float(v * 3 % 17) for v in range(size))
    p50, p95 = percentile(values, 0.5), percentile(values, 0.95)
    assert p50 in values and p95 in values
    assert p50 <= p95 <= values[-1]
