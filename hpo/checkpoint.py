"""A trial's model on disk: loading a base model with the trial's dropout (and a LoRA adapter),
and keeping the trial's best checkpoint (a ``from_pretrained`` folder: safetensors weights,
config, tokenizer; no optimizer state) behind a ``BEST`` pointer that moves atomically. With a
LoRA adapter the folder holds the base weights with the adapter merged in (so it loads and
exports like any model) and the adapter alone under ``adapter/`` (peft's layout)."""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from hpo.errors import TrialError
from hpo.models import TOKENIZER_PARTS

log = logging.getLogger(__name__)

POINTER = "BEST"  # file in a trial's checkpoint folder naming its best checkpoint

#: Activation names transformers implements op by op, and the fused kernel computing the same
#: function (GPT-2's ``gelu_new`` is the tanh approximation, which ``F.gelu`` has as one kernel).
FUSED_ACTIVATIONS = {"gelu_new": "gelu_pytorch_tanh"}
ACTIVATION_FIELDS = ("activation_function", "hidden_act", "hidden_activation")
DROPOUT_SUFFIXES = ("dropout", "pdrop", "dropout_prob")  # a config field holding a dropout probability


def load_model(model_path: str, dropout: float, device=None, dtype: str = "float32"):
    """Load a causal LM with every dropout probability of its config set to ``dropout``, built
    with the fused kernel of an activation transformers computes op by op (GPT-2's ``gelu_new``:
    the same function; a 283 ms tiny-model step 20 ms faster, measured); the config keeps its own
    name, so a checkpoint saves what was loaded.

    The weights load in ``dtype`` whatever dtype the checkpoint was saved in: float32 by default,
    the trial's master weights (transformers 5 would otherwise keep a bf16 Hub checkpoint in bf16,
    and AdamW's small updates would round away: 6% worse eval loss after one epoch, measured);
    bfloat16 only for ``precision: bf16-true``."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from hpo.modelbuild import quiet_transformers

    quiet_transformers()
    try:
        cfg = AutoConfig.from_pretrained(model_path)
        if not set_dropout(cfg, dropout) and dropout > 0:
            log.warning(
                "%s has no dropout probability in its config: dropout %g changes nothing", model_path, dropout
            )
        fused = fuse_activation(cfg)
        model = AutoModelForCausalLM.from_pretrained(
            model_path, config=cfg, use_safetensors=True, dtype=getattr(torch, dtype)
        )
        for field, name in fused.items():
            setattr(model.config, field, name)
    except (OSError, ValueError) as e:
        raise TrialError(f"cannot load model {model_path!r}: {str(e).splitlines()[0]}") from e
    return model.to(device) if device is not None else model


def saved_dtype(model_path: str) -> str | None:
    """The dtype a model folder's weights were saved in (``config.json``'s ``dtype``, or
    ``torch_dtype`` as transformers 4 wrote it); None when unknown (a hub id, no field)."""
    try:
        cfg = json.loads((Path(model_path) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    value = cfg.get("dtype") or cfg.get("torch_dtype")
    return value if isinstance(value, str) else None


def import_model_code(model_path: str) -> None:
    """Import the modeling code ``load_model`` will use for ``model_path`` (its config only: no
    weights are read); a path that does not load is left for ``load_model`` to report."""
    try:
        from transformers import MODEL_FOR_CAUSAL_LM_MAPPING, AutoConfig

        MODEL_FOR_CAUSAL_LM_MAPPING[type(AutoConfig.from_pretrained(model_path))]  # imports lazily
    except Exception:  # noqa: BLE001 - the trial's own load says what is wrong
        log.debug("could not import the model code of %s", model_path, exc_info=True)


def fuse_activation(config) -> dict[str, str]:
    """Switch ``config``'s activation to its fused kernel in place; returns the original names
    (field -> name) so the caller can put them back on the built model's config, which is what
    checkpoints save: a saved model reads exactly as it was loaded."""
    changed = {}
    for field in ACTIVATION_FIELDS:
        name = getattr(config, field, None)
        if isinstance(name, str) and name in FUSED_ACTIVATIONS:
            changed[field] = name
            setattr(config, field, FUSED_ACTIVATIONS[name])
    return changed


def with_lora(model, r: int, alpha: int, dropout: float, target_modules: list[str] | None):
    """Wrap ``model`` in a peft LoRA adapter: only the adapter's matrices stay trainable. Without
    ``target_modules``, peft's default for the model family, or (a family peft has none for, such
    as Phi-3) peft's ``all-linear``: every linear layer but the output head."""
    import warnings

    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=int(r),
        lora_alpha=int(alpha),
        lora_dropout=float(dropout),
        target_modules=target_modules or default_lora_targets(model.config.model_type),
        task_type="CAUSAL_LM",
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # GPT-2's Conv1D: "fan_in_fan_out is set to True"
        try:
            return get_peft_model(model, config)
        except ValueError as e:  # e.g. target modules not found in the model
            raise TrialError(f"cannot add a LoRA adapter: {str(e).splitlines()[0]}") from e


def default_lora_targets(model_type: str) -> list[str] | str:
    """peft's default LoRA target modules for ``model_type``, or ``"all-linear"`` where it has none."""
    from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as DEFAULTS

    if model_type in DEFAULTS:
        return list(DEFAULTS[model_type])
    log.info("peft has no default LoRA target modules for %s models: adapting every linear layer", model_type)
    return "all-linear"


