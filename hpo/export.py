"""Export a trial's best checkpoint as a folder ``from_pretrained`` loads, with a model card.

The folder is written beside its destination and renamed into place at the end, so a failed
export leaves nothing half-written; a non-empty destination is replaced only with ``force``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from optuna.trial import FrozenTrial, TrialState

from hpo import confirmed
from hpo import storage as storage_mod
from hpo.errors import UsageError
from hpo.summary import IMPORTED_ATTR, best_complete, checkpoint_kept, first_value, is_imported, pareto

WEIGHT_SUFFIXES = (".safetensors",)


@dataclass
class Exported:
    """Where an export went and what it holds."""

    path: str
    study: str
    trial: int
    value: float | None
    params: dict[str, Any]


def export_best(
    out: str | Path,
    study: str | None = None,
    storage: str | None = None,
    trial: int | None = None,
    force: bool = False,
    merge: bool = True,
    dtype: str = "auto",
) -> Exported:
    """Write the best COMPLETE trial's (or trial ``trial``'s) best checkpoint to ``out``.

    For a LoRA study the checkpoint's weights already hold the adapter merged into the base model;
    ``merge=False`` writes the adapter alone (peft's layout, loaded with ``PeftModel``) instead.
    Trials keep fp32 weights; the export writes ``dtype``: "auto" is the dtype the base model was
    saved in (bf16 for a bf16 Hub checkpoint; as trained when unknown), or one of ``DTYPES``.

    Raises:
        UsageError: no finished trial, no such trial, its checkpoint was deleted, ``out`` is a
            file or a non-empty folder (without ``force``), or an unknown ``dtype``.
    """
    out = Path(out)
    if dtype != "auto" and dtype not in DTYPES:
        raise UsageError(f"--dtype {dtype}: choose auto, {', '.join(DTYPES)}")
    _check_destination(out, force)
    loaded = storage_mod.load(study, storage)
    spec = storage_mod.spec_of(loaded)
    chosen, confirm = _choose(loaded, trial, spec)
    source = _checkpoint(chosen, loaded.study_name)
    url = storage_mod.mask(storage_mod.resolve_url(storage))
    info = _info(loaded.study_name, url, spec, chosen)
    if confirm is not None:
        info["confirmed"] = confirm
    info["dtype"] = chosen.user_attrs.get("base_dtype") if dtype == "auto" else dtype
    _write(_files(source, merge, chosen.number), out, info, force)
    return Exported(str(out), loaded.study_name, chosen.number, first_value(chosen), info["hyperparameters"])


def _check_destination(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file; give a folder path")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise UsageError(f"--out {out} is not empty; choose another folder or add --force to replace it")
    above = next(p for p in out.absolute().parents if p.exists())
    if not above.is_dir():
        raise UsageError(f"--out {out}: {above} is a file, not a folder; give a folder path")


def _choose(study, number: int | None, spec) -> tuple[FrozenTrial, dict[str, Any] | None]:
    """The trial to export, and (chosen by ``hpo confirm``'s results) what its configuration's
    confirm runs found."""
    trials = study.get_trials(deepcopy=False)
    if number is None and spec.objectives:
        raise UsageError(pareto_refusal(study.study_name, trials, spec))
    if number is None:
        preferred = _confirmed_choice(trials, spec)
        if preferred is not None:
            return preferred
        best = best_complete(trials, study.directions[0])
        if best is None:
            raise UsageError(f"study {study.study_name!r} has no COMPLETE trial yet; run `hpo run` first")
        return best, None
    for t in trials:
        if t.number == number:
            if is_imported(t):
                raise UsageError(
                    f"trial {number} of {study.study_name!r} was imported from study "
                    f"{t.user_attrs[IMPORTED_ATTR]!r} (warm_start): it was trained there and has no "
                    "checkpoint here; export one of this study's own trials"
                )
            if t.state not in (TrialState.COMPLETE, TrialState.PRUNED):
                raise UsageError(f"trial {number} is {t.state.name}; export a COMPLETE or PRUNED trial")
            return t, None
    have = f"trials 0..{len(trials) - 1}" if trials else "it has no trials yet"
    raise UsageError(f"study {study.study_name!r} has no trial {number} ({have}); check --trial")


def _confirmed_choice(trials: list[FrozenTrial], spec) -> tuple[FrozenTrial, dict[str, Any]] | None:
    """The configuration with the best confirmed mean (``hpo confirm``): its best run that kept a
    checkpoint, and the facts the model card states; None before any confirm run."""
    best = confirmed.preferred(trials, spec.directions)
    run = confirmed.export_run(trials, best, spec.directions[0], checkpoint_kept) if best else None
    if best is None or run is None:
        return None
    facts = {
        "configuration_of": best.source,
        "metric": spec.metrics[0],
        "mean": best.mean[0],
        "std": best.std[0],
        "runs": best.runs,
        "seeds": best.seeds,
        "exported_run": run.number,
    }
    return run, facts


def pareto_refusal(name: str, trials: list[FrozenTrial], spec) -> str:
    """Why ``hpo export`` needs ``--trial`` with several objectives, and the Pareto trials to pick."""
    front = pareto(trials, spec.directions)
    head = (
        f"study {name!r} has {len(spec.metrics)} objectives ({', '.join(spec.metrics)}): no single best; "
        f"pick a trial of the Pareto front with --trial N"
    )
    if not front:
        return f"{head} (it has no COMPLETE trial yet; run `hpo run` first)"
    lines = [
        f"  trial {t.number}: "
        + "  ".join(f"{m} {v:.4g}" for m, v in zip(spec.metrics, t.values, strict=True))
        for t in front
    ]
    return "\n".join([head + ":", *lines])


def _checkpoint(trial: FrozenTrial, study_name: str) -> Path:
    path = trial.user_attrs.get("checkpoint")
    if not path or not Path(path).is_dir():
        raise UsageError(
            f"trial {trial.number} of {study_name!r} has no checkpoint on this machine "
            f"({path or 'none recorded'}); only the best keep_top_k trials keep theirs"
        )
    if not any(p.suffix in WEIGHT_SUFFIXES for p in Path(path).iterdir()):
        raise UsageError(f"{path} holds no safetensors weights; hpo loads no pickled checkpoints")
    return Path(path)


def _info(study_name: str, url: str, spec, trial: FrozenTrial) -> dict[str, Any]:
    from hpo.space import complete

    hyper = complete(trial.params, spec.space)
    return {
        "study": study_name,
        "storage": url,
        "trial": trial.number,
        "state": trial.state.name,
        "objective": {
            "metric": spec.objective.metric,
            "direction": spec.objective.direction,
            "value": first_value(trial),
        },
        "objectives": [
            {**o.model_dump(), "value": v}
            for o, v in zip(spec.objectives or [], trial.values or [], strict=False)
        ],
        "best_eval_loss": trial.user_attrs.get("best_eval_loss"),
        "best_perplexity": trial.user_attrs.get("best_perplexity"),
        "best_epoch": trial.user_attrs.get("best_epoch"),
        "generated": trial.user_attrs.get("generated_metrics"),  # evaluation.generate's scores, if any
        "hyperparameters": hyper,
        "trained_on": {k: trial.user_attrs.get(k) for k in ("device", "precision")},
        "base_model": spec.model,
        "data": spec.data.model_dump(),
        "seed": spec.seed,
        "exported_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "reproduce": [
            f"hpo export --storage {url} --study {study_name} --trial {trial.number} --out DIR",
        ],
    }


_TOKENIZER_PREFIXES = ("tokenizer", "special_tokens_map", "vocab", "merges", "added_tokens", "chat_template")


def _files(source: Path, merge: bool, number: int) -> list[Path]:
    """The files to export: the (merged) model folder, or the LoRA adapter plus the tokenizer."""
    if merge:
        return [f for f in source.iterdir() if f.is_file()]
    adapter = source / "adapter"
    if not adapter.is_dir():
        raise UsageError(
            f"trial {number} has no LoRA adapter; --no-merge applies to studies with adapter: lora"
        )
    tokenizer = [f for f in source.iterdir() if f.is_file() and f.name.startswith(_TOKENIZER_PREFIXES)]
    return [f for f in adapter.iterdir() if f.is_file()] + tokenizer


def _write(files: list[Path], out: Path, info: dict[str, Any], force: bool) -> None:
    made = [p for p in reversed(out.absolute().parents) if not p.exists()]  # folders we create
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        for f in files:
            shutil.copy2(f, tmp / f.name)
        if info.get("dtype"):
            info["dtype"] = cast_weights(tmp, info["dtype"])
        (tmp / "hpo.json").write_text(json.dumps(info, indent=1, default=str))
        (tmp / "README.md").write_text(model_card(info))
        _replace(tmp, out, force)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        for p in reversed(made):  # deepest first; only if still empty
            with contextlib.suppress(OSError):
                p.rmdir()
        raise


#: The dtypes ``hpo export --dtype`` writes (torch's names, as ``config.json`` records them).
DTYPES = ("float32", "bfloat16", "float16")


def cast_weights(folder: Path, dtype: str) -> str:
    """Cast the floating-point tensors of ``folder``'s safetensors files to ``dtype`` in place and
    record it in its ``config.json``; returns ``dtype``."""
    import torch
    from safetensors.torch import load_file, save_file

    target = getattr(torch, dtype)
    for f in folder.glob("*.safetensors"):
        tensors = load_file(f)
        if all(t.dtype == target or not t.is_floating_point() for t in tensors.values()):
            continue
        cast = {k: t.to(target) if t.is_floating_point() else t for k, t in tensors.items()}
        save_file(cast, f, metadata={"format": "pt"})
    config = folder / "config.json"
    if config.is_file():
        cfg = json.loads(config.read_text())
        cfg.pop("torch_dtype", None)
        cfg["dtype"] = dtype
        config.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    return dtype


def _replace(tmp: Path, out: Path, force: bool) -> None:
    """Move the finished folder into place; an empty ``out`` goes, a full one only with ``force``."""
    if out.is_dir() and any(out.iterdir()):
        if not force:  # filled meanwhile
            raise UsageError(f"--out {out} was filled while exporting; add --force to replace it")
        shutil.rmtree(out)
    elif out.is_dir():
        out.rmdir()
    os.replace(tmp, out)


def _trained_on(info: dict[str, Any]) -> str:
    """ "bf16 autocast, fp32 weights on cpu" and the like (older trials recorded neither: "-")."""
    on = info.get("trained_on") or {}
    what = {"bf16": "bf16 autocast, fp32 weights", "bf16-true": "bf16 weights and optimizer state"}
    precision = what.get(str(on.get("precision")), on.get("precision"))
    return " on ".join(str(v) for v in (precision, on.get("device")) if v) or "-"


def _other_objectives(info: dict[str, Any]) -> str:
    """Model-card rows of the objectives after the first (several objectives), each with a newline."""
    return "".join(
        f"| {o['metric']} ({o['direction']}) | {o['value']:.6g} |\n" for o in info.get("objectives", [])[1:]
    )


def _confirmed_section(info: dict[str, Any]) -> str:
    """Why this run was exported when ``hpo confirm`` chose it (empty otherwise)."""
    c = info.get("confirmed")
    if not c:
        return ""
    return (
        f"## Confirmed\nChosen by `hpo confirm`: the configuration of trial {c['configuration_of']} has the "
        f"best confirmed mean, {c['metric']} {c['mean']:.4f} ± {c['std']:.4f} over {len(c['runs'])} new "
        f"seed(s) {c['seeds']} (runs {', '.join(map(str, c['runs']))}, full budget, no early stopping); "
        f"this export is its run {c['exported_run']}.\n\n"
    )


def model_card(info: dict[str, Any]) -> str:
    """A Hugging Face style README.md with YAML metadata for the exported model."""
    hp = "\n".join(
        f"| {k} | {v:.6g} |" if isinstance(v, float) else f"| {k} | {v} |"
        for k, v in info["hyperparameters"].items()
    )
    obj = info["objective"]
    value = f"{obj['value']:.4f}" if isinstance(obj["value"], float) else obj["value"]
    ppl = info.get("best_perplexity")
    generated = "".join(  # evaluation.generate: scores of the answers the trial generated
        f"\n| {k} (generated answers) | {v:.4f} |" for k, v in (info.get("generated") or {}).items()
    )
    return f"""---
library_name: transformers
pipeline_tag: text-generation
base_model: {info["base_model"]}
tags: [hpo, causal-lm, fine-tuned]
---
# {info["study"]} — trial {info["trial"]}

Fine-tuned from `{info["base_model"]}` on `{info["data"]["path"]}` ({info["data"]["format"]}),
chosen by an hpo study (`{info["study"]}` in `{info["storage"]}`, trial {info["trial"]}, {info["state"]}).

## Metrics (validation)
| metric | value |
| --- | --- |
| {obj["metric"]} ({obj["direction"]}) | {value} |
{_other_objectives(info)}| perplexity | {f"{ppl:.3f}" if isinstance(ppl, float) else ppl} |
| best epoch | {info.get("best_epoch")} |{generated}

{_confirmed_section(info)}## Hyperparameters
| name | value |
| --- | --- |
{hp}
| seed | {info["seed"]} |
| trained in | {_trained_on(info)} |
| weights saved in | {info.get("dtype") or "as trained"} |

## Use
```python
from transformers import AutoModelForCausalLM, AutoTokenizer
model = AutoModelForCausalLM.from_pretrained("PATH")
tokenizer = AutoTokenizer.from_pretrained("PATH")
```

## Reproduce
```
{chr(10).join(info["reproduce"])}
```
Exported {info["exported_at"]}; `hpo.json` holds the same facts for scripts.
"""
