"""Generated answers (hpo/generation.py, ``evaluation.generate``): the spec's checks, which prompts
and references come out of packed blocks, which evaluations generate, and generation on the tiny
model (batched with left padding = one at a time; a custom metric that raises fails the trial)."""

from __future__ import annotations

import numpy as np
import pytest

from hpo import evaluation, generation
from hpo import spec as spec_mod
from hpo.errors import SpecError, TrialError
from hpo.packing import pack
from tests.conftest import ROOT, trial_config

EOS = 9


def _base(tmp_path, **extra) -> dict:
    data = tmp_path / "d.jsonl"
    data.write_text('{"prompt": "q", "completion": "a"}\n' * 3)
    return {"name": "g", "data": {"path": str(data)}, **extra}


# ---------------------------------------------------------------- the spec


def test_generated_objectives_are_maximized_and_need_generate(tmp_path):
    s = spec_mod.parse(
        _base(tmp_path, objective={"metric": "rouge_l"}, evaluation={"generate": {}}), "s", "."
    )
    assert s.objective.direction == "maximize" and s.objective.generated
    assert s.evaluation.generate.samples == 64 and s.evaluation.generate.max_new_tokens == 64
    assert s.evaluation.metrics() == ["exact_match", "rouge_l", "chrf"]
    with pytest.raises(SpecError, match="objective exact_match is scored on generated answers"):
        spec_mod.parse(_base(tmp_path, objective={"metric": "exact_match"}), "s", ".")
    with pytest.raises(SpecError, match="chrf must be maximized"):
        bad = {"metric": "chrf", "direction": "minimize"}
        spec_mod.parse(_base(tmp_path, objective=bad, evaluation={"generate": {}}), "s", ".")


def test_a_custom_metric_is_found_now_and_stored_with_its_full_path(tmp_path):
    (tmp_path / "m.py").write_text("def sari(predictions, references):\n    return 0.5\n")
    gen = {"generate": {"metric": {"python": "m.py:sari", "name": "sari"}}}
    s = spec_mod.parse(
        _base(tmp_path, objective={"metric": "sari", "direction": "minimize"}, evaluation=gen),
        "s",
        str(tmp_path),
    )
    assert s.evaluation.generate.metric.python == f"{tmp_path / 'm.py'}:sari"
    assert s.evaluation.metrics() == ["exact_match", "rouge_l", "chrf", "sari"]
    assert spec_mod.from_json(s.to_json()) == s  # stored: not looked up again
    with pytest.raises(SpecError, match="unknown metric 'sari'.*custom metric's name with its direction"):
        spec_mod.parse(_base(tmp_path, objective={"metric": "sari"}, evaluation=gen), "s", str(tmp_path))
    with pytest.raises(SpecError, match="objective sar is no metric hpo knows: .*chrf, sari"):
        obj = {"metric": "sar", "direction": "maximize"}
        spec_mod.parse(_base(tmp_path, objective=obj, evaluation=gen), "s", str(tmp_path))
    with pytest.raises(SpecError, match="rouge_l is a built-in metric"):
        clash = {"generate": {"metric": {"python": "m.py:sari", "name": "rouge_l"}}}
        spec_mod.parse(_base(tmp_path, evaluation=clash), "s", str(tmp_path))


def test_every_problem_of_the_section_at_once(tmp_path):
    bad = {"generate": {"samples": 0, "max_new_tokens": -1, "normalize": ["casefold"], "extra": 1}}
    with pytest.raises(SpecError) as e:
        spec_mod.parse(_base(tmp_path, evaluation=bad), "s", ".")
    text = str(e.value)
    for needle in ("samples", "max_new_tokens", "normalize.0", "extra: unknown key"):
        assert needle in text


# ---------------------------------------------------------------- which evaluations generate


def test_generate_marks_follow_asha_whole_epochs_or_every_evaluation():
    config = {"eval_every": 0.25, "generate_epochs": [0.5, 1.0, 2.0]}
    wanted = evaluation.generate_marks(config)
    assert [m for m in range(1, 9) if wanted(m)] == [2, 4, 8]  # 0.5, 1.0 (a whole epoch too), 2.0
    no_asha = evaluation.generate_marks({"eval_every": 0.25, "generate_epochs": []})
    assert [m for m in range(1, 9) if no_asha(m)] == [4, 8]  # whole epochs (and the end, in the loop)
    objective = evaluation.generate_marks({**config, "objective_generated": True})
    assert all(objective(m) for m in range(1, 9))


# ---------------------------------------------------------------- prompts and references


def test_split_examples_finds_prompt_and_reference_of_each_example():
    pair = ([1, 2, 3, 4, 5, EOS], [-100, -100, -100, 4, 5, EOS])  # prompt 1 2 3, answer 4 5
    chat = ([1, 2, 6, 3, 7, EOS], [-100, -100, 6, -100, 7, EOS])  # two replies: the last one counts
    cut = ([1, 2, 3, 4, 5, 6, 7, 8, 8, 8, 8, 8], [-100, -100, 3, 4, 5, 6, 7, 8, 8, 8, 8, 8])  # no EOS
    packed = pack([pair, chat, cut], block=10, pad_id=0)
    assert packed.truncated == 1
    got = generation.split_examples(
        np.array(packed.ids), np.array(packed.labels), np.array(packed.pos), eos=EOS
    )
    assert got == [([1, 2, 3], [4, 5]), ([1, 2, 6, 3], [7])]


def test_pick_is_seeded_sorted_and_capped():
    assert generation.pick(100, 5, 0) == generation.pick(100, 5, 0) == sorted(generation.pick(100, 5, 0))
    assert generation.pick(100, 5, 0) != generation.pick(100, 5, 1)
    assert generation.pick(3, 64, 0) == [0, 1, 2]


