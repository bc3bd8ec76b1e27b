"""Search-space YAML -> a validated SearchSpec: yaml.safe_load, every error naming the file, key and fix.

The file format is documented in search_spaces/README.md.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import yaml

from tune_ph import schema
from tune_ph import search_settings as settings
from tune_ph.config import TrainConfig, model_max_length
from tune_ph.errors import ConfigError, SpaceError
from tune_ph.search.space_params import Checker, check_value, coerce, parse_param
from tune_ph.search.spec import (
    DATA_FIELDS,
    FIELD_TYPES,
    UNSEARCHABLE,
    SearchSpec,
    default_of,
    dependency_order,
    per_key,
    values_of,
)

__all__ = ["apply_overrides", "load_space", "parse_space"]

SECTIONS = ("name", "fixed", "space", *settings.SECTIONS)
# The spaces shipped with the code (a checkout's search_spaces/, beside the tune_ph package).
SHIPPED_DIR = Path(__file__).resolve().parents[2] / "search_spaces"
# An experiment name becomes a folder under --output-dir: one plain path component, nothing that climbs out.
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


def parse_space(raw: Any, path: str = "<space>") -> SearchSpec:
    """Validate a loaded YAML document; raise SpaceError naming the file and key on the first problem."""
    ck = Checker(path)
    if not isinstance(raw, dict):
        ck.fail("(top level)", f"expected a mapping with sections {', '.join(SECTIONS)}")
    ck.check_keys("", raw, SECTIONS)
    if "space" not in raw or not raw["space"]:
        ck.fail(
            "space",
            "missing or empty; name at least one TrainConfig field to search, e.g. {head: {choice: [linear, mlp2]}}",
        )
    spec = SearchSpec(path=path, name=str(raw.get("name") or Path(path).stem), raw=copy.deepcopy(raw))
    check_name(ck, "name", spec.name)
    spec.fixed = _parse_fixed(ck, raw.get("fixed") or {})
    _parse_params(ck, spec, raw["space"])
    _check_dependencies(ck, spec)
    spec.search = settings.SearchSettings(**_section(ck, raw, "search"))
    # Every scheduler setting is explicit from here on (and in the saved settings): the tuner, the trials table's
    # stop reasons and the report's rungs all read the same values.
    spec.scheduler = settings.SchedulerSettings(**_section(ck, raw, "scheduler"))
    if spec.scheduler.max_epochs is None:
        spec.scheduler.max_epochs = spec.fixed.get("epochs", default_of("epochs"))
    spec.resources = settings.ResourceSettings(**_section(ck, raw, "resources"))
    validate(spec)
    return spec


def _parse_fixed(ck: Checker, section: Any) -> dict[str, Any]:
    """The `fixed` section: TrainConfig values, and max_length per model as {size: length}."""
    ck.check_keys("fixed", section, list(FIELD_TYPES))
    fixed = dict(section)
    for name, value in fixed.items():
        key = f"fixed.{name}"
        if name == "max_length" and isinstance(value, dict):
            ck.check_keys(key, value, ("per", "values"))
            if value.get("per") != "model" or not isinstance(value.get("values"), dict) or not value["values"]:
                ck.fail(key, "expected a number or {per: model, values: {size: number}}")
            for m, v in value["values"].items():
                check_value(ck, f"{key}.values.{m}", "max_length", v)
            fixed[name] = {str(m): v for m, v in value["values"].items()}
        else:
            fixed[name] = value = coerce(name, value)
            check_value(ck, key, name, value)
    return fixed


def _parse_params(ck: Checker, spec: SearchSpec, section: Any) -> None:
    """The `space` section into spec.params (a plain scalar there is a fixed value)."""
    ck.check_keys("space", section, list(FIELD_TYPES))
    for name, value in section.items():
        key = f"space.{name}"
        if name in spec.fixed:
            ck.fail(key, f"{name} is also in fixed; keep it in one section")
        param = parse_param(ck, key, name, value)
        if param.dist is None and param.per is None:
            spec.fixed[name] = param.args  # a plain scalar under space: just a fixed value
            continue
        if name in UNSEARCHABLE:
            what = "the tokenized data" if name in DATA_FIELDS else "the architecture"
            ck.fail(
                key,
                f"{name} decides {what} (built once, before the trials) and cannot be searched; put a "
                "single value in fixed",
            )
        spec.params[name] = param


def _check_dependencies(ck: Checker, spec: SearchSpec) -> None:
    """Each `when`/`per` names a searched or fixed field, with values it can take, and nothing is circular."""
    for name, param in spec.params.items():
        key = f"space.{name}"
        deps = list((param.when or {}).keys()) + ([param.per] if param.per else [])
        for dep in deps:
            if dep == name:
                ck.fail(key, "a parameter cannot depend on itself")
            if dep not in spec.params and dep not in spec.fixed and dep != "model":
                ck.fail(key, f"depends on {dep!r}, which is neither searched nor fixed")
        for dep, allowed in (param.when or {}).items():
            _check_condition(ck, spec, f"{key}.when.{dep}", dep, allowed)
    if "model" in spec.params and values_of(spec.params["model"]) == []:
        ck.fail("space.model", "model can only be searched with choice")
    try:
        dependency_order(spec.params)
    except RecursionError:
        ck.fail("space", "circular `when`/`per` dependencies")


def _check_condition(ck: Checker, spec: SearchSpec, key: str, dep: str, allowed: list) -> None:
    """A `when` condition's values are values `dep` can take."""
    possible = _possible_values(spec, dep)
    for v in allowed:
        if dep in FIELD_TYPES:
            check_value(ck, key, dep, v)
        if dep in spec.params and possible is not None and v not in possible:
            ck.fail(key, f"{v!r} is not a possible {dep}; possible: {', '.join(map(str, possible))}")


