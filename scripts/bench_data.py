"""Data preparation at realistic size: wall seconds and peak memory of ``hpo.data.prepare``.

Generates ``--rows`` customer-support pairs (``scripts/make_support_data.py``, dirty rows
included), writes them as prompt/completion JSONL, as chats and as plain text (one document a
line), and prepares each, block size 256, in a fresh process per case with the tiny model's
tokenizer and, given ``--smollm2 DIR``, SmolLM2's (only its tokenizer files are copied to a temp
folder). Each case reports wall seconds of ``prepare``, the process's peak RSS, its growth over
the RSS before ``prepare`` (tokenizer loaded) and a sha256 of the six arrays, so two checkouts
can be compared byte for byte. ``--hpo DIR`` measures another checkout's ``hpo`` package with
this interpreter (e.g. ``git archive`` of an older commit). Heavy: run it under the shared lock::

    flock /tmp/hpo-heavy.lock .venv/bin/python scripts/bench_data.py --rows 200000 \\
        --smollm2 /tmp/smol/smollm2-135m --json docs/bench/data-after.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
)
SYSTEM = "You are the support desk of an online shop."


def write_data(rows: int, folder: Path) -> dict[str, Path]:
    """The generated pairs as ``pairs`` (JSONL), ``chat`` (JSONL messages) and ``text`` files."""
    sys.path.insert(0, str(ROOT / "scripts"))
    import make_support_data

    pairs = make_support_data.build(0, rows)
    paths = {
        k: folder / f"support-{k}.{'txt' if k == 'text' else 'jsonl'}" for k in ("pairs", "chat", "text")
    }
    with open(paths["pairs"], "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in pairs)
    with open(paths["chat"], "w", encoding="utf-8") as f:
        for r in pairs:
            turns = [("system", SYSTEM), ("user", r["prompt"]), ("assistant", r["completion"])]
            f.write(json.dumps({"messages": [{"role": a, "content": b} for a, b in turns]}) + "\n")
    with open(paths["text"], "w", encoding="utf-8") as f:
        f.writelines(" ".join(f"{r['prompt']} {r['completion']}".split()) + "\n" for r in pairs)
    return paths


def tokenizer_copy(model_dir: Path, dest: Path) -> Path:
    """A folder holding only the tokenizer files of ``model_dir``."""
    dest.mkdir(parents=True)
    for name in TOKENIZER_FILES:
        if (model_dir / name).is_file():
            shutil.copy(model_dir / name, dest / name)
    return dest


def _status_mb(key: str = "VmRSS") -> float:
    """VmRSS or VmHWM (the peak) of this process, in MB. Not getrusage's ru_maxrss: that keeps
    the RSS of the parent that forked it across exec (harmless here: this parent is small)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key + ":")) / 1024


def child(case: dict) -> dict:
    """One measurement, in this (fresh) process: prepare the case's data once."""
    import numpy as np

    from hpo import data
    from hpo.spec import DataSpec

    spec = DataSpec.model_validate(
        {"path": case["path"], "format": case["format"], "block_size": 256, "validation_fraction": 0.05},
        context={"stored": True},
    )
    data.load_tokenizer(case["tokenizer"])  # imports and the tokenizer count as the baseline
    before = _status_mb()
    t0 = time.perf_counter()
    p = data.prepare(spec, case["tokenizer"], 0, Path(case["cache"]))
    wall = time.perf_counter() - t0
    peak = _status_mb("VmHWM")
    digest = hashlib.sha256()
    for name, a in sorted(p.arrays().items()):
        digest.update(name.encode() + np.ascontiguousarray(a).tobytes())
    return {
        "wall_s": round(wall, 2),
        "peak_rss_mb": round(peak),
        "rss_before_mb": round(before),
        "growth_mb": round(peak - before),
        "train_blocks": p.train_blocks,
        "val_blocks": p.val_blocks,
        "train_tokens": p.train_tokens,
        "sha256": digest.hexdigest()[:16],
        "hpo": str(Path(data.__file__).parent.parent),
    }


