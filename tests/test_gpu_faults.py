"""Sticky CUDA errors (hpo/cudafault.py): told apart by their text, the trial fails with
``CudaError``, and its process is not used for another trial.

Without a GPU, the ``HPO_TEST_FAIL=N:cuda`` hook raises the text CUDA gives for an illegal memory
access (on a GPU it fires a real device-side assert: scripts/gpu_smoke.py). What the runner relies
on from Ray Tune (a Ray process whose trial errored is never given another trial) is checked on a
real Tune run, so a Tune that changes it fails here."""

from __future__ import annotations

import json
import subprocess
import sys

import optuna
import pytest
from optuna.trial import TrialState

from hpo import cudafault, faultinject, trial
from hpo.errors import CudaError
from hpo.warmstart import TrialProcessError
from tests.conftest import run_cli, small_spec, trial_config
from tests.test_trial import PARAMS

DSA_TAIL = (
    "\nCUDA kernel errors might be asynchronously reported at some other API call, so the stacktrace "
    "below might be incorrect.\nFor debugging consider passing CUDA_LAUNCH_BLOCKING=1\n"
    "Compile with `TORCH_USE_CUDA_DSA` to enable device-side assertions.\n"
)


@pytest.mark.parametrize(
    ("error_class", "message"),
    [
        ("AcceleratorError", "CUDA error: an illegal memory access was encountered" + DSA_TAIL),
        ("RuntimeError", "CUDA error: device-side assert triggered" + DSA_TAIL),
        ("AcceleratorError", "CUDA error: unspecified launch failure" + DSA_TAIL),
        ("AcceleratorError", "CUDA error: misaligned address" + DSA_TAIL),
        ("RuntimeError", "CUDA error: CUBLAS_STATUS_EXECUTION_FAILED when calling `cublasGemmEx(...)`"),
        ("RuntimeError", "Triton Error [CUDA]: an illegal memory access was encountered"),
        ("CUDADriverError", "CUDA_ERROR_ILLEGAL_ADDRESS: an illegal memory access was encountered"),
        ("TrialError", "rank 1 of 2 failed: CUDA error: an illegal memory access was encountered"),
    ],
)
def test_sticky_cuda_errors_are_told_by_their_text(error_class, message):
    assert cudafault.sticky(error_class, message)


@pytest.mark.parametrize(
    ("error_class", "message"),
    [
        # every CUDA error from torch ends with the DSA line: "device-side assertions" is not an assert
        ("AcceleratorError", "CUDA error: invalid argument" + DSA_TAIL),
        ("OutOfMemoryError", "CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity"),
        ("RuntimeError", "CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"),
        ("RuntimeError", "Cannot re-initialize CUDA in forked subprocess."),
        ("ValueError", "misaligned address in the packed data"),  # not a CUDA error at all
        ("TrialError", "training loss became nan at step 2; lower learning_rate"),
        ("RuntimeError", ""),
    ],
)
def test_other_errors_are_not_sticky(error_class, message):
    assert not cudafault.sticky(error_class, message)


def test_a_sticky_error_becomes_one_cuda_error_with_a_one_line_message():
    broken = cudafault.fault(RuntimeError("CUDA error: device-side assert triggered" + DSA_TAIL))
    assert isinstance(broken, CudaError)
    text = str(broken)
    assert "\n" not in text and text.startswith("CUDA error: device-side assert triggered")
    assert "replaced" in text
    # what a forked trial process sends back is already one: not wrapped again
    assert cudafault.fault(TrialProcessError("CudaError", text)) is None
    assert cudafault.fault(broken) is None
    assert cudafault.fault(RuntimeError("CUDA out of memory. Tried to allocate 20.00 MiB")) is None


def test_the_test_hook_fails_a_trial_with_a_sticky_cuda_error(prepared, tiny_model, tmp_path, monkeypatch):
    monkeypatch.setenv(faultinject.FAIL_ENV, "0:cuda")
    with pytest.raises(RuntimeError) as failed:
        trial.run(trial_config(prepared, tiny_model, tmp_path / "c", PARAMS), lambda m: None)
    assert isinstance(cudafault.fault(failed.value), CudaError)


TUNE_REUSE = """
import json, os, sys
from pathlib import Path
from ray import tune
from hpo import raystart

out = Path(sys.argv[1])
assert raystart.start(out / "runs")

def trainable(config):
    (out / f"pid-{config['n']}").write_text(str(os.getpid()))
    if config["n"] == 1:
        raise RuntimeError("this trial errors")
    tune.report({"x": config["n"]})

tuner = tune.Tuner(
    tune.with_resources(trainable, {"cpu": 1}),
    param_space={"n": tune.grid_search([0, 1, 2, 3])},
    tune_config=tune.TuneConfig(max_concurrent_trials=1, reuse_actors=True),
    run_config=tune.RunConfig(
        storage_path=str(out / "ray"), verbose=0, failure_config=tune.FailureConfig(max_failures=0)
    ),
)
tuner.fit()
raystart.stop()
print(json.dumps({n: int((out / f"pid-{n}").read_text()) for n in range(4)}))
"""


@pytest.mark.e2e
def test_tune_never_gives_the_process_of_a_trial_that_errored_another_trial(tmp_path):
    """What ``trainable.run_trial`` relies on when a trial that trains in its Ray process hits a
    sticky CUDA error: it raises, and Tune ends that process instead of reusing it."""
    r = subprocess.run(
        [sys.executable, "-c", TUNE_REUSE, str(tmp_path)], capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stderr[-3000:]
    pids = {int(k): v for k, v in json.loads(r.stdout.strip().splitlines()[-1]).items()}
    assert pids[1] == pids[0]  # reuse is on: a trial that completed hands its process on
    assert pids[2] != pids[1]  # the process of the trial that errored was not reused
    assert pids[3] == pids[2]


@pytest.mark.e2e
@pytest.mark.parametrize("warm", ["1", pytest.param("0", marks=pytest.mark.slow)])
def test_a_sticky_cuda_error_fails_its_trial_and_the_study_goes_on(tmp_path, tiny_model, warm):
    """A real ``hpo run``, one trial at a time: trial 0 hits the error, trials 1 and 2 run in a
    new process (forked from the warm process, or a new Ray process: ``HPO_WARM_START=0``)."""
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    spec = small_spec(tmp_path, name="sticky", rows=200)
    assert run_cli("study", "create", str(spec), "--storage", url, cwd=tmp_path).returncode == 0
    env = {"HPO_TEST_FAIL": "0:cuda", "HPO_WARM_START": warm}
    r = run_cli("run", "--trials", "2", "--concurrency", "1", "--storage", url, cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    trials = optuna.load_study(study_name="sticky", storage=url).get_trials()
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert [t.number for t in failed] == [0]
    assert failed[0].user_attrs["error_class"] == "CudaError"
    assert "illegal memory access" in failed[0].user_attrs["error_message"]
    assert sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials) == 2
