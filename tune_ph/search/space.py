"""Search-space YAML -> a validated SearchSpec: yaml.safe_load, every error naming the file, key and fix.

The file format is documented in search_spaces/README.md.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import yaml

from tune_ph.config import TrainConfig, model_max_length
from tune_ph.errors import ConfigError, SpaceError
from tune_ph.search import settings
from tune_ph.search.space_params import Checker, check_value, coerce, parse_param
from tune_ph.search.spec import (
    DATA_FIELDS,
    FIELD_TYPES,
    UNSEARCHABLE,
    OptunaSpace,
    SearchSpec,
    default_of,
    dependency_order,
    values_of,
)

__all__ = ["FIELD_TYPES", "OptunaSpace", "SearchSpec", "SpaceError", "apply_overrides", "load_space", "parse_space"]

SECTIONS = ("name", "fixed", "space", *settings.SECTIONS)
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
        types = settings.scalar_types(cls, k)
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


def _check_per_model(ck: Checker, spec: SearchSpec) -> None:
    """Every model the search can pick needs a value in each `per: model` mapping (rechecked after --model)."""
    for name, param in spec.params.items():
        if param.per:
            missing = [m for m in spec.model_choices() if m not in param.values]
            if missing:
                ck.fail(
                    f"space.{name}.values",
                    f"no value for model {', '.join(missing)}; every model the search can pick needs one",
                )


def _resolve_fixed_conditions(spec: SearchSpec) -> None:
    """A `when` or `per: model` on a fixed field is decided once: drop the parameter or the condition, or
    keep the one entry of a per-model mapping that the fixed model picks."""
    if "model" not in spec.params:
        model = spec.fixed.get("model", default_of("model"))
        for name, param in list(spec.params.items()):
            if param.per == "model":
                chosen = param.values[model]
                chosen.when = param.when
                spec.params[name] = chosen
                if chosen.dist is None and not chosen.when:  # one fixed value for that model
                    spec.fixed[name] = spec.params.pop(name).args
    for name in list(spec.params):
        param = spec.params[name]
        for dep in [d for d in (param.when or {}) if d not in spec.params]:
            value = spec.fixed.get(dep, default_of(dep) if dep in FIELD_TYPES else None)
            if value not in param.when[dep]:
                del spec.params[name]
                break
            del param.when[dep]


def validate(spec: SearchSpec) -> None:
    """Cross-field checks, rerun after CLI overrides: ranges, lengths that fit each model, resources."""
    ck = Checker(spec.path)
    _check_per_model(ck, spec)
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


def load_space(path: str | Path) -> SearchSpec:
    """Read and validate a search-space YAML file (yaml.safe_load)."""
    path = Path(path)
    if not path.is_file():
        raise SpaceError(
            f"{path}: no such file; the shipped spaces are in search_spaces/ (heads.yaml, sizes.yaml, quick.yaml)"
        )
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
        raise SpaceError(f"{path}: not valid YAML: {err}") from err
    return parse_space(raw, str(path))


def apply_overrides(spec: SearchSpec, overrides: dict[str, Any]) -> SearchSpec:
    """CLI flags win over the file: keys are fixed TrainConfig fields or search/scheduler/resources settings."""
    for key, value in overrides.items():
        if value is None:
            continue
        section = settings.section_of(key)
        if section is not None:  # typed as the file's values are (a flag's nan or inf is refused here too)
            Checker(spec.path).check_type(
                f"{section}.{key}", value, settings.scalar_types(settings.SECTIONS[section], key)
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