def _possible_values(spec: SearchSpec, name: str) -> list | None:
    if name in spec.params:
        vals = values_of(spec.params[name])
        return vals or None
    if name in spec.fixed:
        return [spec.fixed[name]]
    return [default_of(name)] if name in FIELD_TYPES else None


def check_name(ck: Checker, key: str, name: str) -> None:
    """An experiment name is one folder under --output-dir; `../x` or `/abs` would write elsewhere."""
    if not _NAME.match(name) or name in (".", ".."):
        ck.fail(
            key,
            f"{name!r} is not a usable experiment name: use letters, digits, '.', '_' and '-' "
            "(a single folder name, at most 100 characters)",
        )


def _section(ck: Checker, raw: dict, name: str) -> dict[str, Any]:
    """One settings section's values as the file gives them, type-checked by settings' fields (not defaulted)."""
    cls = settings.SECTIONS[name]
    section = raw.get(name) or {}
    ck.check_keys(name, section, list(cls.__dataclass_fields__))
    out = {}
    for k, v in section.items():
        types = schema.scalar_types(cls, k)
        if cls.__dataclass_fields__[k].metadata.get("per_model") and isinstance(v, dict):
            ck.check_keys(f"{name}.{k}", v, ("per", "values"))
            if v.get("per") != "model" or not isinstance(v.get("values"), dict):
                ck.fail(f"{name}.{k}", "expected a number or {per: model, values: {size: number}}")
            for m, x in v["values"].items():
                ck.check_type(f"{name}.{k}.values.{m}", x, types)
            out[k] = {str(m): x for m, x in v["values"].items()}
            continue
        ck.check_type(f"{name}.{k}", v, types)  # also refuses NaN and infinities
        out[k] = v
    return out


def _check_per(ck: Checker, spec: SearchSpec) -> None:
    """Every value the `per` field can take needs an entry in the mapping (rechecked after overrides)."""
    for name, param in spec.params.items():
        if not param.per:
            continue
        if param.per == "model":
            possible = spec.model_choices()
        else:
            if param.per in spec.params and spec.params[param.per].per:
                ck.fail(
                    f"space.{name}.per",
                    f"{param.per} itself takes values per {spec.params[param.per].per}; "
                    "a `per` may name a setting searched with choice or fixed, not another `per`",
                )
            values = _possible_values(spec, param.per)
            if not values:
                ck.fail(f"space.{name}.per", f"{param.per} is not searched with choice; `per` needs its values")
            possible = [per_key(v) for v in values]
            unknown = [k for k in param.values if k not in possible]
            if unknown and param.per in spec.params:  # a fixed one (an override) keeps the other entries unused
                ck.fail(
                    f"space.{name}.values",
                    f"{', '.join(unknown)} is not a possible {param.per}; possible: {', '.join(possible)}",
                )
        missing = [m for m in possible if m not in param.values]
        if missing:
            ck.fail(
                f"space.{name}.values",
                f"no value for {param.per} {', '.join(missing)}; every {param.per} the search can pick needs one",
            )


