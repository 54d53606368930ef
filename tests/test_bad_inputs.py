"""Bad input, everywhere, through the real CLI: each case must end with one line on stderr naming
the file / field / line and the fix, exit code 2 (1 for runtime faults such as an unreachable
database), no traceback, no password, and nothing half-written: the folder's files (no new
SQLite file, no partial export) and the storage's studies, trials and attributes are unchanged."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import sqlalchemy
from optuna.trial import TrialState, create_trial

from hpo import space, storage
from hpo import spec as spec_mod
from tests.conftest import run_cli, small_spec

SECRET = "s3cret-pw"
# a Hub id found nowhere: no Hub (HF_HUB_OFFLINE) and an empty Hugging Face cache
NO_HUB = {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": "/nonexistent/hf-cache"}
HUB_MISS = ("model 'gpt2': not a local folder, not in the Hugging Face cache, and the Hub is unreachable",)
GOOD_ROW = {"prompt": "where is my order?", "completion": "It ships tomorrow."}


@dataclass
class Case:
    """One bad input: ``make(tmp)`` builds the files and returns the CLI arguments."""

    id: str
    make: Callable[[Path], list[str]]
    needles: tuple[str, ...]
    code: int = 2
    env: dict[str, str] = field(default_factory=dict)
    postgres: bool = False  # the storage is a fresh PostgreSQL database holding study "small"


# ---------------------------------------------------------------- building blocks


def db(tmp: Path) -> str:
    return f"sqlite:///{tmp / 'hpo.db'}"


def create(tmp: Path, spec: Path | None = None, *extra: str) -> list[str]:
    return ["study", "create", str(spec or small_spec(tmp, rows=40)), "--storage", db(tmp), *extra]


def with_spec(**overrides) -> Callable[[Path], list[str]]:
    return lambda tmp: create(tmp, small_spec(tmp, rows=40, **overrides))


def with_yaml(text: str) -> Callable[[Path], list[str]]:
    def make(tmp: Path) -> list[str]:
        (tmp / "bad.yaml").write_text(text)
        return create(tmp, tmp / "bad.yaml")

    return make


def with_data(name: str, content: str | bytes, **data) -> Callable[[Path], list[str]]:
    """A valid spec whose data file is ``name`` holding ``content``."""

    def make(tmp: Path) -> list[str]:
        fmt = {"jsonl": "jsonl", "csv": "csv", "txt": "text"}[name.rsplit(".", 1)[1]]
        spec = small_spec(tmp, rows=40, data={"path": name, "format": fmt, **data})
        target = tmp / name
        target.write_bytes(content) if isinstance(content, bytes) else target.write_text(content)
        return create(tmp, spec)

    return make


def jsonl(*rows) -> str:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows)


def existing(tmp: Path, trials: int = 0, checkpoint: bool = True, **overrides) -> str:
    """Study "small" already in ``tmp/hpo.db``; with ``trials`` COMPLETE ones (fake checkpoints)."""
    url = db(tmp)
    spec = spec_mod.load(small_spec(tmp, rows=40, **overrides))
    storage.create(spec, url)
    study = storage.load("small", url)
    for n in range(trials):
        ckpt = tmp / "ckpts" / f"t{n}"
        if checkpoint:
            ckpt.mkdir(parents=True)
            (ckpt / "model.safetensors").write_bytes(b"w")
        study.add_trial(
            create_trial(
                state=TrialState.COMPLETE,
                value=1.0 + n,
                params={"learning_rate": 1e-3, "batch_size": 8, "epochs": 1, "dropout": 0.1},
                distributions=space.distributions(spec.space),
                user_attrs={"checkpoint": str(ckpt)},
            )
        )
    return url


def then(setup: Callable[[Path], object], args: Callable[[Path], list[str]]) -> Callable[[Path], list[str]]:
    def make(tmp: Path) -> list[str]:
        setup(tmp)
        return args(tmp)

    return make


def folder_with_file(tmp: Path) -> None:
    (tmp / "out").mkdir()
    (tmp / "out" / "mine.txt").write_text("keep")


# ---------------------------------------------------------------- the table

CASES = [
    # -- the spec file
    Case("spec-missing", lambda t: create(t, t / "nope.yaml"), ("nope.yaml", "file not found", "study YAML")),
    Case("spec-is-a-folder", lambda t: create(t, t), ("is a folder", "study YAML")),
    Case("yaml-malformed", with_yaml("name: x\ndata: {path: [d\n"), ("bad.yaml", "line 3", "not valid YAML")),
    Case(
        "yaml-duplicate-key", with_yaml("name: a\nname: b\n"), ("bad.yaml", "line 2", "duplicate key 'name'")
    ),
    Case("yaml-tab-indent", with_yaml("name: a\n\tmodel: b\n"), ("bad.yaml", "line 2", "not valid YAML")),
    Case("yaml-empty", with_yaml(""), ("bad.yaml", "the file is empty", "studies/demo.yaml")),
    Case("yaml-not-a-mapping", with_yaml("- name: a\n"), ("bad.yaml", "must be a mapping", "got list")),
    # -- fields: unknown keys, wrong types, impossible ranges
    Case("unknown-top-key", with_spec(learning_rate=0.1), ("learning_rate: unknown key", "spelling")),
    Case("unknown-space-key", with_spec(space={"momentum": 0.9}), ("space.momentum: unknown key",)),
    Case(
        "unknown-nested-key",
        with_spec(schedule={"type": "asha", "grace": 1}),
        ("schedule.grace: unknown key",),
    ),
    Case(
        "type-string-for-float", with_spec(space={"learning_rate": "fast"}), ("space.learning_rate", "'fast'")
    ),
    Case("type-fraction-for-int", with_spec(space={"batch_size": 8.5}), ("space.batch_size", "8.5")),
    Case("type-bool-for-int", with_spec(space={"epochs": True}), ("space.epochs", "boolean")),
    Case(
        "type-mapping-for-section",
        with_spec(data="data.jsonl"),
        ("data: Input should be a valid dictionary",),
    ),
    Case(
        "range-low-above-high",
        with_spec(space={"dropout": {"type": "float", "low": 0.3, "high": 0.1}}),
        ("space.dropout: low (0.3) must be <= high (0.1)",),
    ),
    Case(
        "range-log-low-zero",
        with_spec(space={"learning_rate": {"type": "float", "low": 0.0, "high": 0.1, "log": True}}),
        ("space.learning_rate: log scale needs low > 0",),
    ),
    Case("range-out-of-bounds", with_spec(space={"dropout": 1.5}), ("space.dropout", "0 <= dropout < 1")),
    Case(
        "param-without-type",
        with_spec(space={"dropout": {"low": 0, "high": 0.2}}),
        ("space.dropout", "type: float, int or categorical"),
    ),
    Case(
        "param-no-choices",
        with_spec(space={"batch_size": {"type": "categorical", "choices": []}}),
        ("space.batch_size.choices",),
    ),
    Case(
        "param-float-epochs",
        with_spec(space={"epochs": {"type": "float", "low": 1, "high": 2}}),
        ("space.epochs", "type: int or categorical"),
    ),
    Case("unknown-sampler", with_spec(sampler="bayes"), ("sampler", "'nsga2' or 'cqr'", "'bayes'")),
    Case("unknown-schedule", with_spec(schedule="hyperband"), ("schedule: use asha", "or none")),
    Case(
        "grace-above-max",
        with_spec(schedule={"type": "asha", "grace_period": 3, "max_t": 1}),
        ("schedule", "grace_period (3.0) must be <= max_t (1.0)"),
    ),
    Case(
        "maximize-a-loss",
        with_spec(objective={"metric": "eval_loss", "direction": "maximize"}),
        ("objective", "must be minimized"),
    ),
    Case("unknown-metric", with_spec(objective={"metric": "rouge"}), ("objective", "unknown metric 'rouge'")),
    Case(
        "generated-metric-without-generate",
        with_spec(objective={"metric": "rouge_l"}),
        ("evaluation", "objective rouge_l is scored on generated answers", "generate:"),
    ),
    Case(
        "custom-metric-file-missing",
        with_spec(evaluation={"generate": {"metric": {"python": "metrics.py:score"}}}),
        ("evaluation.generate.metric.python", "metrics.py (paths are relative", "file not found"),
    ),
    Case(
        "custom-metric-function-missing",
        then(
            lambda t: (t / "metrics.py").write_text("def other(p, r):\n    return 1.0\n"),
            with_spec(evaluation={"generate": {"metric": {"python": "metrics.py:score"}}}),
        ),
        ("evaluation.generate.metric.python", "defines no function score"),
    ),
    Case(
        "generate-on-text-data",
        then(
            lambda t: (t / "docs.jsonl").write_text(jsonl(*({"text": f"document {i}"} for i in range(40)))),
            with_spec(data={"path": "docs.jsonl"}, evaluation={"generate": {"samples": 8}}),
        ),
        ("evaluation.generate", "docs.jsonl holds plain text", "prompt/completion or chat data"),
    ),
    Case(
        "generate-on-text-format",
        then(
            lambda t: (t / "docs.txt").write_text("".join(f"document {i}\n" for i in range(40))),
            with_spec(data={"path": "docs.txt", "format": "text"}, evaluation={"generate": {}}),
        ),
        ("evaluation", "generate needs prompts and references"),
    ),
    Case(
        "unknown-data-format",
        with_spec(data={"format": "parquet"}),
        ("data.format", "'jsonl', 'csv', 'text', 'chat', 'datasets' or 'hub'"),
    ),
    Case("bad-name-option", lambda t: create(t, None, "--name", "my study"), ("name:", "letters, digits")),
    # -- data as hyperparameters: augmentation and settings bound to the space
    Case(
        "augment-unknown-op",
        with_spec(data={"augment": {"ops": {"shuffle": {"p": 0.1}}}}),
        ("data.augment.ops.shuffle: unknown operation", "word_dropout", "template"),
    ),
    Case(
        "augment-p-above-one",
        with_spec(data={"augment": {"ops": {"typo": {"p": 1.5}}}}),
        ("data.augment.ops.typo.p", "less than or equal to 1", "1.5"),
    ),
    Case(
        "augment-p-searched-outside-0-1",
        with_spec(
            data={"augment": {"ops": {"typo": {"p": {"param": "augment_p"}}}}},
            space={"augment_p": {"type": "float", "low": -0.1, "high": 0.2}},
        ),
        ("data.augment.ops.typo.p: space.augment_p can take -0.1", "greater than or equal to 0"),
    ),
    Case(
        "augment-param-not-in-space",
        with_spec(data={"augment": {"ops": {"typo": {"p": {"param": "augment_p"}}}}}),
        ("data.augment.ops.typo.p: {param: augment_p} names no parameter of space", "space.augment_p:"),
    ),
    Case(
        "augment-paraphrase-folder-missing",
        with_spec(data={"augment": {"ops": {"paraphrase": {"model": "para-model"}}}}),
        ("data.augment.ops.paraphrase.model: model folder not found", "para-model"),
    ),
    Case(
        "augment-paraphrase-not-a-model",
        then(
            lambda t: (t / "para").mkdir(),
            with_spec(data={"augment": {"ops": {"paraphrase": {"model": "para"}}}}),
        ),
        ("data.augment.ops.paraphrase.model:", "has no config.json", "save_pretrained"),
    ),
    Case(
        "augment-template-on-texts",
        with_data("d.txt", "one document\nanother document\n", augment={"ops": {"template": {"p": 0.5}}}),
        ("d.txt: data.augment.ops.template wraps prompts; the data holds texts",),
    ),
    Case(
        "mixture-source-missing-field",
        then(
            lambda t: (t / "b.jsonl").write_text(jsonl({"question": "where?", "answer": "here"})),
            with_spec(data={"path": None, "sources": [{"path": "data.jsonl"}, {"path": "b.jsonl"}]}),
        ),
        ("b.jsonl:1: no field 'prompt'", "data.prompt_field"),
    ),
    Case(
        "mixture-weights-all-zero",
        with_spec(
            data={
                "path": None,
                "sources": [
                    {"path": "data.jsonl", "weight": 0},
                    {"path": "data.jsonl", "name": "b", "weight": 0.0},
                ],
            }
        ),
        ("data: sources: every weight is 0", "weight > 0"),
    ),
    Case(
        "mixture-and-path",
        with_spec(data={"sources": [{"path": "data.jsonl"}]}),
        ("either data.path or data.sources",),
    ),
    Case(
        "mixture-source-file-missing",
        with_spec(data={"path": None, "sources": [{"path": "data.jsonl"}, {"path": "nope.jsonl"}]}),
        ("data.sources.1.path: file not found", "nope.jsonl"),
    ),
    Case(
        "mixture-weight-searched-negative",
        with_spec(
            data={"path": None, "sources": [{"path": "data.jsonl", "weight": {"param": "w"}}]},
            space={"w": {"type": "float", "low": -1, "high": 1}},
        ),
        ("data.sources.0.weight: space.w can take -1", "greater than or equal to 0"),
    ),
    Case(
        "mixture-objective-source-unknown",
        with_spec(data={"path": None, "sources": [{"path": "data.jsonl"}], "objective_source": "chats"}),
        ("objective_source 'chats' is none of the sources (data)",),
    ),
    Case(
        "block-size-searched-as-float",
        with_spec(
            data={"block_size": {"param": "block"}},
            space={"block": {"type": "float", "low": 64, "high": 128}},
        ),
        ("data.block_size: space.block is a float range", "type: int or categorical"),
    ),
    # -- files the spec points at
    Case("data-missing", with_spec(data={"path": "nope.jsonl"}), ("data.path: file not found", "nope.jsonl")),
    Case("data-is-a-folder", with_spec(data={"path": "."}), ("data.path", "is a folder")),
    Case(
        "validation-missing",
        with_spec(data={"validation_path": "val.jsonl"}),
        ("data.validation_path: file not found", "val.jsonl"),
    ),
    Case(
        "model-missing", with_spec(model="./models/none"), ("model: model directory not found", "models/none")
    ),
    Case(
        "model-not-a-model",
        then(lambda t: (t / "m").mkdir(), with_spec(model="m")),
        ("model:", "has no config.json", "save_pretrained"),
    ),
    Case(
        "model-unknown-builtin",
        with_spec(model="hpo:huge"),
        ("unknown hpo model 'hpo:huge'", "hpo model list"),
    ),
    Case(
        "model-folder-without-tokenizer",
        then(lambda t: (t / "m").mkdir() or (t / "m" / "config.json").write_text("{}"), with_spec(model="m")),
        ("model folder", "no tokenizer files", "save_pretrained"),
    ),
    Case(
        "model-hub-id-offline",
        with_spec(model="gpt2"),
        (*HUB_MISS, "HF_HUB_OFFLINE is set"),
        env=NO_HUB,
    ),
    Case(
        "model-hub-unresolvable",
        with_spec(model="openai-community/gpt2"),
        ("model 'openai-community/gpt2': not a local folder", "Hub is unreachable", "local folder"),
        env={"HF_ENDPOINT": "https://hub.invalid", "HF_HUB_CACHE": "/nonexistent/hf-cache"},
    ),
    Case("model-get-unknown", lambda t: ["model", "get", "smollm3"], ("unknown hpo model 'smollm3'", "list")),
    Case(
        "model-get-bad-dtype",
        lambda t: ["model", "get", "tiny-gpt2", "--dtype", "bfloat16"],
        ("--dtype bfloat16: tiny-gpt2 comes in float32",),
    ),
    Case(
        "run-model-hub-id-offline",
        then(
            lambda t: existing(t, model="gpt2"),
            lambda t: ["run", "--study", "small", "--trials", "1", "--storage", db(t)],
        ),
        HUB_MISS,
        env=NO_HUB,
    ),
    # -- data content: found by the dry run at create time
    Case(
        "jsonl-line-not-json",
        with_data("d.jsonl", jsonl(GOOD_ROW, {**GOOD_ROW, "prompt": "b"}, '{"prompt": "x", completion}')),
        ("d.jsonl:3: not valid JSON", "one JSON object"),
    ),
    Case(
        "jsonl-line-not-object",
        with_data("d.jsonl", jsonl(GOOD_ROW, "[1, 2]")),
        ("d.jsonl:2: expected a JSON object, got list",),
    ),
    Case(
        "jsonl-field-missing",
        with_data("d.jsonl", jsonl(GOOD_ROW, {"prompt": "q", "answer": "a"})),
        ("d.jsonl:2: no field 'completion'", "data.completion_field"),
    ),
    Case(
        "jsonl-renamed-fields",
        with_data("d.jsonl", jsonl(GOOD_ROW, {**GOOD_ROW, "prompt": "b"}), prompt_field="question"),
        ("d.jsonl:1: no field 'question'", "data.prompt_field"),
    ),
    Case(
        "csv-missing-columns",
        with_data("d.csv", "question,answer\nq,a\nq2,a2\n"),
        ("d.csv: missing column(s) prompt, completion", "columns: question, answer", "data.prompt_field"),
    ),
    Case(
        "csv-broken-line",
        with_data("d.csv", "prompt,completion\nq,a\nq2," + "x" * 200_000 + "\n"),
        ("d.csv:3: not valid CSV",),
    ),
    Case("data-not-utf8", with_data("d.jsonl", b'{"prompt": "\xff\xfe"}\n'), ("d.jsonl: not UTF-8", "UTF-8")),
    Case(
        "empty-after-cleaning",
        with_data("d.jsonl", jsonl({"prompt": " ", "completion": "a"}, {"prompt": "q", "completion": ""})),
        ("d.jsonl: no usable rows after cleaning (read 2: 2 empty, 0 duplicate)", "non-empty"),
    ),
    Case("empty-data-file", with_data("d.txt", ""), ("d.txt: no usable rows after cleaning (read 0",)),
    Case(
        "one-example-only",
        with_data("d.jsonl", jsonl(GOOD_ROW, GOOD_ROW)),
        ("need at least 2 examples", "data.validation_path"),
    ),
    # -- storage URLs and databases
    Case(
        "storage-not-a-url",
        lambda t: [*create(t)[:3], "--storage", "hpo.db"],
        ("'hpo.db' is not a database URL",),
    ),
    Case(
        "storage-unknown-kind",
        lambda t: [*create(t)[:3], "--storage", "nosql://x"],
        ("unknown database kind",),
    ),
    Case(
        "storage-missing-folder",
        lambda t: [*create(t)[:3], "--storage", f"sqlite:///{t}/no/such/dir/hpo.db"],
        ("folder", "does not exist", "create it"),
    ),
    Case(
        "storage-missing-driver",
        lambda t: [*create(t)[:3], "--storage", f"mysql://me:{SECRET}@127.0.0.1/db"],
        ("driver for mysql is not installed", "me:***@"),
    ),
    Case(
        "storage-bad-port",
        lambda t: [*create(t)[:3], "--storage", f"postgresql://me:{SECRET}@127.0.0.1:port/db"],
        ("malformed URL", "me:***@"),
    ),
    Case(
        "storage-unreachable-postgres",
        lambda t: [*create(t)[:3], "--storage", f"postgresql://me:{SECRET}@127.0.0.1:1/db"],
        ("me:***@127.0.0.1:1/db", "opening failed", "server is running"),
        code=1,
    ),
    Case(
        "storage-not-a-database",
        then(
            lambda t: (t / "notes.txt").write_text("hello"),
            lambda t: [*create(t)[:3], "--storage", f"sqlite:///{t}/notes.txt"],
        ),
        ("notes.txt", "file is not a database", "SQLite database"),
        code=1,
    ),
    Case(
        "storage-env-bad",
        lambda t: create(t)[:3],
        ("HPO_STORAGE", "is not a database URL"),
        env={"HPO_STORAGE": "not-a-url"},
    ),
    # -- studies that do not exist or already exist
    Case(
        "study-exists", then(existing, create), ("study 'small' already exists", "--name", "hpo study delete")
    ),
    Case("study-exists-postgres", create, ("study 'small' already exists",), postgres=True),
    Case(
        "show-unknown-study",
        then(existing, lambda t: ["study", "show", "nope", "--storage", db(t)]),
        ("no study 'nope'", "studies there: small"),
    ),
    Case(
        "show-without-storage",
        lambda t: ["study", "show", "small"],
        ("no study storage at sqlite:///hpo.db",),
    ),
    Case(
        "list-without-storage",
        lambda t: ["study", "list", "--storage", db(t)],
        ("no study storage", "hpo.db"),
    ),
    Case(
        "delete-unknown-study",
        then(existing, lambda t: ["study", "delete", "nope", "--yes", "--storage", db(t)]),
        ("no study 'nope'",),
    ),
    Case(
        "dashboard-without-storage",
        lambda t: ["dashboard", "--storage", db(t)],
        ("no study storage", "hpo study create"),
    ),
    # -- run
    Case(
        "run-zero-trials",
        then(existing, lambda t: ["run", "--trials", "0", "--storage", db(t)]),
        ("--trials",),
    ),
    Case(
        "run-unknown-study",
        then(existing, lambda t: ["run", "--study", "nope", "--trials", "1", "--storage", db(t)]),
        ("no study 'nope'",),
    ),
    Case("run-without-storage", lambda t: ["run", "--trials", "1"], ("no study storage", "hpo study create")),
    # -- export
    Case(
        "export-to-a-file",
        then(
            lambda t: (existing(t, 1), (t / "f.bin").write_text("x")),
            lambda t: ["export", "--out", str(t / "f.bin"), "--storage", db(t)],
        ),
        ("f.bin is a file", "folder path"),
    ),
    Case(
        "export-non-empty-folder",
        then(
            lambda t: (existing(t, 1), folder_with_file(t)),
            lambda t: ["export", "--out", str(t / "out"), "--storage", db(t)],
        ),
        ("is not empty", "--force"),
    ),
    Case(
        "export-no-complete-trial",
        then(existing, lambda t: ["export", "--out", str(t / "out"), "--storage", db(t)]),
        ("no COMPLETE trial", "hpo run"),
    ),
    Case(
        "export-unknown-trial",
        then(
            lambda t: existing(t, 2),
            lambda t: ["export", "--out", str(t / "out"), "--trial", "9", "--storage", db(t)],
        ),
        ("has no trial 9", "trials 0..1"),
    ),
    Case(
        "export-deleted-checkpoint",
        then(
            lambda t: existing(t, 1, checkpoint=False),
            lambda t: ["export", "--out", str(t / "out"), "--storage", db(t)],
        ),
        ("has no checkpoint", "keep_top_k"),
    ),
    Case(
        "export-unknown-study",
        then(
            existing, lambda t: ["export", "--out", str(t / "a" / "b"), "--study", "nope", "--storage", db(t)]
        ),
        ("no study 'nope'",),
    ),
]


def warm(tmp: Path, trials: int = 2, **overrides) -> list[str]:
    """``hpo study create`` of a study "new" warm-started from "small" (``trials`` COMPLETE ones)."""
    existing(tmp, trials)
    ws = {"study": "small", **overrides.pop("warm_start", {})}
    return create(tmp, small_spec(tmp, name="new", rows=40, warm_start=ws, **overrides))


# time budgets and warm starts (issue 19, parts 3 and 4)
CASES += [
    Case(
        "run-budget-negative",
        then(existing, lambda t: ["run", "--time-budget", "-1h", "--storage", db(t)]),
        ("--time-budget '-1h'", "not a positive duration", "90m, 2h or 3600s"),
    ),
    Case(
        "run-budget-garbage",
        then(existing, lambda t: ["run", "--time-budget", "2x", "--storage", db(t)]),
        ("--time-budget '2x'", "not a positive duration"),
    ),
    Case("spec-budget-negative", with_spec(budget={"hours": -1}), ("budget.hours", "greater than 0")),
    Case("spec-budget-empty", with_spec(budget={}), ("budget", "give hours or minutes")),
    Case(
        "warm-start-unknown-study",
        lambda t: warm(t, warm_start={"study": "nope"}),
        ("new.yaml: warm_start:", "no study 'nope'", "small"),
    ),
    Case(
        "warm-start-missing-storage",
        lambda t: warm(t, warm_start={"storage": f"sqlite:///{t}/old.db"}),
        ("warm_start:", "no study storage", "old.db"),
    ),
    Case(
        "warm-start-unreachable-storage",
        lambda t: warm(t, warm_start={"storage": f"postgresql://me:{SECRET}@127.0.0.1:1/db"}),
        ("warm_start:", "me:***@127.0.0.1:1/db", "opening failed"),
        code=1,
    ),
    Case(
        "warm-start-other-objective",
        lambda t: warm(t, objective={"metric": "token_accuracy"}),
        ("warm_start: study 'small'", "eval_loss (minimize)", "token_accuracy (maximize)", "same objective"),
    ),
    Case(
        "warm-start-param-outside",
        lambda t: warm(t, space={"learning_rate": {"type": "float", "low": 0.01, "high": 0.1}}),
        ("trial 0", "learning_rate=0.001 is outside the new range [0.01, 0.1]", "on_mismatch: drop"),
    ),
    Case(
        "warm-start-param-not-searched",
        lambda t: warm(t, space={"dropout": 0.1}),
        ("trial 0", "dropout is not searched by the new space", "on_mismatch: drop"),
    ),
    Case(
        "warm-start-nothing-finished",
        lambda t: warm(t, trials=0),
        ("warm_start: study 'small'", "no finished trial to import"),
    ),
    Case(
        "warm-start-bad-on-mismatch",
        lambda t: warm(t, warm_start={"on_mismatch": "ignore"}),
        ("warm_start.on_mismatch", "'refuse' or 'drop'"),
    ),
]


# ---------------------------------------------------------------- the checks


def _files(root: Path) -> dict[str, tuple[int, int] | None]:
    """Every file and folder under ``root`` (size, mtime); databases only by name: reading one may
    touch it, and its content is compared as studies instead."""
    out: dict[str, tuple[int, int] | None] = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if p.name.endswith(("-wal", "-shm", "-journal")):
            continue
        out[rel] = None if p.is_dir() or p.suffix == ".db" else (p.stat().st_size, p.stat().st_mtime_ns)
    return out


def _studies(url: str) -> list[tuple] | None:
    """Studies, with their trial and attribute counts, as the database holds them."""
    path = storage.sqlite_file(url)
    if path is not None and not path.is_file():
        return None
    eng = sqlalchemy.create_engine(url)
    try:
        with eng.connect() as c:
            return [
                tuple(r)
                for r in c.execute(
                    sqlalchemy.text(
                        "SELECT s.study_name, (SELECT count(*) FROM trials t WHERE t.study_id = s.study_id), "
                        "(SELECT count(*) FROM study_user_attributes a WHERE a.study_id = s.study_id) "
                        "FROM studies s ORDER BY s.study_name"
                    )
                )
            ]
    finally:
        eng.dispose()


def test_the_table_is_big_enough():
    assert len(CASES) >= 30 and len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_bad_input(case: Case, tmp_path: Path, request, monkeypatch):
    monkeypatch.delenv("HPO_STORAGE", raising=False)
    env = {"HPO_CACHE_DIR": str(tmp_path / ".cache"), **case.env}
    if case.postgres:
        url = request.getfixturevalue("pg_url")
        storage.create(spec_mod.load(small_spec(tmp_path, rows=40)), url)
        env["HPO_STORAGE"] = url
        args = case.make(tmp_path)
        args = [a for i, a in enumerate(args) if a != "--storage" and (i == 0 or args[i - 1] != "--storage")]
    else:
        url = db(tmp_path)
        args = case.make(tmp_path)
    files, studies = _files(tmp_path), _studies(url)

    r = run_cli(*args, cwd=tmp_path, env=env, timeout=120)

    out = r.stdout + r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode == case.code, f"exit {r.returncode}, expected {case.code}\n{out}"
    assert "Traceback" not in out, out
    assert len(lines) == 1 and lines[0].startswith("error: "), f"want one error line, got:\n{r.stderr}"
    for needle in case.needles:
        assert needle in lines[0], f"{needle!r} not in: {lines[0]}"
    assert SECRET not in out
    assert _files(tmp_path) == files, "files were added, removed or changed"
    assert _studies(url) == studies, "the storage changed"
    assert not (tmp_path / ".cache").exists(), "nothing is prepared or cached for a bad input"
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".") and p != ".cache"], (
        "temporary files left"
    )


@pytest.mark.parametrize(
    ("argv", "said"),
    [(["status"], "No such command 'status'"), (["run", "--bogus"], "No such option: --bogus")],
)
def test_a_mistyped_command_or_option_gets_the_usage_line_not_an_internal_error(tmp_path, argv, said):
    r = run_cli(*argv, cwd=tmp_path)
    assert r.returncode == 2
    assert said in r.stderr and "Try 'hpo" in r.stderr
    assert "internal error" not in r.stderr and "Traceback" not in r.stderr