def merged_state_dict(model) -> dict[str, Any]:
    """The base model's weights with every LoRA delta added, under the base model's own names
    (the adapted model itself is left as it is)."""
    from peft.tuners.lora import LoraLayer

    base = model.get_base_model()
    out = {k.replace(".base_layer.", "."): v for k, v in base.state_dict().items() if "lora_" not in k}
    for name, module in base.named_modules():
        if isinstance(module, LoraLayer):
            weight = module.get_base_layer().weight
            delta = module.get_delta_weight("default")  # type: ignore[attr-defined]
            out[f"{name}.weight"] = (weight + delta).detach()
    return out


def is_peft(model) -> bool:
    return hasattr(model, "get_base_model") and hasattr(model, "peft_config")


def dropout_fields(config: dict[str, Any]) -> list[str]:
    """Names of a model config's dropout probabilities: numbers in [0, 1] (a Hub config may write 0
    for 0.0) in fields ending in dropout, pdrop or dropout_prob; a sub-config's (a multimodal
    model's ``text_config``) as dotted names."""
    found = []
    for k, v in config.items():
        if isinstance(v, dict):
            found += [f"{k}.{name}" for name in dropout_fields(v)]
        elif (
            isinstance(v, int | float)
            and not isinstance(v, bool)
            and 0 <= v <= 1
            and k.endswith(DROPOUT_SUFFIXES)
        ):
            found.append(k)
    return sorted(found)


def set_dropout(config, p: float) -> list[str]:
    """Set every dropout probability of a transformers config (its sub-configs' too) to ``p``;
    returns their names (none: the model has no dropout)."""
    names = dropout_fields(config.to_dict())
    for name in names:
        *path, field = name.split(".")
        target = config
        for part in path:
            target = target[part] if isinstance(target, dict) else getattr(target, part)
        if isinstance(target, dict):
            target[field] = float(p)
        else:
            setattr(target, field, float(p))
    return names


def dropout_problem(model_config: dict[str, Any] | None, searched: bool) -> str | None:
    """Why a study should not search ``dropout`` on this model, if it should not: its config (None:
    not known here) has no dropout probability, so every sampled value would train the same."""
    if not searched or model_config is None or dropout_fields(model_config):
        return None
    kind = model_config.get("model_type", "this")
    return (
        f"space.dropout: the model ({kind}) has no dropout probability in its config, so every "
        "sampled dropout would train the same model; remove dropout from space"
    )


def local_config(model: str) -> dict[str, Any] | None:
    """A local model folder's ``config.json`` as a dict (None for a hub id or the built-in model)."""
    path = Path(model) / "config.json"
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except (OSError, ValueError):  # loading the model says what is wrong with it
        return None


def save_checkpoint(
    model, config: dict[str, Any], step: int, state_dict: dict[str, Any] | None = None
) -> str:
    """Write the model (or ``state_dict``: weights held from an earlier step, ``hpo.bestweights``)
    as a ``from_pretrained`` folder, point BEST at it, drop the previous one."""
    root = Path(config["checkpoint_dir"])
    root.mkdir(parents=True, exist_ok=True)
    previous = best_checkpoint(root)
    out = root / f"step-{step:07d}"
    if is_peft(model):  # the merged model (loads and exports as a plain model) + the adapter alone
        assert state_dict is None, "a LoRA trial writes its best as it is found (save_best: immediate)"
        base = model.get_base_model()
        base.save_pretrained(out, state_dict=merged_state_dict(model), safe_serialization=True)
        model.save_pretrained(out / "adapter", safe_serialization=True)
    else:
        model.save_pretrained(out, state_dict=state_dict, safe_serialization=True)
    _copy_tokenizer(config["model_path"], previous, out)
    (root / "params.json").write_text(json.dumps(config["params"], indent=1))
    tmp = root / f".{POINTER}.tmp"
    tmp.write_text(out.name)
    os.replace(tmp, root / POINTER)  # the pointer moves atomically: a crash keeps a whole checkpoint
    if previous is not None and previous != out:
        shutil.rmtree(previous, ignore_errors=True)
    return str(out)


def best_checkpoint(root: str | Path) -> Path | None:
    """The folder a trial's BEST pointer names, if it exists."""
    pointer = Path(root) / POINTER
    if not pointer.is_file():
        return None
    path = Path(root) / pointer.read_text().strip()
    return path if path.is_dir() else None


def _copy_tokenizer(model_path: str, previous: Path | None, out: Path) -> None:
    # the previous checkpoint's copy, unless it is this very folder (a trial folder left by an
    # earlier study of the same name whose best was written at the same step)
    source = previous if previous is not None and previous.resolve() != out.resolve() else Path(model_path)
    if source.is_dir():
        for name in TOKENIZER_PARTS:
            if (source / name).is_file():
                shutil.copy2(source / name, out / name)
        return
    from transformers import AutoTokenizer  # a hub id: save the tokenizer once

    AutoTokenizer.from_pretrained(model_path).save_pretrained(out)


def checkpoint_step(path: str) -> int:
    """The optimizer step a ``step-NNNNNNN`` checkpoint folder was written at."""
    name = Path(path).name
    return int(name.split("-", 1)[1]) if name.startswith("step-") else 0
