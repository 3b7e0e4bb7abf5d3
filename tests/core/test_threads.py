"""weightzip.core.threads: the core's thread-pool map."""

import numpy as np
from threadpoolctl import threadpool_info

from weightzip.core.threads import threaded_map


def _blas_threads() -> list[int]:
    return [entry["num_threads"] for entry in threadpool_info() if entry["user_api"] == "blas"]


def test_results_come_back_in_the_order_of_the_items():
    assert threaded_map(lambda x: x * x, list(range(20)), 2) == [x * x for x in range(20)]
    assert threaded_map(lambda x: -x, [3], 4) == [-3]  # one item: no pool


def test_blas_runs_on_one_thread_inside_the_workers_and_is_restored_after():
    np.ones((4, 4)) @ np.ones((4, 4))  # BLAS loaded
    before = _blas_threads()
    inside = threaded_map(lambda _: _blas_threads(), [0, 1], 2)
    assert inside == [[1] * len(before)] * 2
    assert _blas_threads() == before
