"""What a trial needs in memory, planned before it trains: pure arithmetic on plain values.

A trial holds (1) *static* memory, whatever its micro-batch: the weights (fp32 master copies, or
bf16 for ``bf16-true``), their bf16 copies under autocast, the gradients and AdamW's two moments
of every trainable weight, and the process's own runtime; and (2) *activations*, kept for the
backward pass, in proportion to the sequences of one forward pass (the micro-batch). So

    need(micro) = SAFETY x (static + micro x per_sequence)

``per_sequence`` is ``block x layers x (32 h + 20 i + 10 a s)`` bytes, with ``h`` the width, ``i``
the MLP width, ``a`` the heads and ``s`` the block length (attention probabilities: the CPU's
SDPA keeps them). The constants were fitted on peak RSS (``VmHWM``) of one forward/backward/AdamW
step under bf16 autocast on CPU, measured here: SmolLM2-135M, block 256, 4.2 / 5.4 GB at micro 2 /
4 (the formula: 4.0 / 5.1 before SAFETY); the tiny GPT-2, block 128, 0.50 / 0.58 GB at 4 / 8.
With gradient checkpointing a layer keeps only its input (4 h bytes a token) and one layer's
activations exist at a time.

Nothing here imports torch: the driver plans concurrency with it and the trial picks its
micro-batch with it (``micro_batch``).
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

GB = 1e9
SAFETY = 1.1  # the fit's error (5%) and allocator slack
RUNTIME_CPU = 0.5 * GB  # torch + transformers + data in a trial process, measured (232 MB torch alone)
RUNTIME_GPU = 0.6 * GB  # CUDA context and cuBLAS workspace, not counted by torch's allocator
COMFORTABLE_MICRO = 4  # a CPU step is ~25% faster per sequence at micro 4 than at 2 (SmolLM2, measured)


@dataclass(frozen=True)
class Shape:
    """What a model's memory depends on, read from its ``config.json`` (and weights' headers)."""

    params: int  # every parameter (tied embeddings counted once)
    layers: int
    hidden: int
    intermediate: int
    heads: int


@dataclass(frozen=True)
class Need:
    """A trial's memory in bytes: ``static + micro x per_sequence`` (times SAFETY)."""

    static: float
    per_sequence: float

    def at(self, micro: int) -> float:
        """Bytes at a micro-batch of ``micro`` sequences."""
        return SAFETY * (self.static + micro * self.per_sequence)

    def largest_micro(self, budget: float) -> int:
        """The largest micro-batch that fits ``budget`` bytes (0: not even one sequence)."""
        room = budget / SAFETY - self.static
        return max(0, int(room / self.per_sequence + 1e-9)) if self.per_sequence > 0 else 1 << 20


def _first(config: dict[str, Any], *names: str) -> Any:
    return next((config[n] for n in names if isinstance(config.get(n), int)), None)


