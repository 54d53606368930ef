"""Run one benchmarked system in this (fresh) process: ``python -m bench_peers SYSTEM CONFIG_JSON``.

CONFIG_JSON holds ``settings``, ``data_path``, ``model_path``, ``work_dir``, ``result_path`` and,
for hpo, ``spec_path``. The system's figures go to ``result_path`` as JSON.
"""

from __future__ import annotations

import importlib
import json
import sys
import time

SYSTEMS = {
    "hpo": "bench_peers.hpo_system",
    "hpo_fp32": "bench_peers.hpo_system",
    "hf_ray": "bench_peers.hf_ray",
    "tune_optuna": "bench_peers.tune_optuna",
    "hf_optuna": "bench_peers.hf_optuna",
    "micro_plain": "bench_peers.micro",
    "micro_plain_bf16": "bench_peers.micro",
    "micro_hpo": "bench_peers.micro",
    "micro_hpo_fp32": "bench_peers.micro",
    "profile": "bench_peers.profile",
}


def main(argv: list[str]) -> int:
    t_start = time.time()
    if len(argv) != 2 or argv[0] not in SYSTEMS:
        print(f"usage: python -m bench_peers {{{','.join(SYSTEMS)}}} CONFIG_JSON", file=sys.stderr)
        return 2
    name, config_path = argv
    with open(config_path) as f:
        cfg = json.load(f)
    cfg["t_main"] = t_start
    module = importlib.import_module(SYSTEMS[name])
    result = module.run(name, cfg)
    result["t_imported"] = cfg.get("t_imported")
    with open(cfg["result_path"], "w") as f:
        json.dump(result, f, indent=1, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