def _resolve_fixed_conditions(spec: SearchSpec) -> None:
    """A `when` or `per` on a fixed field is decided once: drop the parameter or the condition, or keep the one
    entry of a `per` mapping that the fixed value picks. A parameter that no trial draws takes with it those that
    depend on it (a `per` on it would otherwise be looked up under its default, which no trial has)."""
    dropped: set[str] = set()
    for name in dependency_order(spec.params):  # a setting's dependencies first, so what they drop is known
        param = spec.params[name]
        for dep in [d for d in (param.when or {}) if d not in spec.params]:
            value = spec.fixed.get(dep, default_of(dep) if dep in FIELD_TYPES else None)
            if dep in dropped or value not in param.when[dep]:
                del spec.params[name]
                dropped.add(name)
                break
            del param.when[dep]
    for name, param in list(spec.params.items()):
        if param.per and param.per not in spec.params:
            if param.per in dropped:
                del spec.params[name]
                continue
            chosen = param.values[per_key(spec.fixed.get(param.per, default_of(param.per)))]
            chosen.when = param.when
            spec.params[name] = chosen
            if chosen.dist is None and not chosen.when:  # one fixed value for that choice
                spec.fixed[name] = spec.params.pop(name).args


def validate(spec: SearchSpec) -> None:
    """Cross-field checks, rerun after CLI overrides: ranges, lengths that fit each model, resources."""
    ck = Checker(spec.path)
    _check_per(ck, spec)
    _resolve_fixed_conditions(spec)
    for k, v in spec.fixed.items():
        if k in FIELD_TYPES and not (k == "max_length" and isinstance(v, dict)):
            check_value(ck, f"fixed.{k}", k, v)
    _check_settings(ck, spec)
    _check_models(ck, spec)


def _check_settings(ck: Checker, spec: SearchSpec) -> None:
    """Each setting by its own rule, then the rules between them: ASHA's epochs within fixed.epochs, a GPU share
    for every model."""
    for section in settings.SECTIONS:
        for key, problem in settings.problems(section, getattr(spec, section)):
            ck.fail(key, problem)
    epochs = spec.fixed.get("epochs", default_of("epochs"))
    if "epochs" in spec.params:
        ck.fail(
            "space.epochs",
            "epochs cannot be searched; ASHA decides how long each trial trains "
            "(set fixed.epochs / scheduler.max_epochs)",
        )
    max_epochs = spec.scheduler.max_epochs
    if max_epochs > epochs:
        ck.fail(
            "scheduler.max_epochs",
            f"{max_epochs} is more than fixed.epochs ({epochs}); trials never train longer than epochs",
        )
    grace = spec.scheduler.grace_period
    if not 1 <= grace <= max_epochs:
        ck.fail("scheduler.grace_period", f"must be between 1 and max_epochs ({max_epochs}), got {grace}")
    gpus = spec.resources.gpus_per_trial
    if isinstance(gpus, dict):
        missing = [m for m in spec.model_choices() if m not in gpus]
        if missing:
            ck.fail("resources.gpus_per_trial.values", f"no value for model {', '.join(missing)}")