def shape(config: dict[str, Any], params: int | None = None) -> Shape:
    """A model's ``Shape`` from its config (GPT-2, Llama and most families' field names);
    ``params`` from the weights when known, else estimated from the config."""
    hidden = _first(config, "hidden_size", "n_embd", "d_model") or 768
    layers = _first(config, "num_hidden_layers", "n_layer", "num_layers") or 12
    heads = _first(config, "num_attention_heads", "n_head", "num_heads") or max(1, hidden // 64)
    inter = _first(config, "intermediate_size", "n_inner", "ffn_dim") or 4 * hidden
    vocab = _first(config, "vocab_size") or 50257
    if params is None:  # attention (fewer key/value heads: GQA), MLP 2-3 h i, embeddings
        kv = (_first(config, "num_key_value_heads") or heads) * hidden // heads
        mlp = 3 if config.get("hidden_act") in ("silu", "swiglu") else 2
        tied = config.get("tie_word_embeddings", True)
        per_layer = 2 * hidden * hidden + 2 * hidden * kv + mlp * hidden * inter
        params = layers * per_layer + (1 if tied else 2) * vocab * hidden
    return Shape(int(params), int(layers), int(hidden), int(inter), int(heads))


def trial_need(
    model: Shape,
    block: int,
    precision: str = "bf16",
    trainable: int | None = None,
    checkpointing: bool = False,
    gpu: bool = False,
    held_best: bool = False,
) -> Need:
    """What one trial of ``model`` needs, training ``block``-token sequences.

    Args:
        model: the model's shape.
        block: tokens per sequence (the prepared data's block size).
        precision: ``bf16`` (autocast: fp32 weights + bf16 copies), ``fp32`` or ``bf16-true``.
        trainable: trainable parameters (a LoRA adapter's); default every parameter.
        checkpointing: gradient checkpointing (recompute each layer's activations in backward).
        gpu: on a GPU the runtime's memory is the CUDA context's, not the process's heap.
        held_best: the trial holds a copy of its best weights (``save_best: deferred``): in the
            host's memory, so counted on CPUs only.
    """
    n, t = model.params, model.params if trainable is None else trainable
    weight = 2 if precision == "bf16-true" else 4
    static = float(n * weight + t * weight + t * 2 * weight)  # weights, gradients, AdamW's moments
    if precision == "bf16":
        static += n * 2  # autocast's bf16 copies of the weights
    static += RUNTIME_GPU if gpu else RUNTIME_CPU
    if held_best and not gpu:
        static += n * weight
    per_layer_token = 32 * model.hidden + 20 * model.intermediate + 10 * model.heads * block
    if checkpointing:
        per_sequence = block * (model.layers * 4 * model.hidden + per_layer_token)
    else:
        per_sequence = block * model.layers * per_layer_token
    return Need(float(static), float(per_sequence))


def micro_batch(need: Need, budget: float, batch: int, cap: int | None = None) -> int:
    """The largest divisor of ``batch`` (at most ``cap``) whose micro-batch fits ``budget`` bytes;
    0 when not even one sequence fits. Gradient accumulation covers the rest of the batch."""
    limit = min(batch, need.largest_micro(budget), cap or batch)
    return max((d for d in range(1, limit + 1) if batch % d == 0), default=0)


def too_big(need: Need, budget: float, batch: int, micro: int, where: str) -> str:
    """The one-line reason a trial cannot run in ``budget`` bytes, with the fixes."""
    return (
        f"out of memory: a trial at batch_size {batch} needs ~{need.at(max(1, micro)) / GB:.1f} GB at "
        f"micro-batch {max(1, micro)} ({need.static * SAFETY / GB:.1f} GB before activations) but "
        f"{where} has {budget / GB:.1f} GB; set training.gradient_checkpointing: true, lower "
        "data.block_size, use adapter: lora, or run fewer trials at once (--concurrency)"
    )


def params_in(folder: str | Path) -> int | None:
    """Parameters in a model folder's safetensors weights, read from the files' headers alone
    (no tensor is loaded); None when the folder has no safetensors files."""
    folder = Path(folder)
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        return None
    total = 0
    for f in files:
        with open(f, "rb") as fh:
            (size,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(size))
        for name, meta in header.items():
            if name != "__metadata__":
                count = 1
                for d in meta["shape"]:
                    count *= int(d)
                total += count
    return total


def model_shape(folder: str | Path) -> Shape | None:
    """The ``Shape`` of a local model folder (None when it has no readable ``config.json``)."""
    try:
        config = json.loads((Path(folder) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    return shape(config, params_in(folder))


#: What allocators say when memory runs out (torch's CUDA and CPU allocators, glibc via Python).
_OOM_TEXT = ("out of memory", "can't allocate memory", "cannot allocate memory", "not enough memory")


def is_oom(message: str) -> bool:
    """Whether an error's message says an allocation failed for want of memory."""
    low = message.lower()
    return any(t in low for t in _OOM_TEXT)


def _status(field: str) -> int:
    """A ``/proc/self/status`` size field in bytes (0 where there is none)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def available_bytes() -> float:
    """The host memory available now (``MemAvailable``; 8 GB where ``/proc/meminfo`` is missing)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024.0
    except OSError:
        pass
    return 8 * GB


def hold_to(budget: float) -> bool:
    """Hold this process to ``budget`` bytes of resident memory from now on, as a data-segment
    limit (``RLIMIT_DATA``: heap and private anonymous mappings, which torch's CPU tensors are):
    an allocation past it fails (torch raises, the trial fails OutOfMemory) instead of the
    kernel's out-of-memory killer picking a process. The limit allows what the process has
    reserved but not touched yet. Set once a process; False where it cannot be set."""
    import resource

    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
        if soft != resource.RLIM_INFINITY:
            return False  # already held (an earlier trial of this process)
        limit = int(_status("VmData") - _status("VmRSS") + budget)
        resource.setrlimit(
            resource.RLIMIT_DATA, (limit if hard == resource.RLIM_INFINITY else min(limit, hard), hard)
        )
    except (ValueError, OSError):
        return False
    return True


@dataclass(frozen=True)
class MemoryPlan:
    """How much host memory each CPU trial gets, and how many trials the nodes' memory holds."""

    per_trial: float  # bytes Ray reserves for each trial (its ``memory`` resource)
    fits: int  # trials the nodes hold at once, by memory and by CPUs
    micro: int  # the micro-batch a trial of the largest batch can use with ``per_trial``
    problem: str | None = None  # not even one trial fits on any node


def plan_cpu(
    node_memory: list[float], cpu_fits: list[int], need: Need, batch: int, fixed: float | None = None
) -> MemoryPlan:
    """Per-trial memory and the trials that fit, node by node (a trial never spans nodes).

    A node holds as many trials as its CPUs allow while each still gets a comfortable micro-batch
    (``COMFORTABLE_MICRO`` sequences, or ``batch`` when smaller), fewer when its memory runs out,
    and at least one where micro-batch 1 fits; its memory is shared evenly by those trials.

    Args:
        node_memory: each node's memory for trials, in bytes (Ray's ``memory`` resource).
        cpu_fits: trials each node's CPUs (and GPUs) hold.
        need: one trial's need (``trial_need``).
        batch: the smallest batch size the space can draw (what a trial must at least fit well).
        fixed: bytes per trial the spec fixed (``resources.memory_gb``), if any.
    """
    target = min(COMFORTABLE_MICRO, batch)
    fits, shares = 0, []
    for mem, cpu_fit in zip(node_memory, cpu_fits, strict=True):
        if fixed:
            n = min(cpu_fit, int(mem // fixed))
        else:
            n = min(cpu_fit, int(mem // need.at(target))) or min(cpu_fit, int(mem // need.at(1)))
        if n > 0:
            fits += n
            shares.append(fixed or mem / n)
    if not fits:
        largest = max(node_memory, default=0.0)
        wanted = fixed or need.at(1)
        return MemoryPlan(
            wanted,
            0,
            0,
            too_big(need, largest, batch, 1, "the largest node")
            if not fixed
            else f"resources.memory_gb = {fixed / GB:g}: no node has that much memory for a trial "
            f"(largest: {largest / GB:.1f} GB); lower it",
        )
    per_trial = min(shares)
    return MemoryPlan(per_trial, fits, need.largest_micro(per_trial))


def oom_kills() -> int:
    """Processes the kernel's out-of-memory killer has killed since boot (``/proc/vmstat``;
    0 where unknown): a trial process that died while this grew was most likely one of them."""
    try:
        with open("/proc/vmstat") as f:
            for line in f:
                if line.startswith("oom_kill "):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def gpu_share(need: Need, gpu_total: float, gpus: float, batch: int) -> tuple[str | None, str | None]:
    """(problem, note) for trials of ``gpus`` GPUs each on GPUs of ``gpu_total`` bytes: a problem
    when a fraction of a GPU cannot hold one sequence, a note when it holds fewer than a
    comfortable micro-batch (the trial then accumulates more passes)."""
    share = gpu_total * min(1.0, gpus)
    where = f"gpus_per_trial = {gpus:g} gives each trial {share / GB:.1f} GB of a {gpu_total / GB:.1f} GB GPU"
    if need.at(1) > share:
        return (
            f"{where}, but a trial of this model needs ~{need.at(1) / GB:.1f} GB at micro-batch 1; raise "
            "gpus_per_trial, or set training.gradient_checkpointing: true or adapter: lora",
            None,
        )
    target = min(COMFORTABLE_MICRO, batch)
    if need.at(target) > share:
        return (
            None,
            f"{where}: micro-batches of {need.largest_micro(share)} (gradient accumulation does the rest)",
        )
    return None, None
