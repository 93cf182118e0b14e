"""Intervals for the rates the package reports (accuracies, agreement, win rates).

A rate measured on n pairs is a guess; its 95% interval says how good a guess. Wilson's score
interval (Wilson 1927) stays inside [0, 1] and is honest for small n and for rates near 0 or 1,
where the textbook p +- 1.96 sqrt(p (1 - p) / n) is not:

    centre = (p + z^2 / (2n)) / (1 + z^2 / n)
    half   = z / (1 + z^2 / n) * sqrt(p (1 - p) / n + z^2 / (4 n^2))

with p = k / n the observed rate and z = 1.96 for 95%.
"""
from __future__ import annotations

import math


def wilson_interval(successes: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """(low, high): the Wilson score interval of the rate ``successes / n`` (see the module
    docstring); ``successes`` may be fractional (a tie counted as 1/2). (nan, nan) when n = 0."""
    if n <= 0:
        return float("nan"), float("nan")
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be between 0 and n = {n}, got {successes}")
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)
