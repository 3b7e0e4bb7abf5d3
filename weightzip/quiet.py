"""Quiet frameworks for the command line: no TensorFlow/absl log lines or framework warnings unless asked.

TensorFlow's C++ runtime logs through its own logger (controlled only by the environment variable
``TF_CPP_MIN_LOG_LEVEL``, read when TensorFlow is imported), Keras and TensorFlow's Python side log
through absl/``logging``, transformers draws progress bars, and Keras and PyTorch warn through :mod:`warnings`. A successful command
prints none of that by default; ``weightzip -v`` leaves all of it as the frameworks configure it.
Errors are unaffected: weightzip reports them itself.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings

_LOGGERS = ("absl", "tensorflow", "keras", "h5py", "torch", "transformers")


def quiet_frameworks(*, verbose: bool = False) -> None:
    """Silence framework logs and warnings for this process (call before TensorFlow is imported)."""
    if verbose:
        return
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"  # C++ logs: only fatal ones
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")  # its import-time notice ignores the log level on some builds
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"  # transformers' "Loading weights" bars (read at import)
    os.environ["TRANSFORMERS_VERBOSITY"] = "error"
    warnings.filterwarnings("ignore")
    for name in _LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    if "transformers" in sys.modules:  # imported already: its environment variables were read
        sys.modules["transformers"].utils.logging.disable_progress_bar()
    try:
        import absl.logging
    except ImportError:  # absl comes with TensorFlow; without it there is nothing to silence
        return
    absl.logging.set_verbosity(absl.logging.ERROR)
