"""The systems ``scripts/bench.py`` compares, each run in its own process by ``python -m bench_peers``.

Adapted from the peer scripts measured for issue 5 (``shared/bench/peers``): the same peers, now fed
hpo's prepared blocks and base model, with one search space, one ASHA setting and timing callbacks
that separate training steps and evaluations from everything else.

| module | system |
| --- | --- |
| ``hpo_system`` | hpo itself (``run_study``), figures read back from the Optuna storage |
| ``hf_ray`` | HF ``Trainer.hyperparameter_search(backend="ray")`` + ASHA |
| ``tune_optuna`` | Ray Tune ``Tuner`` + ``OptunaSearch(storage=...)`` + ASHA, HF Trainer inside |
| ``hf_optuna`` | HF ``Trainer.hyperparameter_search(backend="optuna")`` + SuccessiveHalvingPruner |
| ``micro`` | one plain HF Trainer fine-tune vs one hpo trial loop, same configuration |
| ``profile`` | hpo with timing probes in the driver and every trial process (``--profile``) |
"""
