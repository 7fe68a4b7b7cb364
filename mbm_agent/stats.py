"""Honest statistics for the handful of runs and episodes RL gives us.

Point estimates come with percentile-bootstrap confidence intervals; success
rates with Wilson score intervals; "is A better than B" with the probability of
improvement, as recommended by Agarwal et al., *Deep RL at the Edge of the
Statistical Precipice* (NeurIPS 2021), whose library ``rliable`` these functions
follow. They are written in numpy (plus the standard library's ``NormalDist``)
rather than on ``rliable``, whose ``arch`` dependency fails to import with
pandas 3, and rather than on scipy, so that evaluation needs no optional extra.

Every interval is a ``[low, high]`` list of floats, or ``None`` where the data
cannot give one (a single value has no spread to resample). Degenerate samples
(all values equal) get a zero-width interval, never NaN.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from statistics import NormalDist
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

#: Per-run (or per-episode) scores: one sample, or strata (task -> sample).
Scores = ArrayLike | Mapping[str, ArrayLike]

# Bootstrap replicates are built in chunks of about this many numbers, so a
# probability of improvement over two samples of 1000 episodes stays in memory.
_CHUNK_ELEMENTS = 4_000_000


def _sample(values: ArrayLike, name: str = "values") -> NDArray[np.float64]:
    """A 1-D float array of finite values, or an error naming what is wrong."""
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name} must be a sequence of numbers, got {values!r}.") from exc
    if arr.ndim == 0:
        arr = arr.reshape(1)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {arr.shape}.")
    if arr.size == 0:
        raise ValueError(f"{name} is empty; statistics need at least one value.")
    if not np.all(np.isfinite(arr)):
        raise ValueError(
            f"{name} contains NaN or infinite values ({arr[~np.isfinite(arr)][:3]}); "
            "drop or fix them before summarising."
        )
    return arr


def _check_confidence(confidence: float) -> float:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), e.g. 0.95, got {confidence!r}.")
    return float(confidence)


def _check_n_boot(n_boot: int) -> int:
    if isinstance(n_boot, bool) or not isinstance(n_boot, int | np.integer) or n_boot < 1:
        raise ValueError(f"n_boot must be a positive integer (e.g. 2000), got {n_boot!r}.")
    return int(n_boot)


def _strata(scores: Scores, name: str) -> dict[str, NDArray[np.float64]]:
    """Scores as ``{stratum: sample}``; a plain sample is one stratum named ``""``."""
    if isinstance(scores, Mapping):
        if not scores:
            raise ValueError(f"{name} is an empty mapping; give at least one stratum of scores.")
        return {str(k): _sample(v, f"{name}[{k!r}]") for k, v in scores.items()}
    return {"": _sample(scores, name)}


def iqm(values: ArrayLike, axis: int = -1) -> NDArray[np.float64] | float:
    """Interquartile mean: the mean of the middle 50% of the values.

    Identical to ``scipy.stats.trim_mean(values, 0.25, axis)``: ``int(0.25 * n)``
    values are cut from each end of the sorted sample.

    Args:
        values: Scores; reduced along ``axis``.
        axis: Axis holding one sample.

    Returns:
        The IQM (a float for 1-D input).
    """
    arr = np.sort(np.asarray(values, dtype=np.float64), axis=axis)
    n = arr.shape[axis]
    cut = int(0.25 * n)
    out = np.take(arr, np.arange(cut, n - cut), axis=axis).mean(axis=axis)
    return float(out) if np.ndim(out) == 0 else out


def _interval(replicates: NDArray[np.float64], confidence: float) -> list[float]:
    """Percentile interval of bootstrap replicates."""
    alpha = 1.0 - confidence
    low, high = np.quantile(replicates, [alpha / 2, 1 - alpha / 2])
    return [float(low), float(high)]


def _resample(
    strata: Mapping[str, NDArray[np.float64]], n_boot: int, rng: np.random.Generator
) -> NDArray[np.float64]:
    """``(n_boot, N)`` replicates: each stratum resampled with replacement, then pooled."""
    parts = [
        sample[rng.integers(0, sample.size, size=(n_boot, sample.size))]
        for sample in strata.values()
    ]
    return np.concatenate(parts, axis=1)


def summarize(
    values: ArrayLike, *, confidence: float = 0.95, n_boot: int = 2000, seed: int = 0
) -> dict[str, Any]:
    """Describe a sample with point estimates and bootstrap confidence intervals.

    Args:
        values: A 1-D sample (episode returns, per-run scores, ...), all finite.
        confidence: Confidence level of the intervals.
        n_boot: Bootstrap replicates.
        seed: Seed of the bootstrap generator (the same inputs give the same CIs).

    Returns:
        ``n``, ``mean``, ``std`` (sample standard deviation, 0 for one value),
        ``median``, ``iqm``, ``min``, ``max``, and the percentile-bootstrap
        intervals ``mean_ci`` and ``iqm_ci`` (``None`` when ``n == 1``), plus
        ``confidence``. All plain Python numbers, ready for JSON.

    Raises:
        ValueError: For an empty sample, non-finite values, or bad settings.
    """
    arr = _sample(values)
    confidence = _check_confidence(confidence)
    n_boot = _check_n_boot(n_boot)
    mean_ci: list[float] | None = None
    iqm_ci: list[float] | None = None
    if arr.size > 1:
        rng = np.random.default_rng(seed)
        boot = _resample({"": arr}, n_boot, rng)
        mean_ci = _interval(boot.mean(axis=1), confidence)
        iqm_ci = _interval(np.asarray(iqm(boot, axis=1)), confidence)
    return {
        "n": int(arr.size),
        "mean": float(arr.mean()),
        "std": float(arr.std(ddof=1)) if arr.size > 1 else 0.0,
        "median": float(np.median(arr)),
        "iqm": float(iqm(arr)),
        "min": float(arr.min()),
        "max": float(arr.max()),
        "mean_ci": mean_ci,
        "iqm_ci": iqm_ci,
        "confidence": confidence,
    }


def success_interval(successes: ArrayLike, confidence: float = 0.95) -> dict[str, Any]:
    """Success rate with a Wilson score interval.

    The Wilson interval keeps its coverage near the nominal level for small
    samples and rates near 0 or 1, where the normal ("Wald") interval collapses
    to zero width. It equals
    ``scipy.stats.binomtest(k, n).proportion_ci(confidence, method="wilson")``.

    Args:
        successes: One entry per episode, booleans or 0/1.
        confidence: Confidence level of the interval.

    Returns:
        ``n``, ``successes`` (count), ``rate``, ``ci`` (``[low, high]``) and
        ``confidence``.

    Raises:
        ValueError: For an empty sample or entries other than 0/1.
    """
    arr = _sample(successes, "successes")
    if not np.all((arr == 0) | (arr == 1)):
        raise ValueError(
            f"successes must hold booleans or 0/1 per episode, got values {np.unique(arr)[:5]}."
        )
    confidence = _check_confidence(confidence)
    n = arr.size
    k = int(arr.sum())
    p = k / n
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    low = 0.0 if k == 0 else max(0.0, centre - half)
    high = 1.0 if k == n else min(1.0, centre + half)
    return {
        "n": n,
        "successes": k,
        "rate": p,
        "ci": [float(low), float(high)],
        "confidence": confidence,
    }


def normalized_score(x: ArrayLike, random: float, expert: float) -> NDArray[np.float64] | float:
    """Place a score between a random agent (0) and the expert (1).

    Args:
        x: Score(s) to normalise (a float or an array).
        random: The random agent's score on the same seeds.
        expert: The expert's score on the same seeds.

    Returns:
        ``(x - random) / (expert - random)``, a float for scalar ``x``.

    Raises:
        ValueError: When ``expert == random`` (the scale is undefined) or a
            baseline is not finite.
    """
    random, expert = float(random), float(expert)
    if not (np.isfinite(random) and np.isfinite(expert)):
        raise ValueError(f"Baselines must be finite, got random={random}, expert={expert}.")
    if expert == random:
        raise ValueError(
            f"The expert and random baselines both score {expert}, so the normalised score "
            "(x - random) / (expert - random) is undefined; report raw returns for this "
            "environment, or evaluate the baselines on more episodes or other game settings."
        )
    out = (np.asarray(x, dtype=np.float64) - random) / (expert - random)
    return float(out) if out.ndim == 0 else out


def _poi_replicates(
    xs: Sequence[NDArray[np.float64]], ys: Sequence[NDArray[np.float64]]
) -> NDArray[np.float64]:
    """P(X > Y) + P(X = Y) / 2 averaged over strata, for replicates ``(b, n_x)``, ``(b, n_y)``.

    ``0.5 + 0.5 * mean(sign(x_i - y_j))`` is the Mann-Whitney U statistic of
    ``x`` against ``y`` divided by ``n_x * n_y``.
    """
    per_stratum = [
        0.5 + 0.5 * np.sign(x[:, :, None] - y[:, None, :]).mean(axis=(1, 2))
        for x, y in zip(xs, ys, strict=True)
    ]
    return np.mean(per_stratum, axis=0)


def probability_of_improvement(
    x: Scores,
    y: Scores,
    *,
    confidence: float = 0.95,
    n_boot: int = 2000,
    seed: int = 0,
) -> dict[str, Any]:
    """The probability that a run of X scores higher than a run of Y.

    ``P(X > Y) + 0.5 * P(X = Y)``, i.e. the Mann-Whitney U statistic over
    ``n_x * n_y``: 0.5 means no difference, 1 means X always wins. With strata
    (``{task: scores}`` for both), it is the average over the shared tasks, as in
    ``rliable``. The interval resamples X and Y independently (within each
    stratum).

    Args:
        x: Scores of X (per run or per episode), or ``{stratum: scores}``.
        y: Scores of Y, in the same form as ``x``.
        confidence: Confidence level of the interval.
        n_boot: Bootstrap replicates.
        seed: Seed of the bootstrap generator.

    Returns:
        ``poi``, ``ci`` (``None`` when both samples have a single value in every
        stratum), ``n_x``, ``n_y`` and ``confidence``.

    Raises:
        ValueError: For empty samples, non-finite values, or strata that differ.
    """
    sx, sy = _strata(x, "x"), _strata(y, "y")
    if sx.keys() != sy.keys():
        raise ValueError(
            f"x and y must have the same strata to be compared, got {sorted(sx)} and {sorted(sy)}."
        )
    confidence = _check_confidence(confidence)
    n_boot = _check_n_boot(n_boot)
    keys = sorted(sx)
    point = float(_poi_replicates([sx[k][None] for k in keys], [sy[k][None] for k in keys])[0])
    ci: list[float] | None = None
    if any(sx[k].size > 1 or sy[k].size > 1 for k in keys):
        rng = np.random.default_rng(seed)
        per_pair = max(sx[k].size * sy[k].size for k in keys)
        chunk = max(1, _CHUNK_ELEMENTS // per_pair)
        reps = []
        for start in range(0, n_boot, chunk):
            b = min(chunk, n_boot - start)
            xs = [sx[k][rng.integers(0, sx[k].size, (b, sx[k].size))] for k in keys]
            ys = [sy[k][rng.integers(0, sy[k].size, (b, sy[k].size))] for k in keys]
            reps.append(_poi_replicates(xs, ys))
        ci = _interval(np.concatenate(reps), confidence)
    return {
        "poi": point,
        "ci": ci,
        "n_x": sum(v.size for v in sx.values()),
        "n_y": sum(v.size for v in sy.values()),
        "confidence": confidence,
    }


def aggregate_runs(
    groups: Mapping[str, Scores],
    *,
    confidence: float = 0.95,
    n_boot: int = 2000,
    seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """IQM and mean over runs per group, with stratified bootstrap intervals.

    Each group holds one score per run (e.g. a run's mean return), either as a
    plain list (the runs of one task) or as ``{task: scores}``. The bootstrap
    resamples runs with replacement within each task, keeping the number of
    runs per task, and pools them before taking the IQM: rliable's stratified
    bootstrap, which also works with different numbers of runs per task.

    Args:
        groups: ``{group name: scores}``.
        confidence: Confidence level of the intervals.
        n_boot: Bootstrap replicates.
        seed: Seed of the bootstrap generator (each group uses the same seed).

    Returns:
        ``{group: {"n_runs", "iqm", "iqm_ci", "mean", "mean_ci", "confidence"}}``;
        the intervals are ``None`` when every task of the group has a single run.

    Raises:
        ValueError: For an empty mapping, empty groups or non-finite scores.
    """
    if not groups:
        raise ValueError("groups is empty; give at least one group of per-run scores.")
    confidence = _check_confidence(confidence)
    n_boot = _check_n_boot(n_boot)
    out: dict[str, dict[str, Any]] = {}
    for name, scores in groups.items():
        strata = _strata(scores, f"groups[{name!r}]")
        pooled = np.concatenate(list(strata.values()))
        iqm_ci: list[float] | None = None
        mean_ci: list[float] | None = None
        if any(s.size > 1 for s in strata.values()):
            boot = _resample(strata, n_boot, np.random.default_rng(seed))
            iqm_ci = _interval(np.asarray(iqm(boot, axis=1)), confidence)
            mean_ci = _interval(boot.mean(axis=1), confidence)
        out[str(name)] = {
            "n_runs": int(pooled.size),
            "iqm": float(iqm(pooled)),
            "iqm_ci": iqm_ci,
            "mean": float(pooled.mean()),
            "mean_ci": mean_ci,
            "confidence": confidence,
        }
    return out


__all__ = [
    "aggregate_runs",
    "iqm",
    "normalized_score",
    "probability_of_improvement",
    "success_interval",
    "summarize",
]
