"""The study spec: good specs load typed and resolved; bad ones fail with every problem at once."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from hpo import spec
from hpo.errors import SpecError
from hpo.spec import AshaSpec, CategoricalParam, FloatParam, IntParam, NoSchedule
from tests.conftest import small_spec


def _base(tmp_path: Path, **overrides) -> dict:
    return yaml.safe_load(small_spec(tmp_path, **overrides).read_text())


def _problems(tmp_path: Path, data) -> list[str]:
    with pytest.raises(SpecError) as e:
        spec.parse(data, "s.yaml", str(tmp_path))
    return e.value.problems


def test_good_spec_loads_typed_and_resolved(tmp_path):
    s = spec.load(small_spec(tmp_path))
    assert s.name == "small" and s.model == spec.TINY_MODEL
    assert s.data.path == str((tmp_path / "data.jsonl").resolve())
    assert isinstance(s.space.learning_rate, FloatParam) and s.space.learning_rate.log
    assert isinstance(s.space.batch_size, CategoricalParam) and s.space.batch_size.choices == [8, 16]
    assert isinstance(s.space.epochs, IntParam)
    assert isinstance(s.schedule, AshaSpec) and s.schedule.grace_period == 0.25
    assert s.max_epochs == 2.0 and s.asha_max_t() == 2.0


def test_relative_paths_resolve_against_the_spec_folder(tmp_path, monkeypatch):
    sub = tmp_path / "studies"
    sub.mkdir()
    path = small_spec(sub, data={"validation_path": "data.jsonl"})
    monkeypatch.chdir(tmp_path)  # the current folder must not matter
    s = spec.load(Path("studies") / path.name)
    assert s.data.path == str(sub.resolve() / "data.jsonl")
    assert s.data.validation_path == s.data.path


def test_fixed_and_searched_parameters(tmp_path):
    s = spec.load(small_spec(tmp_path, space={"weight_decay": 0.01, "dropout": 0.1, "epochs": 1}))
    assert s.space.fixed() == {"epochs": 1, "dropout": 0.1, "weight_decay": 0.01}
    assert set(s.space.searched()) == {"learning_rate", "batch_size"}
    assert isinstance(s.space.fixed()["epochs"], int)


def test_defaults_fill_an_absent_space(tmp_path):
    data = _base(tmp_path)
    del data["space"], data["schedule"]
    s = spec.parse(data, "s.yaml", str(tmp_path))
    assert s.space.searched() == {} and set(s.space.fixed()) == set(spec.SEARCHABLE)
    assert isinstance(s.schedule, AshaSpec)


@pytest.mark.parametrize("form", ["none", {"type": "none"}])
def test_schedule_none_in_both_forms(tmp_path, form):
    s = spec.parse({**_base(tmp_path), "schedule": form}, "s.yaml", str(tmp_path))
    assert isinstance(s.schedule, NoSchedule)
    assert s.asha_max_t() == s.max_epochs


def test_asha_without_type_is_asha(tmp_path):
    s = spec.parse({**_base(tmp_path), "schedule": {"grace_period": 0.5}}, "s.yaml", str(tmp_path))
    assert isinstance(s.schedule, AshaSpec) and s.schedule.grace_period == 0.5


def test_pasha_takes_ashas_settings_and_evaluates_at_its_rungs(tmp_path):
    form = {"type": "pasha", "grace_period": 0.25, "reduction_factor": 2}
    s = spec.parse({**_base(tmp_path), "schedule": form}, "s.yaml", str(tmp_path))
    assert s.schedule.type == "pasha" and s.schedule.grace_period == 0.25
    assert s.asha_rungs() == [0.25, 0.5, 1.0][: len(s.asha_rungs())]
    assert s.eval_epochs() == [*s.asha_rungs(), s.asha_max_t()]


def test_name_override_and_yaml_exponents(tmp_path):
    path = small_spec(tmp_path)
    text = path.read_text().replace("0.0001", "1e-4")  # PyYAML reads 1e-4 as a string
    path.write_text(text)
    s = spec.load(path, name="other")
    assert s.name == "other" and s.space.learning_rate.low == pytest.approx(1e-4)


def test_stored_json_round_trip_needs_no_files(tmp_path):
    s = spec.load(small_spec(tmp_path))
    (tmp_path / "data.jsonl").unlink()  # a stored spec must reload even if the data moved
    assert spec.from_json(s.to_json()) == s


def test_every_problem_reported_at_once_with_field_paths(tmp_path):
    data = _base(tmp_path)
    data["space"] = {
        "learning_rate": {"type": "float", "low": 0.1, "high": 0.01},
        "dropout": 2,
        "momentum": 0.9,
    }
    data["sampler"] = "bayes"
    data["data"] = {**data["data"], "path": "nope.jsonl"}
    problems = _problems(tmp_path, data)
    assert len(problems) == 5, problems
    text = "\n".join(problems)
    for needle in (
        "space.learning_rate: low (0.1) must be <= high (0.01)",
        "space.dropout:",
        "space.momentum: unknown key",
        "sampler:",
        "data.path: file not found",
    ):
        assert needle in text


def _one_problem(tmp_path, change: dict, needle: str) -> None:
    """``change`` merged into the base spec (mappings one level deep) gives one problem, naming ``needle``."""
    data = _base(tmp_path)
    for key, value in change.items():
        data[key] = (
            {**data[key], **value} if isinstance(value, dict) and isinstance(data.get(key), dict) else value
        )
    problems = _problems(tmp_path, data)
    assert len(problems) == 1, problems
    assert needle in problems[0], problems


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        (
            {"space": {"learning_rate": {"type": "float", "low": 0.0, "high": 0.1, "log": True}}},
            "space.learning_rate: log scale needs low > 0",
        ),
        ({"space": {"learning_rate": "fast"}}, "space.learning_rate:"),
        ({"space": {"batch_size": 8.5}}, "space.batch_size:"),
        ({"space": {"batch_size": True}}, "got a boolean"),
        ({"space": {"batch_size": {"type": "categorical", "choices": [8, True]}}}, "got a boolean"),
        ({"space": {"batch_size": {"type": "categorical", "choices": []}}}, "space.batch_size.choices"),
        ({"space": {"epochs": {"type": "float", "low": 1, "high": 2}}}, "search it with type: int"),
        ({"space": {"dropout": {"low": 0, "high": 0.1}}}, "needs type: float, int or categorical"),
        ({"space": {"dropout": {"type": "uniform", "low": 0, "high": 0.1}}}, "needs type"),
        ({"space": {"learning_rate": 2.0}}, "0 < learning_rate < 1"),
        ({"space": {"batch_size": {"type": "int", "low": 0, "high": 8}}}, "an integer >= 1"),
        ({"schedule": "hyperband"}, "schedule: use asha"),
        ({"schedule": {"type": "pashaa"}}, "pasha (the same settings, type: pasha) or none"),
        ({"schedule": {"type": "asha", "grace_period": 3, "max_t": 1}}, "grace_period (3.0) must be <="),
        ({"schedule": {"type": "asha", "reduction_factor": 1}}, "schedule.reduction_factor"),
        ({"objective": {"metric": "eval_loss", "direction": "maximize"}}, "must be minimized"),
        ({"data": {"format": "parquet"}}, "data.format"),
        ({"data": {"block_size": 4}}, "data.block_size"),
        ({"data": {"validation_fraction": 1.5}}, "data.validation_fraction"),
        ({"data": {"path": "."}}, "is a folder"),
        ({"model": "./no-such-model"}, "model directory not found"),
        ({"model": "a/b/c"}, "model directory not found"),
        ({"model": "hpo:big"}, "unknown hpo model"),
        ({"name": "a b"}, "name: use 1-100 letters"),
        ({"resources": {"concurrency": 0}}, "resources.concurrency"),
        ({"keep_top_k": 0}, "keep_top_k"),
        ({"seed": "x"}, "seed:"),
        ({"training": {"eval_every": 2}}, "training.eval_every"),
        ({"foo": 1}, "foo: unknown key"),
    ],
)
def test_bad_field(tmp_path, change, needle):
    _one_problem(tmp_path, change, needle)


def test_model_folder_needs_a_config(tmp_path):
    (tmp_path / "mymodel").mkdir()
    assert "has no config.json" in _problems(tmp_path, {**_base(tmp_path), "model": "mymodel"})[0]
    (tmp_path / "mymodel" / "config.json").write_text("{}")
    s = spec.parse({**_base(tmp_path), "model": "mymodel"}, "s.yaml", str(tmp_path))
    assert s.model == str((tmp_path / "mymodel").resolve())


def test_a_hub_id_is_kept_as_is(tmp_path):
    s = spec.parse({**_base(tmp_path), "model": "openai-community/gpt2"}, "s.yaml", str(tmp_path))
    assert s.model == "openai-community/gpt2"


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("", "the file is empty"),
        ("- a\n- b\n", "must be a mapping of sections"),
        ("name: [x\n", "line 2, column 1: not valid YAML"),
        ("name: a\nname: b\n", "line 2, column 1: not valid YAML (duplicate key 'name'"),
        ("name: a\n\tmodel: b\n", "not valid YAML"),
    ],
)
def test_bad_yaml_names_the_line(tmp_path, text, needle):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(SpecError) as e:
        spec.load(path)
    assert needle in str(e.value) and str(e.value).startswith(str(path))


def test_missing_spec_file_and_folder(tmp_path):
    with pytest.raises(SpecError, match="file not found"):
        spec.load(tmp_path / "nope.yaml")
    with pytest.raises(SpecError, match="is a folder"):
        spec.load(tmp_path)


def test_spec_error_message_is_one_line_per_problem():
    assert str(SpecError("s.yaml", ["a: bad"])) == "s.yaml: a: bad"
    assert str(SpecError("s.yaml", ["a: bad", "b: bad"])) == "s.yaml: 2 problems:\n  - a: bad\n  - b: bad"


# ---------------------------------------------------------------- training options, objective, samplers


def test_training_options_fixed_in_training_or_searched_in_space(tmp_path):
    s = spec.load(
        small_spec(
            tmp_path,
            training={
                "max_grad_norm": 0.5,
                "gradient_accumulation_steps": 2,
                "early_stopping_patience": 3,
            },
            space={
                "warmup_ratio": {"type": "float", "low": 0.0, "high": 0.2},
                "lr_scheduler": {"type": "categorical", "choices": ["linear", "constant_with_warmup"]},
                "label_smoothing": 0.1,
            },
        )
    )
    assert s.training.gradient_accumulation_steps == 2 and s.training.early_stopping_patience == 3
    assert {"warmup_ratio", "lr_scheduler"} <= set(s.space.searched())
    assert s.space.fixed()["label_smoothing"] == 0.1 and "l1" not in s.space.fixed()
    assert spec.from_json(s.to_json()) == s  # as stored with the study


def test_token_accuracy_objective_is_maximized_by_default(tmp_path):
    s = spec.parse({**_base(tmp_path), "objective": {"metric": "token_accuracy"}}, "s.yaml", str(tmp_path))
    assert s.objective.direction == "maximize"
    assert spec.parse(_base(tmp_path), "s.yaml", str(tmp_path)).objective.direction == "minimize"


def test_enqueue_and_samplers(tmp_path):
    s = spec.load(
        small_spec(tmp_path, sampler="cmaes", enqueue=[{"learning_rate": 0.001, "batch_size": 8}, {}])
    )
    assert s.sampler == "cmaes" and s.enqueue[0] == {"learning_rate": 0.001, "batch_size": 8}
    assert spec.from_json(s.to_json()) == s


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"objective": {"metric": "token_accuracy", "direction": "minimize"}}, "must be maximized"),
        ({"training": {"lr_scheduler": "step"}}, "training.lr_scheduler"),
        ({"training": {"warmup_ratio": 1.0}}, "training.warmup_ratio"),
        ({"training": {"gradient_accumulation_steps": 0}}, "training.gradient_accumulation_steps"),
        ({"training": {"label_smoothing": -0.1}}, "training.label_smoothing"),
        ({"training": {"l1": 2}}, "training.l1"),
        ({"training": {"early_stopping_patience": 0}}, "training.early_stopping_patience"),
        ({"space": {"lr_scheduler": "step"}}, "lr_scheduler must be one of linear, cosine"),
        (
            {"space": {"lr_scheduler": {"type": "categorical", "choices": ["cosine", "exp"]}}},
            "value 'exp' is not allowed",
        ),
        (
            {"space": {"lr_scheduler": {"type": "float", "low": 0, "high": 1}}},
            "search it with type: categorical",
        ),
        ({"space": {"gradient_accumulation_steps": {"type": "float", "low": 1, "high": 2}}}, "whole number"),
        ({"space": {"label_smoothing": 1.5}}, "0 <= label_smoothing < 1"),
        (
            {
                "space": {"warmup_ratio": {"type": "float", "low": 0, "high": 0.1}},
                "training": {"warmup_ratio": 0.1},
            },
            "training: warmup_ratio set both here and in space",
        ),
        ({"sampler": "grid"}, "grid needs a finite space; search learning_rate, dropout"),
        ({"enqueue": [{"momentum": 0.9}]}, "enqueue: [0].momentum: not a searched parameter"),
        ({"enqueue": [{"batch_size": 12}]}, "[0].batch_size: 12 is not one of the choices [8, 16]"),
        ({"enqueue": [{"learning_rate": 0.5}]}, "[0].learning_rate: 0.5 is outside [0.0001, 0.01]"),
        ({"enqueue": [{"epochs": 1.5}]}, "[0].epochs: 1.5 is not a whole number"),
        ({"enqueue": [{"weight_decay": 0.1}]}, "weight_decay: not a searched parameter"),
        ({"data": {"format": "datasets"}}, "format datasets reads a save_to_disk folder"),
        ({"data": {"format": "hub", "path": "not a/valid id!"}}, "a Hugging Face dataset id looks like"),
        ({"data": {"overlong": "wrap"}}, "data.overlong"),
        ({"data": {"chat_template": "chatml"}}, "data.chat_template"),
        ({"space": {"lora_r": {"type": "int", "low": 4, "high": 16}}}, "space.lora_r needs an adapter"),
        (
            {"space": {"lora_alpha": {"type": "categorical", "choices": [8, 16]}}, "adapter": {"alpha": 16}},
            "adapter: alpha set both here and in space (lora_alpha)",
        ),
        ({"adapter": {"type": "dora"}}, "adapter.type"),
        ({"adapter": {"r": 0}}, "adapter.r"),
        ({"space": {"lora_r": 0.5}, "adapter": {}}, "space.lora_r"),
    ],
)
def test_bad_training_option_objective_sampler_or_data(tmp_path, change, needle):
    _one_problem(tmp_path, change, needle)


def test_lora_adapter_with_a_searched_rank(tmp_path):
    s = spec.load(
        small_spec(
            tmp_path,
            adapter={"type": "lora", "alpha": 32, "target_modules": ["c_attn"]},
            space={"lora_r": {"type": "categorical", "choices": [4, 8]}},
        )
    )
    assert s.adapter is not None and s.adapter.alpha == 32 and s.adapter.r == 8
    assert "lora_r" in s.space.searched() and spec.from_json(s.to_json()) == s
    assert spec.load(small_spec(tmp_path)).adapter is None


def test_text_and_datasets_formats_take_folders_and_hub_takes_an_id(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.txt").write_text("hello")
    s = spec.parse({**_base(tmp_path), "data": {"format": "text", "path": "docs"}}, "s.yaml", str(tmp_path))
    assert s.data.path == str((tmp_path / "docs").resolve())
    s = spec.parse({**_base(tmp_path), "data": {"format": "hub", "path": "org/set"}}, "s.yaml", str(tmp_path))
    assert s.data.path == "org/set"
    problems = _problems(tmp_path, {**_base(tmp_path), "data": {"format": "jsonl", "path": "docs"}})
    assert "is a folder" in problems[0] and "format text or datasets" in problems[0]
