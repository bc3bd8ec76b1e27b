"""Counts of what the layering asks for (issue 23): `python benchmarks/count_structure.py` prints each count and the
places it found; tests/test_layering.py pins them.

- metric literals: string constants that spell a metric name (val_r2, best_val_loss, test_r2_ci95, ...) in
  tune_ph/ outside metrics.py, which makes every name with metric_name().
"""

from __future__ import annotations

import ast
import re
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "tune_ph"
METRIC_NAME = re.compile(r"^(best_)?(train|val|test)_(loss|mse|rmse|mae|r2|n_samples)(_ci95)?$")


def modules() -> Iterator[tuple[str, Path, ast.Module]]:
    """(dotted name, path, syntax tree) of every module of tune_ph."""
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        yield name, path, ast.parse(path.read_text(), str(path))


def metric_literals() -> list[str]:
    """file:line: literal, for every metric name spelled as a string outside metrics.py."""
    found = []
    for name, path, tree in modules():
        if name == "tune_ph.metrics":
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and METRIC_NAME.match(node.value):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.value!r}")
    return found


COUNTS = {"metric literals outside metrics.py": metric_literals}


def main() -> int:
    for label, count in COUNTS.items():
        found = count()
        print(f"{label}: {len(found)}")
        for place in found:
            print(f"    {place}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
