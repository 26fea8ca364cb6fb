"""What every benchmark prints of its timings: p50, p95 and p99, in milliseconds."""

from __future__ import annotations

from collections.abc import Sequence


def percentiles(seconds: Sequence[float]) -> tuple[float, float, float]:
    """p50, p95 and p99 of ``seconds`` in milliseconds, each the sample that share of them
    lies below (nearest rank), so every benchmark's figures mean the same."""
    ordered = sorted(seconds)

    def pick(share: float) -> float:
        return ordered[min(len(ordered) - 1, int(share * len(ordered)))] * 1000

    return pick(0.50), pick(0.95), pick(0.99)