def child_datasets(case: dict) -> dict:
    """The ``datasets`` alternative, for comparison: load the pairs into Arrow (cached on disk,
    memory-mapped) and tokenize them with ``Dataset.map`` in batches of 1,024, the way the
    design card sketched; no cleaning, split or packing, so a lower bound on its cost."""
    import datasets

    from hpo import data

    datasets.disable_progress_bars()
    tok = data.load_tokenizer(case["tokenizer"])
    before = _status_mb()
    t0 = time.perf_counter()
    ds = datasets.Dataset.from_json(case["path"], cache_dir=case["cache"])

    def encode(batch: dict) -> dict:
        kw = {"add_special_tokens": False, "return_attention_mask": False}
        p = tok([x + "\n" for x in batch["prompt"]], **kw)["input_ids"]
        c = tok(batch["completion"], **kw)["input_ids"]
        return {"ids": [a + b + [tok.eos_token_id] for a, b in zip(p, c, strict=True)]}

    ds = ds.map(encode, batched=True, batch_size=1024, remove_columns=ds.column_names)
    wall = time.perf_counter() - t0
    peak = _status_mb("VmHWM")
    tokens = sum(len(x) for x in ds.with_format("numpy")["ids"][:1000])
    return {
        "wall_s": round(wall, 2),
        "peak_rss_mb": round(peak),
        "rss_before_mb": round(before),
        "growth_mb": round(peak - before),
        "train_blocks": 0,
        "val_blocks": 0,
        "train_tokens": tokens,
        "sha256": "-",
        "hpo": "datasets.map",
    }


def run_case(case: dict, hpo_dir: Path) -> dict:
    env = dict(
        os.environ, PYTHONPATH=str(hpo_dir), PYTHONDONTWRITEBYTECODE="1", TOKENIZERS_PARALLELISM="false"
    )
    out = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(case)], env=env, capture_output=True, text=True
    )
    if out.returncode:
        raise SystemExit(f"case {case['name']} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=200_000, help="generated pairs (default 200000)")
    ap.add_argument("--smollm2", type=Path, help="a SmolLM2 model folder: also bench its tokenizer")
    ap.add_argument("--hpo", type=Path, default=ROOT, help="the checkout whose hpo to measure")
    ap.add_argument("--kinds", default="pairs,chat,text", help="comma-separated: pairs, chat, text")
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument(
        "--datasets", action="store_true", help="also time datasets' from_json + map on the pairs"
    )
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        case = json.loads(args.child)
        print(json.dumps(child_datasets(case) if case.get("datasets") else child(case)))
        return
    from hpo import basemodel

    results = {"rows": args.rows, "hpo": str(args.hpo.resolve()), "cases": []}
    with tempfile.TemporaryDirectory(prefix="bench-data-") as tmp:
        t = Path(tmp)
        paths = write_data(args.rows, t)
        toks = {"tiny": tokenizer_copy(basemodel.tiny_gpt2(0), t / "tok-tiny")}
        if args.smollm2:
            toks["smollm2"] = tokenizer_copy(args.smollm2, t / "tok-smollm2")
        for tok_name, tok in toks.items():
            for kind in args.kinds.split(","):
                name = f"{tok_name}/{kind}"
                fmt = {"pairs": "jsonl", "chat": "chat", "text": "text"}[kind]
                case = {"name": name, "path": str(paths[kind]), "format": fmt, "tokenizer": str(tok)}
                case["cache"] = str(t / f"cache-{tok_name}-{kind}")
                r = run_case(case, args.hpo.resolve())
                results["cases"].append({"case": name, **r})
                print(
                    f"{name:<16} {r['wall_s']:>7.1f} s  peak RSS {r['peak_rss_mb']:>6} MB "
                    f"(+{r['growth_mb']} MB over {r['rss_before_mb']})  blocks {r['train_blocks']}"
                    f"+{r['val_blocks']}  sha256 {r['sha256']}",
                    flush=True,
                )
        if args.datasets:
            case = {"name": "datasets.map", "path": str(paths["pairs"]), "tokenizer": str(toks["tiny"])}
            case.update(cache=str(t / "cache-datasets"), datasets=True)
            r = run_case(case, args.hpo.resolve())
            results["cases"].append({"case": "tiny/pairs datasets.map (tokenize only)", **r})
            print(
                f"tiny/pairs datasets.map (tokenize only) {r['wall_s']:>7.1f} s  peak RSS "
                f"{r['peak_rss_mb']:>6} MB (+{r['growth_mb']} MB over {r['rss_before_mb']})",
                flush=True,
            )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
