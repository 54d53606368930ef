"""Does searching augmentation help a small fine-tuning set? (issue 21, part 4)

The demo study's model (hpo's tiny GPT-2; ``--workload smollm2``: SmolLM2-135M, the realistic
study's model and learning-rate range) on a small training set: the first ``--train`` rows of
the shipped support pairs, validated on a separate clean set (``--val`` other rows; never
augmented). Two arms at the same trial budget (the same number of trials, epochs, ASHA settings
and search space besides augmentation), each run once per seed:

- ``clean``: learning rate, batch size, epochs and dropout searched;
- ``augment``: the same, plus ``augment_p`` (every operation's p, 0-0.3) and ``augment_copies``
  (0, 1 or 2: 0 is no augmentation, so the search can turn it off);
- ``clean_long``: ``clean`` with up to 3x the epochs: as many optimizer steps as an augmented
  trial with 2 copies can take, to tell the effect of augmentation from that of more steps.

It reports each run's best eval loss on the clean validation set (the objective), per arm the
mean and spread over seeds. An augmented epoch holds more examples (its copies), so an augmented
trial takes more optimizer steps at the same epochs: that is what offline augmentation costs.

    flock /tmp/hpo-heavy.lock .venv/bin/python scripts/augment_measure.py --json docs/bench/augment-tiny.json
    .venv/bin/python scripts/augment_measure.py --trials 2 --seeds 0   # a smoke run
    # the realistic study's model (SmolLM2-135M), 4 trials of up to 1 epoch (3 for clean_long) a run:
    flock /tmp/hpo-heavy.lock .venv/bin/python scripts/augment_measure.py --workload smollm2 \
        --trials 4 --max-epochs 1 --json docs/bench/augment-smollm2.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
SUPPORT = ROOT / "studies" / "data" / "support.jsonl"


def write_data(folder: Path, n_train: int, n_val: int) -> tuple[Path, Path]:
    """The first ``n_train`` support rows and a clean validation set from the end of the file."""
    lines = SUPPORT.read_text(encoding="utf-8").splitlines()
    train, val = folder / "train.jsonl", folder / "val.jsonl"
    train.write_text("\n".join(lines[:n_train]) + "\n", encoding="utf-8")
    val.write_text("\n".join(lines[-n_val:]) + "\n", encoding="utf-8")
    return train, val


#: What differs between the two workloads: the model and a learning-rate range that suits it.
WORKLOADS = {
    "tiny": {"model": "hpo:tiny-gpt2", "lr": (3e-4, 1e-2)},  # trained from scratch by hpo: high rates
    "smollm2": {"model": "hpo:smollm2-135m", "lr": (1e-5, 5e-4)},  # pretrained: studies/smollm2.yaml's range
}


def spec(name: str, seed: int, arm: str, max_epochs: int, workload: str = "tiny") -> dict[str, Any]:
    augmented = arm == "augment"
    max_epochs = 3 * max_epochs if arm == "clean_long" else max_epochs
    low, high = WORKLOADS[workload]["lr"]
    space: dict[str, Any] = {
        "learning_rate": {"type": "float", "low": low, "high": high, "log": True},
        "batch_size": {"type": "categorical", "choices": [8, 16]},
        "epochs": {"type": "int", "low": 1, "high": max_epochs},
        "dropout": {"type": "float", "low": 0.0, "high": 0.2},
        "weight_decay": 0.01,
    }
    data: dict[str, Any] = {"path": "train.jsonl", "validation_path": "val.jsonl", "block_size": 128}
    if augmented:
        p = {"p": {"param": "augment_p"}}
        data["augment"] = {
            "copies": {"param": "augment_copies"},
            "seed": seed,
            "ops": {"word_dropout": p, "word_swap": p, "typo": p, "insert": p, "template": p},
        }
        space["augment_p"] = {"type": "float", "low": 0.0, "high": 0.3}
        space["augment_copies"] = {"type": "categorical", "choices": [0, 1, 2]}
    return {
        "name": name,
        "model": WORKLOADS[workload]["model"],
        "data": data,
        "space": space,
        "schedule": {"type": "asha", "grace_period": 0.5, "reduction_factor": 2},
        "training": {"eval_every": 0.5},
        "resources": {"cpus_per_trial": 1, "concurrency": 2},
        "sampler": "tpe",
        "seed": seed,
    }


def run_arm(
    folder: Path, name: str, seed: int, arm: str, trials: int, max_epochs: int, workload: str
) -> dict[str, Any]:
    from hpo import create_study, run_study
    from hpo.summary import best_complete

    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec(name, seed, arm, max_epochs, workload), sort_keys=False))
    url = f"sqlite:///{folder / 'hpo.db'}"
    create_study(path, storage=url)
    t0 = time.perf_counter()
    summary = run_study(name, trials=trials, storage=url, runs_dir=folder / "runs" / name)
    import optuna

    study = optuna.load_study(study_name=name, storage=url)
    best = best_complete(study.get_trials(deepcopy=False), study.direction)
    assert best is not None, f"{name}: no complete trial"
    return {
        "arm": arm,
        "seed": seed,
        "best_eval_loss": best.value,
        "best_params": best.params,
        "counts": summary.counts,
        "wall_s": round(time.perf_counter() - t0, 1),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--train", type=int, default=200, help="training rows (before cleaning)")
    ap.add_argument("--val", type=int, default=150, help="clean validation rows")
    ap.add_argument("--trials", type=int, default=8, help="finished trials per run (the same budget per arm)")
    ap.add_argument("--max-epochs", type=int, default=3)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--arms", nargs="+", default=["clean", "augment", "clean_long"])
    ap.add_argument("--json", type=Path, help="write the results here")
    ap.add_argument(
        "--workload",
        choices=sorted(WORKLOADS),
        default="tiny",
        help="tiny: hpo's tiny GPT-2; smollm2: SmolLM2-135M (hpo model get smollm2-135m first)",
    )
    args = ap.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="hpo-augment-") as tmp:
        folder = Path(tmp)
        write_data(folder, args.train, args.val)
        for seed in args.seeds:
            for arm in args.arms:
                name = f"{arm}-s{seed}"
                rows.append(run_arm(folder, name, seed, arm, args.trials, args.max_epochs, args.workload))
                print(json.dumps(rows[-1]), flush=True)
                _write(args, rows)  # after each run: a cut-short measurement keeps what it has
    _write(args, rows)
    return 0


def _write(args: argparse.Namespace, rows: list[dict[str, Any]]) -> None:
    arms = {}
    for arm in args.arms:
        losses = [r["best_eval_loss"] for r in rows if r["arm"] == arm]
        if not losses:
            continue
        arms[arm] = {
            "best_eval_loss": losses,
            "mean": statistics.mean(losses),
            "stdev": statistics.stdev(losses) if len(losses) > 1 else 0.0,
        }
        each = " ".join(f"{x:.4f}" for x in losses)
        print(f"{arm:10s} best eval loss over seeds: {each}  mean {arms[arm]['mean']:.4f}")
    out = {"settings": vars(args) | {"json": str(args.json)}, "runs": rows, "arms": arms}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    sys.exit(main())
