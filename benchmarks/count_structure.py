"""Counts of what the layering asks for (issue 23): `python benchmarks/count_structure.py` prints each count and the
places it found; tests/test_layering.py pins them.

- metric literals: string constants that spell a metric name (val_r2, best_val_loss, test_r2_ci95, ...) in
  tune_ph/ outside metrics.py, which makes every name with metric_name().
- upward imports: an import (function-local ones too) of a subpackage that DESIGN.md's order puts above the
  importer: commands > search > report > training > model > data, baseline beside (data below it; report,
  search and commands above); the top-level modules (config, metrics, files, ...) import no subpackage.
- max_length deciders: the modules of tune_ph/ that decide a max_length: look a model's maximum up
  (model_max_length, hyena_dna's max_length_of), write a length into a record (`x.max_length = ...`) or work one
  out (`max_length = <min/max/arithmetic>`, a `*length*` function returning one, `replace(..., max_length=<computed>)`);
  passing on a record's length as it is, or one another function worked out, decides nothing, and neither do checks
  of a given length against the model's (validate*, check*).
- flags engines: the modules with a function that turns dataclass fields into command-line flags (reads
  `fields(...)` and calls `add_argument`); one, tune_ph/schema.py, serves every settings record.
- run functions: the modules that call training's fit(); one run function (training/run.py) calls it.
- re-exports: `from tune_ph.X import name` (in tune_ph/, tests/, benchmarks/) where X does not define name but
  imports it from elsewhere.
- part-name branches: a comparison with a registered part's name (`kind == "attention"`, `x in ("hgb", "ridge")`,
  `case "clusters":`) anywhere in tune_ph/: a part's behaviour is its class's (tune_ph.registry), so nothing
  branches on its name. The names are those of the catalogs (TrainConfig's aggregations, heads, read encoders and
  abundance transforms; the baseline's models and references).
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


LENGTH_LOOKUPS = {"model_max_length", "max_length_of"}  # a model's maximum (besides a built backbone's config)


def _computed(value: ast.AST) -> bool:
    """Whether a value is worked out, not read as it is from a record (a name or an attribute)."""
    return not isinstance(value, (ast.Name, ast.Attribute, ast.Constant))


def _works_out(value: ast.AST) -> bool:
    """Whether an expression works a length out itself (arithmetic, min/max), not asks a function that does."""
    return any(
        isinstance(n, ast.BinOp) or (isinstance(n, ast.Call) and getattr(n.func, "id", None) in ("min", "max"))
        for n in ast.walk(value)
    )


def _length_decision(node: ast.AST) -> str | None:
    if isinstance(node, ast.Call):
        func = node.func
        called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
        if called in LENGTH_LOOKUPS:
            return f"{called}()"
        if called == "replace" and any(k.arg == "max_length" and _computed(k.value) for k in node.keywords):
            return "replace(max_length=...)"
    if isinstance(node, ast.Assign):
        for target in node.targets:
            if isinstance(target, ast.Attribute) and target.attr == "max_length":
                return "x.max_length = ..."
            if isinstance(target, ast.Name) and target.id == "max_length" and _works_out(node.value):
                return "max_length = ..."
    return None


def _returns_length(func: ast.AST) -> bool:
    return "length" in func.name and any(
        isinstance(n, ast.Return) and n.value is not None and _works_out(n.value) for n in ast.walk(func)
    )


def max_length_deciders() -> list[str]:
    """module: function (what), for every module that decides a max length (checks of a given one aside)."""
    by_module: dict[str, list[str]] = {}
    for name, _, tree in modules():
        for func in ast.walk(tree):
            if not isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)) or func.name.lstrip("_").startswith(
                ("validate", "check")
            ):
                continue
            nested = _nested(func)
            what = sorted({d for n in ast.walk(func) if n not in nested and (d := _length_decision(n))})
            if _returns_length(func):
                what.append("returns a worked-out length")
            if what:
                by_module.setdefault(name, []).append(f"{func.name} ({', '.join(what)})")
    return [f"{module}: {'; '.join(funcs)}" for module, funcs in by_module.items()]


def _nested(func: ast.AST) -> set[ast.AST]:
    """The nodes of functions defined inside func (counted as their own)."""
    out: set[ast.AST] = set()
    for node in ast.walk(func):
        if node is not func and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            out.update(ast.walk(node))
    return out


def _calls(func: ast.AST) -> set[str]:
    return {
        n.func.attr if isinstance(n.func, ast.Attribute) else getattr(n.func, "id", None)
        for n in ast.walk(func)
        if isinstance(n, ast.Call)
    }


def flag_engines() -> list[str]:
    """module.function for every function that makes command-line flags from dataclass fields (it reads them with
    fields(), itself or through a helper of its module)."""
    found = []
    for name, _, tree in modules():
        funcs = [f for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))]
        readers = {f.name for f in funcs if "fields" in _calls(f)}
        for func in funcs:
            called = _calls(func)
            if "add_argument" in called and called & (readers | {"fields"}):
                found.append(f"{name}.{func.name}")
    return found


def fit_callers() -> list[str]:
    """file:line of every call of training.fit.fit() in tune_ph/ (the run function's own included)."""
    found = []
    for name, path, tree in modules():
        binds = any(
            isinstance(node, ast.ImportFrom)
            and node.module == "tune_ph.training.fit"
            and "fit" in {a.name for a in node.names}
            for node in ast.walk(tree)
        )
        if not binds:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "fit":
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {name}")
    return found


def part_names() -> set[str]:
    """The names of every registered part, from the light catalogs (no torch or scikit-learn is imported)."""
    from tune_ph import config
    from tune_ph.baseline import choices

    catalogs = (config.AGGREGATIONS, config.ARCHITECTURES, config.READ_ENCODERS, config.ABUNDANCES, choices.MODELS)
    return {name for catalog in catalogs for name in catalog} | set(choices.REFERENCE_NAMES)


def _names_in(node: ast.AST, names: set[str]) -> list[str]:
    """The part names a compared value spells: a string constant, or a tuple/list/set of them."""
    values = node.elts if isinstance(node, (ast.Tuple, ast.List, ast.Set)) else [node]
    return [v.value for v in values if isinstance(v, ast.Constant) and v.value in names]


def part_name_branches() -> list[str]:
    """file:line: 'name', for every comparison (or match case) with a part's name in tune_ph/."""
    names = part_names()
    found = []
    for _, path, tree in modules():
        for node in ast.walk(tree):
            if isinstance(node, ast.Compare):
                spelled = [n for side in (node.left, *node.comparators) for n in _names_in(side, names)]
            elif isinstance(node, ast.MatchValue):
                spelled = _names_in(node.value, names)
            else:
                continue
            found.extend(f"{path.relative_to(ROOT)}:{node.lineno}: {name!r}" for name in spelled)
    return found


COUNTS = {
    "metric literals outside metrics.py": metric_literals,
    "upward imports": upward_imports,
    "max_length deciders": max_length_deciders,
    "fit() callers (run functions)": fit_callers,
    "flags engines": flag_engines,
    "names imported through a module that does not define them": reexports,
    "part-name branches (if ... == '<part name>')": part_name_branches,
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
