"""Counter-based random numbers, one independent stream per world.

Every world of a batched game owns a 64-bit key (drawn from its own
``np.random.Generator`` at reset, so Gymnasium seeding still governs it) and a
draw counter. A draw hashes (key, counter, index) with SplitMix64, so N worlds
draw at once in one numpy expression, and world i of a batch sees exactly the
numbers the single env seeded like slot i sees, whatever the batch holds.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

Index = NDArray[np.intp] | slice

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_S30 = np.uint64(30)
_S27 = np.uint64(27)
_S31 = np.uint64(31)
_S11 = np.uint64(11)
_INV53 = 1.0 / float(1 << 53)


def splitmix64(x: NDArray[np.uint64]) -> NDArray[np.uint64]:
    """SplitMix64 finaliser applied elementwise (wrapping uint64 arithmetic)."""
    z = x + _GOLDEN
    z = (z ^ (z >> _S30)) * _M1
    z = (z ^ (z >> _S27)) * _M2
    return z ^ (z >> _S31)


class WorldRandom:
    """Per-world random streams for a batch of ``n`` worlds."""

    def __init__(self, n: int) -> None:
        self.keys = np.zeros(n, dtype=np.uint64)
        self.counters = np.zeros(n, dtype=np.uint64)
        self._offsets: dict[int, NDArray[np.uint64]] = {}

    def rekey(self, idx: NDArray[np.intp], keys: NDArray[np.uint64]) -> None:
        """Start fresh streams for worlds ``idx``."""
        self.keys[idx] = keys
        self.counters[idx] = 0

    def bits(self, idx: Index, size: int) -> NDArray[np.uint64]:
        """``(len(idx), size)`` raw 64-bit draws for worlds ``idx``; advances their counters."""
        # SplitMix64 over the sequence key + counter * M1 + j * GOLDEN: the mixer is a
        # bijection, and distinct (counter, j) never meet for any realistic counter.
        base = self.keys[idx] + self.counters[idx] * _M1
        self.counters[idx] += np.uint64(1)
        offs = self._offsets.get(size)
        if offs is None:
            offs = self._offsets[size] = np.arange(1, size + 1, dtype=np.uint64) * _GOLDEN
        return splitmix64(base[:, None] + offs)

    def uniform(self, idx: Index, size: int) -> NDArray[np.float64]:
        """``(len(idx), size)`` floats uniform in [0, 1)."""
        return (self.bits(idx, size) >> _S11).astype(np.float64) * _INV53

    def integers(self, idx: Index, high: int | NDArray[np.integer], size: int) -> NDArray[np.int64]:
        """``(len(idx), size)`` integers uniform in ``[0, high)`` (high may be per world)."""
        high_arr = np.asarray(high, dtype=np.float64)
        if high_arr.ndim == 1:
            high_arr = high_arr[:, None]
        return np.floor(self.uniform(idx, size) * high_arr).astype(np.int64)

    def permutations(self, idx: Index, n: int) -> NDArray[np.int64]:
        """``(len(idx), n)`` random permutations of ``range(n)``."""
        return np.argsort(self.uniform(idx, n), axis=1, kind="stable").astype(np.int64)

    def normal(self, idx: Index, size: int) -> NDArray[np.float64]:
        """``(len(idx), size)`` standard normal draws (Box-Muller)."""
        u = self.uniform(idx, 2 * size)
        u1 = 1.0 - u[:, :size]
        return np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u[:, size:])
