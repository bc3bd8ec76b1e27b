"""Counts of what the layering asks for (issue 23): `python benchmarks/count_structure.py` prints each count and the
places it found; tests/test_layering.py pins them.

- metric literals: string constants that spell a metric name (val_r2, best_val_loss, test_r2_ci95, ...) in
  tune_ph/ outside metrics.py, which makes every name with metric_name().
- upward imports: an import (function-local ones too) of a subpackage that DESIGN.md's order puts above the
  importer: commands > search > report > training > model > data, baseline beside (data below it; report,
  search and commands above); the top-level modules (config, metrics, files, ...) import no subpackage.
- re-exports: `from tune_ph.X import name` (in tune_ph/, tests/, benchmarks/) where X does not define name but
  imports it from elsewhere.
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


# What each subpackage may import (besides the top-level modules every one may use).
MAY_IMPORT: dict[str, set[str]] = {
    "data": set(),
    "model": {"data"},
    "training": {"model", "data"},
    "baseline": {"data"},
    "report": {"training", "model", "data", "baseline"},
    "search": {"report", "training", "model", "data", "baseline"},
    "commands": {"search", "report", "training", "model", "data", "baseline"},
}
TOP_LEVEL_ENTRY = {"tune_ph", "tune_ph.__main__"}  # the package and its dispatcher sit above everything


def _imported(tree: ast.Module, module: str) -> Iterator[tuple[int, str, str | None]]:
    """(line, module, name or None) of every import of a tune_ph module, wherever it is (function-local too)."""
    package = module if module.count(".") == 1 and not module.endswith("__main__") else module.rsplit(".", 1)[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("tune_ph"):
                    yield node.lineno, alias.name, None
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against the importer's package
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            if base.startswith("tune_ph"):
                for alias in node.names:
                    yield node.lineno, base, alias.name


def _subpackage(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in MAY_IMPORT else None


def upward_imports() -> list[str]:
    """file:line: importer -> imported, for every import the layering forbids."""
    found = []
    for name, path, tree in modules():
        if name in TOP_LEVEL_ENTRY:
            continue
        own = _subpackage(name)
        for line, target, item in _imported(tree, name):
            full = (
                f"{target}.{item}"
                if item and (PACKAGE.parent / f"{target}.{item}".replace(".", "/")).exists()
                else target
            )
            other = _subpackage(full)
            if other is None or other == own:
                continue
            if own is None or other not in MAY_IMPORT[own]:
                found.append(f"{path.relative_to(ROOT)}:{line}: {name} -> {full}")
    return found


def _module_file(module: str) -> Path | None:
    base = ROOT / module.replace(".", "/")
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.exists():
            return candidate
    return None


def _imported_names(tree: ast.Module) -> set[str]:
    """The names a module binds at its top level by importing them (not by defining them)."""
    out = set()
    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            out.update((a.asname or a.name).split(".")[0] for a in node.names)
    return out


def reexports() -> list[str]:
    """file:line: `from X import name` where X imports name from elsewhere instead of defining it."""
    found = []
    trees: dict[Path, ast.Module] = {}
    sources = [*PACKAGE.rglob("*.py"), *(ROOT / "tests").rglob("*.py"), *(ROOT / "benchmarks").rglob("*.py")]
    for path in sorted(sources):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if not (isinstance(node, ast.ImportFrom) and not node.level and (node.module or "").startswith("tune_ph")):
                continue
            source = _module_file(node.module)
            if source is None:
                continue
            if source not in trees:
                trees[source] = ast.parse(source.read_text(), str(source))
            borrowed = _imported_names(trees[source])
            for alias in node.names:
                if alias.name in borrowed and _module_file(f"{node.module}.{alias.name}") is None:
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {alias.name} through {node.module}")
        found.extend(_attribute_reexports(path, tree, trees))
    return found


def _attribute_reexports(path: Path, tree: ast.Module, trees: dict[Path, ast.Module]) -> Iterator[str]:
    """`module.name` where `module` is a tune_ph module bound by an import and name is borrowed by it."""
    aliases: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and not node.level and (node.module or "").startswith("tune_ph"):
            for alias in node.names:
                if _module_file(f"{node.module}.{alias.name}") is not None:
                    aliases[alias.asname or alias.name] = f"{node.module}.{alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("tune_ph") and alias.asname:
                    aliases[alias.asname] = alias.name
    # A test that patches a module's binding where it is used (`trainable.fit = wrapper`) reads it there too.
    patched = {
        (node.value.id, node.attr)
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store) and isinstance(node.value, ast.Name)
    }
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases:
            if (node.value.id, node.attr) in patched:
                continue
            module = aliases[node.value.id]
            source = _module_file(module)
            if source is None:
                continue
            if source not in trees:
                trees[source] = ast.parse(source.read_text(), str(source))
            if node.attr in _imported_names(trees[source]) and _module_file(f"{module}.{node.attr}") is None:
                yield f"{path.relative_to(ROOT)}:{node.lineno}: {node.attr} through {module}"


COUNTS = {
    "metric literals outside metrics.py": metric_literals,
    "upward imports": upward_imports,
    "names imported through a module that does not define them": reexports,
}


def main() -> int:
    for label, count in COUNTS.items():
        found = count()
        print(f"{label}: {len(found)}")
        for place in found:
            print(f"    {place}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
