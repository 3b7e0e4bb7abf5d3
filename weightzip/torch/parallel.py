"""Parallel compression of safetensors checkpoints: :mod:`weightzip.parallel` (NumPy only), re-exported."""

from weightzip.parallel import (  # noqa: F401
    CONNECT_TIMEOUT_S,
    TASKS_PER_WORKER,
    EncodeSettings,
    ParallelError,
    TensorTask,
    check_parallel_options,
    checkpoint_tasks,
    encode_task,
    ordered_map,
)