def _check_models(ck: Checker, spec: SearchSpec) -> None:
    """Every model the search can pick: its max length is known now, and the TrainConfig it gets is valid."""
    models = spec.model_choices()
    if spec.fixed.get("model_config") and "model" in spec.params:
        ck.fail("fixed.model_config", "a custom model_config fixes the architecture; do not also search model")
    lengths = spec.fixed.get("max_length")
    if isinstance(lengths, dict):
        missing = [m for m in models if m not in lengths]
        if missing:
            ck.fail("fixed.max_length.values", f"no value for model {', '.join(missing)}")
    # Cross-field rules (a length that fits the model, model_config needs from_scratch, split fractions) are
    # TrainConfig's: build the config each model choice would get, and point an error at its YAML key.
    scalars = {k: v for k, v in spec.fixed.items() if not isinstance(v, dict) or k == "model_config"}
    for m in models:
        try:  # the search builds one dataset per model's max length before any trial: it must be known now
            model_max_length(m, spec.fixed.get("model_config"))
        except ValueError as err:
            ck.fail("space.model" if "model" in spec.params else "fixed.model", str(err))
        try:
            TrainConfig.from_dict({**scalars, "model": m, "max_length": spec.fixed_length_for(m)})
        except ConfigError as err:
            where = "space" if err.field in spec.params else "fixed"
            ck.fail(f"{where}.{err.field}", err.message)


def shipped_spaces() -> list[Path]:
    """The search-space files shipped in search_spaces/ (none when the package is installed without them)."""
    return sorted(SHIPPED_DIR.glob("*.yaml")) if SHIPPED_DIR.is_dir() else []


