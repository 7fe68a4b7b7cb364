"""Statistics on small samples: known values, degenerate samples, coverage."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mbm_agent.stats import (
    aggregate_runs,
    iqm,
    normalized_score,
    probability_of_improvement,
    success_interval,
    summarize,
)


def test_iqm_known_value_and_matches_scipy_trim_mean() -> None:
    assert iqm(np.arange(1, 101)) == pytest.approx(50.5)
    scipy_stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    for n in (1, 2, 3, 4, 5, 7, 10, 33):
        x = rng.exponential(size=n)
        assert iqm(x) == pytest.approx(scipy_stats.trim_mean(x, 0.25))
    batch = rng.normal(size=(6, 9))
    np.testing.assert_allclose(iqm(batch, axis=1), scipy_stats.trim_mean(batch, 0.25, axis=1))


def test_summarize_known_values() -> None:
    s = summarize(np.arange(1, 101))
    assert s["n"] == 100
    assert s["mean"] == pytest.approx(50.5)
    assert s["median"] == pytest.approx(50.5)
    assert s["iqm"] == pytest.approx(50.5)
    assert s["std"] == pytest.approx(np.std(np.arange(1, 101), ddof=1))
    assert s["min"] == 1.0 and s["max"] == 100.0
    for key in ("mean_ci", "iqm_ci"):
        low, high = s[key]
        assert low < 50.5 < high
    assert s["mean_ci"][1] - s["mean_ci"][0] == pytest.approx(2 * 1.96 * 29.0 / 10, rel=0.15)
    assert summarize(np.arange(1, 101)) == s  # seeded: same CIs every time


@pytest.mark.parametrize("values", [[3.0, 3.0, 3.0], [0.0] * 10, [7.5]])
def test_degenerate_samples_have_no_nan(values: list[float]) -> None:
    s = summarize(values)
    json.dumps(s, allow_nan=False)
    assert s["mean"] == values[0] and s["std"] == 0.0
    if len(values) == 1:
        assert s["mean_ci"] is None and s["iqm_ci"] is None
    else:
        assert s["mean_ci"] == pytest.approx([values[0]] * 2)
        assert s["iqm_ci"] == pytest.approx([values[0]] * 2)


def test_bootstrap_interval_coverage() -> None:
    rng = np.random.default_rng(123)
    draws = 200
    hits_mean = hits_iqm = 0
    for i in range(draws):
        x = rng.normal(loc=2.0, scale=1.0, size=25)
        s = summarize(x, n_boot=500, seed=i)
        hits_mean += s["mean_ci"][0] <= 2.0 <= s["mean_ci"][1]
        hits_iqm += s["iqm_ci"][0] <= 2.0 <= s["iqm_ci"][1]  # symmetric: IQM = mean
    assert 0.85 <= hits_mean / draws <= 0.99
    assert 0.85 <= hits_iqm / draws <= 0.99


@pytest.mark.parametrize(
    ("k", "n", "expected"),
    [
        (5, 10, (0.2366, 0.7634)),
        (0, 10, (0.0, 0.2775)),
        (10, 10, (0.7225, 1.0)),
        (81, 263, (0.2553, 0.3662)),
    ],
)
def test_wilson_interval_known_numbers(k: int, n: int, expected: tuple[float, float]) -> None:
    out = success_interval([True] * k + [False] * (n - k))
    assert out["n"] == n and out["successes"] == k
    assert out["rate"] == pytest.approx(k / n)
    assert out["ci"] == pytest.approx(list(expected), abs=1e-4)


def test_wilson_matches_scipy() -> None:
    scipy_stats = pytest.importorskip("scipy.stats")
    for k, n, conf in [(0, 1, 0.95), (1, 1, 0.9), (3, 7, 0.95), (17, 20, 0.99), (50, 200, 0.8)]:
        ours = success_interval(np.r_[np.ones(k), np.zeros(n - k)], conf)["ci"]
        ref = scipy_stats.binomtest(k, n).proportion_ci(conf, method="wilson")
        assert ours == pytest.approx([ref.low, ref.high], abs=1e-9)


def test_bad_inputs_name_the_problem() -> None:
    with pytest.raises(ValueError, match="empty"):
        summarize([])
    with pytest.raises(ValueError, match="NaN"):
        summarize([1.0, float("nan")])
    with pytest.raises(ValueError, match="0/1"):
        success_interval([0, 1, 2])
    with pytest.raises(ValueError, match="confidence"):
        summarize([1.0, 2.0], confidence=95)
    with pytest.raises(ValueError, match="n_boot"):
        summarize([1.0, 2.0], n_boot=0)


def test_normalized_score() -> None:
    assert normalized_score(10.0, random=2.0, expert=10.0) == 1.0
    assert normalized_score(2.0, random=2.0, expert=10.0) == 0.0
    np.testing.assert_allclose(normalized_score([6.0, 14.0], 2.0, 10.0), [0.5, 1.5])
    with pytest.raises(ValueError, match="undefined"):
        normalized_score(1.0, random=0.5, expert=0.5)


def test_probability_of_improvement() -> None:
    better = probability_of_improvement([5.0, 6.0, 7.0], [1.0, 2.0, 3.0])
    assert better["poi"] == 1.0 and better["ci"] == [1.0, 1.0]
    same = probability_of_improvement([1.0, 2.0], [1.0, 2.0])
    assert same["poi"] == pytest.approx(0.5)
    assert same["ci"][0] < 0.5 < same["ci"][1]
    rng = np.random.default_rng(1)
    x, y = rng.normal(0.5, 1, 12), rng.normal(0, 1, 9)
    out = probability_of_improvement(x, y)
    scipy_stats = pytest.importorskip("scipy.stats")
    u = scipy_stats.mannwhitneyu(x, y).statistic
    assert out["poi"] == pytest.approx(u / (x.size * y.size))
    assert out["ci"][0] <= out["poi"] <= out["ci"][1]
    ties = probability_of_improvement([1.0, 1.0], [1.0, 0.0])
    assert ties["poi"] == pytest.approx(0.75)  # P(X > Y) = 0.5, P(X = Y) = 0.5


def test_probability_of_improvement_strata() -> None:
    x = {"a": [1.0, 1.0], "b": [0.0, 0.0]}
    y = {"a": [0.0, 0.0], "b": [0.0, 0.0]}
    assert probability_of_improvement(x, y)["poi"] == pytest.approx(0.75)  # (1 + 0.5) / 2
    with pytest.raises(ValueError, match="same strata"):
        probability_of_improvement(x, {"a": [0.0]})


def test_aggregate_runs_stratified() -> None:
    out = aggregate_runs(
        {
            "stratified": {"easy": [10.0, 10.0, 10.0], "hard": [0.0, 0.0, 0.0]},
            "single": [4.0],
            "plain": [1.0, 2.0, 3.0, 4.0],
        }
    )
    # Resampling within each task keeps three runs of each: no spread at all.
    assert out["stratified"]["n_runs"] == 6
    assert out["stratified"]["iqm"] == pytest.approx(5.0)
    assert out["stratified"]["iqm_ci"] == pytest.approx([5.0, 5.0])
    assert out["single"]["iqm_ci"] is None and out["single"]["iqm"] == 4.0
    assert out["plain"]["iqm"] == pytest.approx(2.5)
    low, high = out["plain"]["iqm_ci"]
    assert 1.0 <= low < 2.5 < high <= 4.0
    json.dumps(out, allow_nan=False)
    with pytest.raises(ValueError, match="empty"):
        aggregate_runs({})
