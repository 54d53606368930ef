"""Heavy imports with the cyclic garbage collector paused.

Importing torch, transformers and Ray allocates hundreds of thousands of objects (modules,
functions, classes) that all stay alive. Python's collector starts a collection every 700 net
allocations, so it ran ~1,000 times during the trial's imports, walking ever more live objects and
freeing almost nothing. Paused, the same imports took 3.1-3.9 s instead of 3.9-5.1 s (2 cores, the
tiny model's ``trial.import_code``), and the driver's optuna + Ray Tune imports 1.1-1.3 s instead
of 1.6-1.7 s. Reference counting still frees everything that is not in a cycle; the collector
picks up the rest once it runs again.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator


@contextlib.contextmanager
def paused() -> Iterator[None]:
    """Pause automatic collections inside the block (nested blocks too); the state before returns
    after it."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
