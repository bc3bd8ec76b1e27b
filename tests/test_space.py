"""Search-space YAML: the shipped files load, bad files fail with one clear error, the Optuna space is conditional."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import optuna
import pytest
from helpers import ROOT, TINY_MODEL, tiny_space, write_space

from tune_ph.errors import SpaceError
from tune_ph.search.space import apply_overrides, load_space, parse_space
from tune_ph.search.spec import FIELD_TYPES, OptunaSpace
from tune_ph.search_settings import ResourceSettings, SchedulerSettings, SearchSettings


@pytest.fixture
def pretrained_here(tmp_path, monkeypatch):
    """A tune_ph.training.pretrain-like folder at runs/pretrained, where search_spaces/pretrained.yaml looks for it."""
    from hyena_dna import HyenaDNAConfig, HyenaDNAModel

    HyenaDNAModel(HyenaDNAConfig.from_dict(dict(TINY_MODEL, l_max=258))).save_pretrained(tmp_path / "runs/pretrained")
    monkeypatch.chdir(tmp_path)


@pytest.mark.usefixtures("pretrained_here")
@pytest.mark.parametrize("name", sorted(p.stem for p in (ROOT / "search_spaces").glob("*.yaml")))
def test_shipped_spaces_load(name):
    spec = load_space(ROOT / "search_spaces" / f"{name}.yaml")
    assert spec.name == name
    assert spec.params and spec.search.num_samples >= 1


def test_field_types_match_train_config():
    from tune_ph.config import TrainConfig

    names = {f.name for f in dataclasses.fields(TrainConfig)} - {"output_dir"}
    assert set(FIELD_TYPES) == names


def _unfixed(name: str, spec: dict) -> dict:
    space = tiny_space()
    space["fixed"].pop(name, None)
    space["space"][name] = spec
    return space


def _error(tmp_path: Path, space: dict) -> str:
    path = write_space(tmp_path, space, "bad.yaml")
    with pytest.raises(SpaceError) as info:
        load_space(path)
    message = str(info.value)
    assert message.startswith(str(path)), message  # every error names the file first
    return message


def test_unknown_keys(tmp_path):
    msg = _error(tmp_path, tiny_space(space__haed={"choice": ["linear"]}))
    assert "space.haed" in msg and "allowed" in msg and "head" in msg
    msg = _error(tmp_path, tiny_space(search__num_trials=3))
    assert "search.num_trials" in msg and "num_samples" in msg
    msg = _error(tmp_path, {**tiny_space(), "schedular": {}})
    assert "schedular" in msg and "scheduler" in msg
    msg = _error(tmp_path, tiny_space(space__learning_rate={"logunif": [1e-4, 1e-3]}))
    assert "space.learning_rate" in msg and "loguniform" in msg


def test_wrong_types(tmp_path):
    msg = _error(tmp_path, tiny_space(fixed__epochs="three"))
    assert "fixed.epochs" in msg and "integer" in msg
    msg = _error(tmp_path, _unfixed("batch_size", {"choice": [8, 16.5]}))
    assert "space.batch_size.choice[1]" in msg and "integer" in msg
    msg = _error(tmp_path, tiny_space(space__freeze_backbone={"choice": ["no"]}))
    assert "space.freeze_backbone" in msg and "true/false" in msg
    msg = _error(tmp_path, _unfixed("batch_size", {"uniform": [4, 16]}))
    assert "space.batch_size" in msg and "choice" in msg


def test_empty_choice_and_bad_ranges(tmp_path):
    msg = _error(tmp_path, tiny_space(space__head={"choice": []}))
    assert "space.head.choice" in msg and "non-empty" in msg
    msg = _error(tmp_path, tiny_space(space__learning_rate={"loguniform": [1e-3, 1e-4]}))
    assert "space.learning_rate.loguniform" in msg and "low must be below high" in msg
    msg = _error(tmp_path, tiny_space(space__weight_decay={"loguniform": [0.0, 0.1]}))
    assert "loguniform needs low > 0" in msg
    msg = _error(tmp_path, tiny_space(scheduler__grace_period=5))
    assert "scheduler.grace_period" in msg and "between 1 and max_epochs" in msg


def test_impossible_values(tmp_path):
    msg = _error(tmp_path, tiny_space(space__head={"choice": ["linear", "mlp9"]}))
    assert "space.head.choice[1]" in msg and "mlp9" in msg and "mlp2" in msg
    space = tiny_space()
    del space["fixed"]["model_config"]
    space["fixed"]["model"] = "hyenadna-enormous"
    msg = _error(tmp_path, space)
    assert "fixed.model" in msg and "hyenadna-tiny-1k-seqlen" in msg
    # A sequence set longer than the model can read.
    space = tiny_space()
    del space["fixed"]["model_config"]
    space["fixed"].update(model="hyenadna-tiny-1k-seqlen", max_length=4096)
    msg = _error(tmp_path, space)
    assert "fixed.max_length" in msg and "1024" in msg and "hyenadna-tiny-1k-seqlen" in msg
    msg = _error(tmp_path, tiny_space(fixed__max_length=500))  # the custom model_config reads 128
    assert "fixed.max_length" in msg and "128" in msg
    msg = _error(tmp_path, tiny_space(resources__gpus_per_trial=1.5))
    assert "resources.gpus_per_trial" in msg and "fraction" in msg
    msg = _error(tmp_path, tiny_space(space__max_sets={"choice": [1, 2]}))
    assert "space.max_sets" in msg and "fixed" in msg
    msg = _error(tmp_path, tiny_space(space__head_dropout={"uniform": [0.0, 0.3], "when": {"head": ["mlp7"]}}))
    assert "space.head_dropout.when.head" in msg and "mlp7" in msg


def test_per_model_values_need_every_size(tmp_path):
    space = tiny_space()
    del space["fixed"]["model_config"]
    space["fixed"].update(from_scratch=False, max_length=1024)
    space["space"]["model"] = {"choice": ["hyenadna-tiny-1k-seqlen", "hyenadna-small-32k-seqlen"]}
    del space["fixed"]["batch_size"]
    space["space"]["batch_size"] = {"per": "model", "values": {"hyenadna-tiny-1k-seqlen": {"choice": [8, 16]}}}
    msg = _error(tmp_path, space)
    assert "space.batch_size.values" in msg and "hyenadna-small-32k-seqlen" in msg


def test_not_yaml_and_missing_file(tmp_path):
    bad = tmp_path / "broken.yaml"
    bad.write_text("space: {head: [linear\n")
    with pytest.raises(SpaceError, match="broken.yaml: not valid YAML"):
        load_space(bad)
    with pytest.raises(SpaceError, match="no such file"):
        load_space(tmp_path / "missing.yaml")


@pytest.mark.parametrize(
    ("text", "where", "problem"),
    [
        ("name: x\nspace:\n  head: {choice: [linear, mlp2}\n", "line 3, column 31", "expected ',' or ']', but got '}'"),
        ("name: x\n\tspace: 1\n", "line 2, column 1", "found character '\\t' that cannot start any token"),
        ("name: x\nspace:\n  head: 'linear\n", "line 4, column 1", "found unexpected end of stream"),
    ],
)
def test_a_yaml_syntax_error_is_one_line_naming_file_line_and_column(tmp_path, text, where, problem):
    bad = tmp_path / "broken.yaml"
    bad.write_text(text)
    with pytest.raises(SpaceError) as err:
        load_space(bad)
    msg = str(err.value)
    assert "\n" not in msg, msg
    assert msg.startswith(f"{bad}: not valid YAML at {where}: {problem}"), msg


def test_a_missing_space_lists_every_shipped_file(tmp_path):
    with pytest.raises(SpaceError) as err:
        load_space(tmp_path / "missing.yaml")
    msg = str(err.value)
    shipped = sorted((ROOT / "search_spaces").glob("*.yaml"))
    assert len(shipped) >= 4
    for path in shipped:  # from the folder: a file added there is listed without a code change
        assert path.name in msg, msg


def test_overrides_win_and_are_validated(tmp_path):
    spec = load_space(write_space(tmp_path, tiny_space()))
    apply_overrides(spec, {"epochs": 1, "num_samples": 7, "dataset": "other", "max_concurrent": 3})
    assert spec.fixed["epochs"] == 1 and spec.scheduler.max_epochs == 1 and spec.scheduler.grace_period == 1
    assert spec.search.num_samples == 7 and spec.search.max_concurrent == 3 and spec.fixed["dataset"] == "other"
    with pytest.raises(SpaceError, match="search.num_samples"):
        apply_overrides(spec, {"num_samples": 0})


def test_the_search_command_splits_by_study_from_the_command_line(tmp_path, capsys):
    # The leak sentence of the console and the report points the user to --split-by study: the search takes it.
    from tune_ph.commands import search as search_cli

    args = search_cli.parse_args(["--space", str(write_space(tmp_path, tiny_space())), "--split-by", "study"])
    overrides = search_cli.overrides_of(args)
    assert overrides["split_by"] == "study" and "split_seed" not in overrides
    spec = apply_overrides(load_space(args.space), overrides)
    assert spec.fixed["split_by"] == "study"
    with pytest.raises(SystemExit):
        search_cli.parse_args(["--space", "x.yaml", "--split-by", "genus"])
    assert "invalid choice: 'genus'" in capsys.readouterr().err


def _suggestions(spec, n=12, seed=0):
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=3))
    space = OptunaSpace(spec.params)
    out = []
    for i in range(n):
        trial = study.ask()
        config = space(trial)
        study.tell(trial, float(config.get("learning_rate", 0.0)) + i * 1e-6)
        out.append((config, trial.params))
    return out


def test_conditional_parameter_is_only_suggested_when_it_applies():
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    spec = parse_space(tiny_space())
    seen = set()
    for config, params in _suggestions(spec):
        seen.add(config["head"])
        # TPE itself sees the conditional parameter only for MLP heads (define-by-run), not filled in afterwards.
        assert ("head_dropout" in params) == (config["head"] == "mlp2")
        assert ("head_dropout" in config) == (config["head"] == "mlp2")
        assert 1e-4 <= config["learning_rate"] <= 3e-3
    assert seen == {"linear", "mlp2"}


def test_per_model_batch_sizes():
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    spec = load_space(ROOT / "search_spaces" / "sizes.yaml")
    allowed = {m: p for m, p in spec.params["batch_size"].values.items()}
    for config, params in _suggestions(spec, n=15):
        model = config["model"]
        assert config["batch_size"] in allowed[model].args
        assert f"batch_size__{model}" in params  # a separate TPE dimension per size
        assert config["gradient_checkpointing"] == (model == "hyenadna-medium-160k-seqlen")
        assert spec.gpus_for(model) == {"hyenadna-medium-160k-seqlen": 1.0, "hyenadna-small-32k-seqlen": 0.5}.get(
            model, 0.25
        )


@pytest.mark.usefixtures("pretrained_here")
@pytest.mark.parametrize("name", ["quick", "heads", "sizes", "pretrained"])
def test_saved_settings_round_trip(name, tmp_path):
    """--resume re-reads the saved settings: they must parse back to the same search (overrides included)."""
    import json

    spec = apply_overrides(load_space(ROOT / "search_spaces" / f"{name}.yaml"), {"num_samples": 3, "head": "linear"})
    assert "head" not in spec.params and spec.fixed["head"] == "linear"
    again = parse_space(json.loads(json.dumps(spec.to_dict())), "saved.json")
    assert again.fixed == spec.fixed and again.search == spec.search and again.resources == spec.resources
    assert again.scheduler == spec.scheduler and again.name == spec.name
    assert set(again.params) == set(spec.params)


def test_per_model_values_with_a_fixed_model_resolve_to_that_model(tmp_path):
    """`per: model` with the model fixed (the README's example): the fixed model's entry is the parameter."""
    import json

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    raw = {
        "name": "example",
        "fixed": {"dataset": "demo", "model": "hyenadna-tiny-1k-seqlen", "epochs": 8},
        "space": {
            "head": {"choice": ["linear", "mlp2"]},
            "batch_size": {"per": "model", "values": {"hyenadna-tiny-1k-seqlen": {"choice": [8, 16]}}},
        },
    }
    spec = parse_space(raw, "example.yaml")
    config = OptunaSpace(spec.trial_params())(optuna.create_study().ask())
    assert config["batch_size"] in (8, 16)
    again = parse_space(json.loads(json.dumps(spec.to_dict())), "saved.json")  # what --resume reads
    assert set(again.params) == {"head", "batch_size"}


def test_values_per_head_follow_the_head_each_trial_draws():
    """`per: head` (realistic.yaml's abundance): trees get their one value, untouched by TPE; the MLP's entry is
    its own TPE dimension."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    per_head = {"per": "head", "values": {"linear": "relative", "mlp2": {"choice": ["clr", "presence"]}}}
    spec = parse_space(tiny_space(space__abundance=per_head))
    seen = set()
    for config, params in _suggestions(spec, n=16):
        seen.add((config["head"], config["abundance"]))
        assert ("abundance__mlp2" in params) == (config["head"] == "mlp2")
        assert not any(name.startswith("abundance") and name != "abundance__mlp2" for name in params)
        if config["head"] == "linear":
            assert config["abundance"] == "relative"
    assert {head for head, _ in seen} == {"linear", "mlp2"} and seen - {("linear", "relative")} <= {
        ("mlp2", "clr"),
        ("mlp2", "presence"),
    }
    shipped = load_space(ROOT / "search_spaces" / "realistic.yaml").params["abundance"]
    assert shipped.per == "head" and shipped.values["trees"].args == "relative"


def test_values_per_head_with_the_head_fixed_resolve_to_its_entry(tmp_path):
    per_head = {"per": "head", "values": {"linear": "relative", "mlp2": {"choice": ["clr", "presence"]}}}
    spec = apply_overrides(parse_space(tiny_space(space__abundance=per_head)), {"head": "linear"})
    assert "abundance" not in spec.params and spec.fixed["abundance"] == "relative"
    spec = apply_overrides(parse_space(tiny_space(space__abundance=per_head)), {"head": "mlp2"})
    assert spec.params["abundance"].args == ["clr", "presence"] and "abundance" not in spec.fixed


@pytest.mark.parametrize(
    "per_values, where, problem",
    [
        ({"per": "haed", "values": {"linear": "clr"}}, "space.abundance.per", "did you mean 'head'"),
        ({"per": "learning_rate", "values": {"0.1": "clr"}}, "space.abundance.per", "not searched with choice"),
        ({"per": "head", "values": {"linear": "clr"}}, "space.abundance.values", "no value for head mlp2"),
        (
            {"per": "head", "values": {"linear": "clr", "mlp2": "clr", "mlp3": "clr"}},
            "space.abundance.values",
            "mlp3 is not a possible head; possible: linear, mlp2",
        ),
        ({"per": "head", "values": {"linear": "clr", "mlp2": "sqrt"}}, "space.abundance.values.mlp2", "sqrt"),
        (
            {"per": "head", "values": {"linear": "clr", "mlp2": {"choice": ["clr"], "when": {"head_dropout": [0]}}}},
            "space.abundance.values.mlp2.when",
            "beside `per`",
        ),
    ],
)
def test_values_per_field_name_the_key_and_the_fix(tmp_path, per_values, where, problem):
    msg = _error(tmp_path, tiny_space(space__abundance=per_values))
    assert where in msg and problem in msg, msg


def test_a_per_may_not_name_another_per(tmp_path):
    from tune_ph.search.spec import default_of

    per_model = {"per": "model", "values": {default_of("model"): {"choice": ["linear", "mlp2"]}}}
    per_head = {"per": "head", "values": {"linear": "clr", "mlp2": "relative"}}
    msg = _error(tmp_path, tiny_space(space__head=per_model, space__abundance=per_head))
    assert "space.abundance.per" in msg and "head itself takes values per model" in msg, msg


def test_values_per_a_true_false_setting_survive_the_saved_settings():
    """JSON writes YAML's true/null keys as "true"/"null": --resume must read them back as the same entries."""
    import json

    space = tiny_space(
        space__freeze_backbone={"choice": [True, False]},
        space__learning_rate={
            "per": "freeze_backbone",
            "values": {True: {"loguniform": [1e-3, 1e-2]}, False: {"loguniform": [1e-5, 1e-4]}},
        },
    )
    spec = apply_overrides(parse_space(space), {})
    again = apply_overrides(parse_space(json.loads(json.dumps(spec.to_dict())), "saved.json"), {})
    for each in (spec, again):
        for config, _ in _suggestions(each, n=8):
            low = 1e-3 if config["freeze_backbone"] else 1e-5
            assert low <= config["learning_rate"] <= low * 10


def test_a_per_setting_goes_with_the_setting_a_fixed_value_rules_out():
    """head is searched only for clusters; with mean_prediction fixed neither head nor abundance per head is drawn
    (before: parsing kept abundance, then the next validation asked for an entry for head's default)."""
    space = tiny_space(
        fixed__aggregation="mean_prediction",
        space__head={"choice": ["linear", "mlp2"], "when": {"aggregation": ["clusters"]}},
        space__abundance={"per": "head", "values": {"linear": "clr", "mlp2": "relative"}},
    )
    space["space"].pop("head_dropout")
    spec = apply_overrides(parse_space(space), {})
    assert set(spec.params) == {"learning_rate"} and "abundance" not in spec.fixed


def test_model_override_on_a_per_model_space():
    spec = apply_overrides(load_space(ROOT / "search_spaces" / "sizes.yaml"), {"model": "hyenadna-small-32k-seqlen"})
    assert "model" not in spec.params and spec.params["batch_size"].args == [2, 4]
    assert spec.fixed["gradient_checkpointing"] is False  # a per-model scalar became a fixed value
    with pytest.raises(SpaceError, match="space.batch_size.values: no value for model hyenadna-large-1m-seqlen"):
        apply_overrides(load_space(ROOT / "search_spaces" / "sizes.yaml"), {"model": "hyenadna-large-1m-seqlen"})


def test_scheduler_settings_are_explicit(tmp_path):
    """Tuner, stop reasons and the report read one set of values, defaults included."""
    space = tiny_space()
    del space["scheduler"]
    del space["fixed"]["epochs"]
    spec = load_space(write_space(tmp_path, space))
    assert spec.scheduler == SchedulerSettings(max_epochs=10, grace_period=1, reduction_factor=2)
    assert spec.to_dict()["scheduler"] == {"max_epochs": 10, "grace_period": 1, "reduction_factor": 2}


def test_settings_defaults_come_from_the_settings_fields(tmp_path):
    space = tiny_space()
    for section in ("search", "resources"):
        del space[section]
    spec = load_space(write_space(tmp_path, space))
    assert spec.search == SearchSettings(num_samples=10, seed=0, max_concurrent=1, metric="val_loss")
    assert spec.resources == ResourceSettings(cpus_per_trial=1, gpus_per_trial=0)
    assert spec.to_dict()["search"] == {"num_samples": 10, "seed": 0, "max_concurrent": 1, "metric": "val_loss"}


def test_settings_flags_are_derived_from_the_settings_fields(capsys):
    from tune_ph.commands import search as search_cli

    argv = ["--num-samples", "4", "--seed", "7", "--max-concurrent", "2", "--cpus-per-trial", "1.5"]
    args = search_cli.parse_args([*argv, "--gpus-per-trial", "0.25", "--epochs", "3"])
    assert search_cli.overrides_of(args) == {
        "num_samples": 4,
        "seed": 7,
        "max_concurrent": 2,
        "cpus_per_trial": 1.5,
        "gpus_per_trial": 0.25,
        "epochs": 3,
    }
    assert search_cli.overrides_of(search_cli.parse_args([])) == {}  # not given: the file's values stay
    with pytest.raises(SystemExit):
        search_cli.parse_args(["--help"])
    usage = " ".join(capsys.readouterr().out.split())
    assert "--seed SEED seed of the search's TPE sampler (Optuna)" in usage and "not the training seed" in usage
    assert "(YAML: search.num_samples)" in usage and "(YAML: resources.gpus_per_trial)" in usage


@pytest.mark.parametrize(
    ("overrides", "key", "problem"),
    [
        ({"max_concurrent": 0}, "search.max_concurrent", "must be >= 1, got 0"),
        ({"seed": 2**32}, "search.seed", "must be >= 0 and below 2**32"),
        ({"cpus_per_trial": 0.0}, "resources.cpus_per_trial", "must be > 0"),
        ({"gpus_per_trial": 1.5}, "resources.gpus_per_trial", "must be a fraction in [0, 1] or a whole number"),
    ],
)
def test_flag_values_meet_the_files_rules(tmp_path, overrides, key, problem):
    spec = load_space(write_space(tmp_path, tiny_space()))
    with pytest.raises(SpaceError) as info:
        apply_overrides(spec, overrides)
    assert f"{key}: {problem}" in str(info.value)


def test_yaml_settings_are_type_checked_by_their_fields(tmp_path):
    msg = _error(tmp_path, tiny_space(search__num_samples="ten"))
    assert "search.num_samples" in msg and "integer" in msg
    msg = _error(tmp_path, tiny_space(scheduler__reduction_factor=1))
    assert "scheduler.reduction_factor: must be > 1, got 1" in msg
    msg = _error(tmp_path, tiny_space(search__metric="val_accuracy"))
    assert "search.metric: unknown metric 'val_accuracy'; allowed: val_loss" in msg
    gpus = {"per": "model", "values": {"hyenadna-tiny-1k-seqlen": 2.5}}
    msg = _error(tmp_path, tiny_space(resources__gpus_per_trial=gpus))
    assert "resources.gpus_per_trial.values.hyenadna-tiny-1k-seqlen: must be a fraction" in msg
