"""The garbage collector paused around heavy imports comes back as it was, whatever happens inside."""

from __future__ import annotations

import gc

import pytest

from hpo import gcpause


def test_paused_inside_and_restored_after():
    assert gc.isenabled()
    with gcpause.paused():
        assert not gc.isenabled()
        with gcpause.paused():  # nested: the inner block must not turn it back on early
            assert not gc.isenabled()
        assert not gc.isenabled()
    assert gc.isenabled()


def test_restored_when_the_block_raises():
    with pytest.raises(ImportError), gcpause.paused():
        raise ImportError("no such module")
    assert gc.isenabled()


def test_a_collector_that_was_off_stays_off():
    gc.disable()
    try:
        with gcpause.paused():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_the_trials_imports_leave_the_collector_on(tiny_model):
    from hpo import trial

    trial.import_code(tiny_model)
    assert gc.isenabled()