# ---------------------------------------------------------------- on the tiny model

GENERATE = {"samples": 12, "max_new_tokens": 12, "normalize": ["strip"], "show": 2, "metric": None}


def _val(prepared):
    import torch

    arrays = prepared.arrays()
    return tuple(torch.from_numpy(np.array(arrays[f"val_{k}"])) for k in ("ids", "labels", "pos"))


def test_batched_left_padded_answers_equal_one_at_a_time(prepared, tiny_model):
    import contextlib

    import torch

    from hpo.checkpoint import load_model

    config = {"generate": GENERATE, "model_path": tiny_model, "generate_seed": 0}
    model = load_model(tiny_model, 0.0, torch.device("cpu"), "float32")
    batched = generation.Generator(config, _val(prepared), eval_batch=12)
    single = generation.Generator(config, _val(prepared), eval_batch=1)
    assert len({len(p) for p in batched.prompts}) > 1  # prompts of several lengths: padding happens
    cpu = torch.device("cpu")
    answers = batched._generate(model, cpu, contextlib.nullcontext)
    assert answers == single._generate(model, cpu, contextlib.nullcontext)
    assert all(0 < len(a) <= 12 for a in answers)
    metrics, shown = batched.run(model, cpu, contextlib.nullcontext)
    assert set(metrics) == {"exact_match", "rouge_l", "chrf"} and batched.seconds > 0
    assert len(batched.report(metrics, shown, True, 1.0)["generated_samples"]) > 10
    assert batched.references[0] and batched.prompt_texts[0].endswith("\n")  # pairs: prompt + "\n"


def test_a_custom_metric_that_raises_fails_the_trial(prepared, tiny_model, tmp_path):
    from hpo import trial

    (tmp_path / "metrics.py").write_text("def score(rows):\n    raise KeyError('no label column')\n")
    gen = {**GENERATE, "metric": {"python": f"{tmp_path / 'metrics.py'}:score", "name": "mine"}}
    params = {"learning_rate": 1e-3, "batch_size": 16, "epochs": 1, "dropout": 0.0, "weight_decay": 0.0}
    config = trial_config(
        prepared,
        tiny_model,
        tmp_path / "t",
        params,
        placement={},
        generate=gen,
        generate_seed=0,
        objective="mine",
        objective_direction="maximize",
        objective_generated=True,
    )
    reports: list = []
    with pytest.raises(
        TrialError, match=r"custom metric .*metrics.py:score raised KeyError: 'no label column'"
    ):
        trial.run(config, reports.append)
    assert reports == []  # the first evaluation failed: nothing was reported


def test_a_data_parallel_trial_generates_on_rank_0_and_shares_the_scores(prepared, tiny_model, tmp_path):
    from hpo import trial

    params = {"learning_rate": 2e-3, "batch_size": 8, "epochs": 1, "dropout": 0.0, "weight_decay": 0.0}
    config = trial_config(
        prepared,
        tiny_model,
        tmp_path / "dp",
        params,
        max_micro_batch=8,
        cpus=2,
        gpus=2,  # no CUDA here: two ranks over gloo on the CPU
        precision="fp32",
        generate=GENERATE,
        generate_seed=0,
        objective="chrf",
        objective_direction="maximize",
        objective_generated=True,
    )
    reports: list = []
    trial.run(config, reports.append)
    assert config["placement"]["world_size"] == 2
    assert [r["epoch"] for r in reports] == [0.5, 1.0]  # every rank took the same decisions
    assert all(r["generate_s"] > 0 and 0 <= r["chrf"] <= 100 for r in reports)
    assert reports[-1]["best_objective"] == max(r["chrf"] for r in reports)


def test_chat_prompts_end_at_the_assistant_header_and_references_are_the_replies(tmp_path, tiny_model):
    import json

    from hpo import data

    chats = (ROOT / "studies" / "data" / "support-chat-200.jsonl").read_text().splitlines()[:40]
    (tmp_path / "chats.jsonl").write_text("\n".join(chats) + "\n")
    doc = _base(tmp_path, data={"path": str(tmp_path / "chats.jsonl"), "format": "chat", "block_size": 256})
    s = spec_mod.parse(doc, "s", str(tmp_path))
    prepared = data.prepare(s.data, tiny_model, 0, tmp_path / "cache")  # tiny: hpo's simple template
    config = {"generate": GENERATE, "model_path": tiny_model, "generate_seed": 0}
    g = generation.Generator(config, _val(prepared), eval_batch=4)
    replies = {json.loads(c)["messages"][-1]["content"] for c in chats}
    assert g.prompts and all(t.endswith("<|assistant|>\n") for t in g.prompt_texts)
    assert all(r in replies for r in g.references)  # the last reply, without its EOS


def test_a_lora_trial_generates_through_peft(prepared, tiny_model, tmp_path):
    from hpo import trial

    params = {"learning_rate": 5e-3, "batch_size": 16, "epochs": 1, "dropout": 0.0, "weight_decay": 0.0}
    config = trial_config(
        prepared,
        tiny_model,
        tmp_path / "lora",
        params,
        adapter={"type": "lora", "r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["c_attn"]},
        generate=GENERATE,
        generate_seed=0,
        objective="exact_match",
        objective_direction="maximize",
        objective_generated=True,
    )
    reports: list = []
    trial.run(config, reports.append)
    assert [r["epoch"] for r in reports] == [0.5, 1.0]
    assert all(r["generated_tokens"] > 0 and 0 <= r["exact_match"] <= 1 for r in reports)
