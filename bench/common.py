"""What every benchmark shares: percentiles, free ports, and the results file."""

from __future__ import annotations

import json
import math
import socket
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "latest.json"


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile (no interpolation: the figure is one that was measured)."""
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def merge_results(figures: dict[str, float]) -> dict[str, float]:
    """Update the flat results object with these figures and return the whole of it."""
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    current: dict[str, float] = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    current.update({k: round(v, 4) for k, v in figures.items()})
    RESULTS.write_text(json.dumps(current, indent=2, sort_keys=True) + "\n")
    return current


def print_table(figures: dict[str, float], targets: dict[str, float] | None = None) -> None:
    targets = targets or {}
    width = max(len(k) for k in figures) if figures else 10
    print(f"{'figure':<{width}}  {'value':>10}  target")
    for name, value in sorted(figures.items()):
        target = targets.get(name)
        verdict = "" if target is None else f"<= {target}  {'ok' if value <= target else 'MISSED'}"
        print(f"{name:<{width}}  {value:>10.4f}  {verdict}")
