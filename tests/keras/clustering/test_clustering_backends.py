"""The backend-agnostic clustering tests (marked ``backend_matrix``) on the PyTorch and JAX Keras backends.

Keras fixes its backend when first imported, so each backend runs in its own pytest subprocess with
KERAS_BACKEND set; this process (TensorFlow by default) runs the same tests directly.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import keras
import pytest

HERE = Path(__file__).parent
MATRIX_FILES = sorted(str(path) for path in HERE.glob("test_clustering_*.py") if path.name != Path(__file__).name) + [
    str(HERE.parent / "pipeline" / "test_keras_calibration.py")]  # per-sample Fisher gradients are backend-specific
assert len(MATRIX_FILES) == 7 and all(Path(path).is_file() for path in MATRIX_FILES), MATRIX_FILES


# Backend-matrix tests that must pass (not skip) in each subprocess: on torch all but the TensorFlow ones (90; 92
# where numba's vector products run, AVX-512 or AVX2 with FMA, and the fused Dense tests run); on JAX the cases of
# keras_clustering_helpers.JAX_CASES and the other JAX subsets (JAX compiles every eager op per shape: ~3 s of
# CPU a case; 3 more where the fused Dense tests run: 50 on an AVX2 machine). Raise these when more cases run.
MINIMUM_PASSED = {"torch": 90, "jax": 41}


@pytest.mark.parametrize("backend", ["torch", "jax"])
def test_clustering_on_backend(backend):
    if keras.backend.backend() == backend:
        pytest.skip(f"this process already runs on {backend}")
    pytest.importorskip(backend)
    env = {**os.environ, "KERAS_BACKEND": backend, "CUDA_VISIBLE_DEVICES": "", "JAX_PLATFORMS": "cpu"}
    command = [sys.executable, "-m", "pytest", "-q", "-m", "backend_matrix", "-p", "no:cacheprovider",
               "-p", "no:randomly", "-W", "ignore::DeprecationWarning", *MATRIX_FILES]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1200, cwd=HERE.parent.parent.parent)
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
    assert result.returncode == 0, f"{backend}: {summary}\n{result.stdout[-6000:]}\n{result.stderr[-3000:]}"
    assert " passed" in summary and "failed" not in summary and "error" not in summary, summary
    passed = int(re.search(r"(\d+) passed", summary).group(1))
    assert passed >= MINIMUM_PASSED[backend], f"{backend}: only {passed} backend-matrix tests ran: {summary}"