def _shown(path: Path) -> str:
    """A path as a user would type it here: relative to the working folder when it is below it."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def shipped_list() -> str:
    """`search_spaces/heads.yaml, search_spaces/quick.yaml, ...`: the shipped spaces, for an error message."""
    found = shipped_spaces()
    return ", ".join(_shown(p) for p in found) if found else "none found (they are in a checkout's search_spaces/)"


def _at(mark: Any) -> str:
    return f"line {mark.line + 1}, column {mark.column + 1}"  # PyYAML counts from 0, editors from 1


def yaml_problem(err: yaml.YAMLError) -> str:
    """One line for a YAML syntax error (PyYAML's spans 5-7): `line 3, column 31: expected ',' or ']', but got
    '}' (while parsing a flow sequence that starts at line 3, column 22)`."""
    mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    context, start = getattr(err, "context", None), getattr(err, "context_mark", None)
    text = f"{_at(mark)}: {problem}" if mark is not None else problem
    if context:
        text += f" ({context}" + (f" that starts at {_at(start)})" if start is not None and start != mark else ")")
    return text


def load_space(path: str | Path) -> SearchSpec:
    """Read and validate a search-space YAML file (yaml.safe_load)."""
    path = Path(path)
    if not path.is_file():
        raise SpaceError(f"{path}: no such file; the shipped spaces: {shipped_list()}")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        line = path.read_bytes()[: err.start].count(b"\n") + 1
        raise SpaceError(
            f"{path}: not UTF-8 text (byte {err.object[err.start]:#04x} on line {line}); save the file as UTF-8"
        ) from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise SpaceError(f"{path}: not valid YAML at {yaml_problem(err)}") from None
    return parse_space(raw, str(path))


def apply_overrides(spec: SearchSpec, overrides: dict[str, Any]) -> SearchSpec:
    """CLI flags win over the file: keys are fixed TrainConfig fields or search/scheduler/resources settings."""
    for key, value in overrides.items():
        if value is None:
            continue
        section = settings.section_of(key)
        if section is not None:  # typed as the file's values are (a flag's nan or inf is refused here too)
            Checker(spec.path).check_type(
                f"{section}.{key}", value, schema.scalar_types(settings.SECTIONS[section], key)
            )
            setattr(getattr(spec, section), key, value)
        elif key in FIELD_TYPES:
            spec.params.pop(key, None)
            spec.fixed[key] = value
        elif key == "name":
            check_name(Checker(spec.path), "--name", value)
            spec.name = value
        else:
            raise SpaceError(f"{spec.path}: unknown override {key!r}")
    if overrides.get("epochs") is not None and overrides.get("max_epochs") is None:
        # --epochs shortens (or lengthens) the whole run; ASHA's max follows unless given explicitly.
        spec.scheduler.max_epochs = overrides["epochs"]
    spec.scheduler.grace_period = min(spec.scheduler.grace_period, spec.scheduler.max_epochs)
    validate(spec)
    return spec


def resume_name(space: str | None, name: str | None) -> str:
    """The experiment --resume continues: --name, else the name in the --space file."""
    name = name or (load_space(space).name if space else None)
    if not name:
        raise SpaceError("--resume needs --name (or --space) to find the experiment")
    check_name(Checker("--resume"), "--name", name)  # `../x` would read and write outside --output-dir
    return name


def spec_from_flags(space: str | None, name: str | None, overrides: dict[str, Any]) -> SearchSpec:
    """A new search's settings: the --space file with the command line's overrides and --name, validated, and its
    local folders made absolute (Ray runs each trial in a folder of its own, where `runs/pretrained` names
    nothing)."""
    if not space:
        raise SpaceError("--space is required (e.g. --space search_spaces/quick.yaml)")
    spec = apply_overrides(load_space(space), {**overrides, "name": name})
    for key in ("model", "dataset", "cache_dir", "sequences", "metadata"):
        value = spec.fixed.get(key)
        if isinstance(value, str) and (key == "cache_dir" or Path(value).expanduser().exists()):
            spec.fixed[key] = str(Path(value).expanduser().resolve())
    return spec


def check_devices(spec: SearchSpec, cuda_devices: int) -> None:
    """Refuse a `device` (fixed, searched or --device) that asks for CUDA on a machine with no CUDA GPU.

    For a search run on this machine only (a cluster's nodes may have GPUs this one lacks): every trial with that
    device would fail, one after the other, after the search had started.
    """
    if cuda_devices > 0:
        return
    ck = Checker(spec.path)
    fix = "train on the CPU with --device cpu (or device: cpu / auto in the file)"
    values = [("fixed.device", spec.fixed.get("device", default_of("device")))]
    if "device" in spec.params:
        values = [(f"space.device.choice[{i}]", v) for i, v in enumerate(values_of(spec.params["device"]))]
    for key, value in values:
        if str(value).startswith("cuda"):
            written = (spec.raw.get("fixed") or {}).get("device", (spec.raw.get("space") or {}).get("device"))
            if key == "fixed.device" and written != value:
                key = "--device"  # the value came from the command line, not the file
            ck.fail(key, f"{value!r} asks for a CUDA GPU, but this machine has none; {fix}")


def spaces_without_weights() -> list[Path]:
    """The shipped spaces whose trials all train from scratch: they download nothing and run offline."""
    out = []
    for path in shipped_spaces():
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            continue
        if isinstance(raw, dict) and (raw.get("fixed") or {}).get("from_scratch") is True:
            out.append(path)
    return out


def _local_dataset(dataset: str) -> bool:
    """Whether a dataset source is on this machine (the demo or a path), not a hub id to download."""
    return dataset == "demo" or Path(dataset).expanduser().exists()


def lacking_message(spec: SearchSpec, *, gpu: bool, weights: list[str], why: str = "") -> str:
    """One line: what this machine lacks for the search (a GPU, pretrained weights it cannot download) and the
    offline route: pretrain a backbone here, or a shipped space that needs no weights."""
    needs = []
    if gpu:
        share = spec.resources.gpus_per_trial
        shown = ", ".join(f"{m} {v:g}" for m, v in share.items()) if isinstance(share, dict) else f"{share:g}"
        needs.append(f"a GPU (resources.gpus_per_trial: {shown}, and there is no GPU here)")
    if weights:
        where = why or "not in the local Hugging Face cache; the search would download them from the hub"
        needs.append(f"the pretrained weights of {', '.join(weights)} ({where})")
    dataset = str(spec.fixed.get("dataset", default_of("dataset")))
    # A hub dataset needs the network that is missing here: the route pretrains on data this machine holds.
    hub = not _local_dataset(dataset)
    local = "demo" if hub else dataset
    pretrain = f"python -m tune_ph pretrain --dataset {local} --from-scratch --output-dir runs/pretrained"
    flags = f"--model runs/pretrained{f' --dataset {local}' if hub else ''}{' --gpus-per-trial 0' if gpu else ''}"
    route = f"`{pretrain}`, then this search with `{flags}`"
    if hub:
        route += f" (or your own data: --dataset FOLDER in both; {dataset} is a hub dataset, which needs the internet)"
    free = [_shown(p) for p in spaces_without_weights()]
    if free:
        route += f"; or a space that needs no weights: {', '.join(free)}"
    return f"{spec.path} needs {' and '.join(needs)}. Offline, pretrain a backbone on your data: {route}"
