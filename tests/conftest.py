"""Suite-wide settings: Hypothesis without per-example deadlines (CI machines are slow and shared), and one
numba cache directory per pytest-xdist worker.

numba's on-disk cache is not safe for processes that compile different signatures of one function at the
same time: each picks the next free file number from the index it read, so two workers can both write
``f-<line>.py311.1.nbc`` while the index ends up mapping a signature to the other's machine code, and a
later process that loads it crashes (seen: SIGSEGV in ``_numba_fast.search_and_look_up`` after a
``pytest -n 2`` run). Each worker (and every subprocess it starts, which inherits the environment) keeps
its own cache under ``build/numba-cache/``; set ``NUMBA_CACHE_DIR`` to choose another place."""

import os
from pathlib import Path

from hypothesis import HealthCheck, settings

_WORKER = os.environ.get("PYTEST_XDIST_WORKER")
if _WORKER and "NUMBA_CACHE_DIR" not in os.environ:  # before anything imports numba (it reads this once)
    os.environ["NUMBA_CACHE_DIR"] = str(Path(__file__).resolve().parents[1] / "build" / "numba-cache" / _WORKER)

settings.register_profile("weightzip", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("weightzip")
