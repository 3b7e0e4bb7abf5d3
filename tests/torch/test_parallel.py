"""Parallel compression of safetensors checkpoints (issue 12 item 4): --jobs N worker processes and a Dask
distributed cluster (--scheduler) write the same bytes as the serial run; failures end the run with one line
and no output."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import socket
import time

import numpy as np
import pytest
from safetensors.numpy import save_file

from weightzip.cli import main
from weightzip.format import read_tensor
from weightzip.torch.hf import compress_safetensors
from weightzip.torch.parallel import ParallelError


def _checkpoint(directory, tensors: int = 8):
    """A two-shard checkpoint: `tensors` weight matrices of assorted shapes plus a norm gain per shard."""
    rng = np.random.default_rng(0)
    names = [f"layers.{i}.weight" for i in range(tensors)]
    weight_map, shards = {}, [{}, {}]
    for i, name in enumerate(names):
        shards[i % 2][name] = (rng.standard_normal((48 + 8 * i, 96)) * 0.02).astype(np.float32)
    for j, shard in enumerate(shards):
        shard[f"norm.{j}.weight"] = (1 + 0.05 * rng.standard_normal(96)).astype(np.float32)
        file = f"model-{j + 1:05d}-of-00002.safetensors"
        save_file(shard, str(directory / file))
        weight_map.update({name: file for name in shard})
    index = directory / "model.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {"total_size": 0}, "weight_map": weight_map}))
    return index


def _leftovers(directory):
    return sorted(p.name for p in directory.iterdir() if p.suffix == ".wz" or p.name.startswith("."))


def test_jobs_writes_the_serial_bytes(tmp_path):
    index = _checkpoint(tmp_path)
    serial = compress_safetensors(index, tmp_path / "serial.wz", number_of_clusters=16)
    parallel = compress_safetensors(index, tmp_path / "jobs.wz", number_of_clusters=16, jobs=2)
    assert (tmp_path / "jobs.wz").read_bytes() == (tmp_path / "serial.wz").read_bytes()
    assert parallel.tensors == serial.tensors and parallel.output_bytes == serial.output_bytes
    assert any(t.action == "clustered" for t in parallel.tensors) and any(t.action == "kept" for t in parallel.tensors)


def test_cli_jobs_matches_serial_and_refuses_bad_counts(tmp_path, capsys):
    index = _checkpoint(tmp_path, tensors=4)
    assert main(["compress", str(index), "--clusters", "8", "--sparsity", "0.5", "-o", str(tmp_path / "a.wz")]) == 0
    assert main(["compress", str(index), "--clusters", "8", "--sparsity", "0.5", "--jobs", "2",
                 "-o", str(tmp_path / "b.wz")]) == 0
    assert (tmp_path / "a.wz").read_bytes() == (tmp_path / "b.wz").read_bytes()
    capsys.readouterr()
    for bad in ("0", "-3"):
        assert main(["compress", str(index), "--clusters", "8", "--jobs", bad, "-o", str(tmp_path / "c.wz")]) == 2
        error = capsys.readouterr().err.strip()
        assert error.count("\n") == 0 and "--jobs must be an integer >= 1" in error
    assert main(["compress", str(index), "--jobs", "2", "--scheduler", "tcp://127.0.0.1:1",
                 "-o", str(tmp_path / "c.wz")]) == 2
    assert "exclude each other" in capsys.readouterr().err
    assert not (tmp_path / "c.wz").exists()


def test_a_worker_killed_mid_run_fails_the_run_and_leaves_no_output(tmp_path):
    index = _checkpoint(tmp_path, tensors=12)
    killed = []

    def kill_a_worker(name, done, total):
        if name and not killed:  # the first tensor is back: the pool's workers are running the next ones
            worker = multiprocessing.active_children()[0]
            os.kill(worker.pid, signal.SIGKILL)
            killed.append(worker.pid)

    with pytest.raises(ParallelError, match="worker process died") as raised:
        compress_safetensors(index, tmp_path / "out.wz", number_of_clusters=16, jobs=2, progress=kill_a_worker)
    assert killed and "\n" not in str(raised.value)
    assert _leftovers(tmp_path) == []


def test_an_unanswering_scheduler_is_reported_within_10_s(tmp_path, capsys):
    # Imported before the clock starts: the 10 s are the connection attempt's, not the import's (distributed
    # takes 2-8 s to import on a loaded 2-core machine, a cost paid once per process, not per scheduler).
    from distributed import Client  # noqa: F401  (dask[distributed] is in the 'parallel' extra: required here)

    index = _checkpoint(tmp_path, tensors=2)
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    start = time.monotonic()
    code = main(["compress", str(index), "--clusters", "4", "--scheduler", f"tcp://127.0.0.1:{port}",
                 "-o", str(tmp_path / "out.wz")])
    assert time.monotonic() - start < 10
    error = capsys.readouterr().err.strip()
    assert code == 2 and error.count("\n") == 0 and f"127.0.0.1:{port} did not answer" in error
    assert _leftovers(tmp_path) == []


def test_local_cluster_writes_the_serial_bytes_and_a_failing_task_leaves_no_output(tmp_path):
    distributed = pytest.importorskip("distributed", reason="dask[distributed] is in the 'parallel' extra")
    index = _checkpoint(tmp_path)
    compress_safetensors(index, tmp_path / "serial.wz", number_of_clusters=16)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                  worker_dashboard_address=None) as cluster:
        summary = compress_safetensors(index, tmp_path / "dask.wz", number_of_clusters=16,
                                       scheduler=cluster.scheduler_address)
        assert (tmp_path / "dask.wz").read_bytes() == (tmp_path / "serial.wz").read_bytes()
        assert len(summary.tensors) == 10
        np.testing.assert_array_equal(read_tensor(tmp_path / "dask.wz", "layers.3.weight").decode(),
                                      read_tensor(tmp_path / "serial.wz", "layers.3.weight").decode())

        shard = tmp_path / "model-00002-of-00002.safetensors"

        def truncate_a_shard(name, done, total):  # shared storage changing under the workers: their tasks raise
            if name and shard.stat().st_size > 64:
                with open(shard, "r+b") as handle:
                    handle.truncate(64)

        with pytest.raises(ParallelError, match="was the file changed during the run") as raised:
            compress_safetensors(index, tmp_path / "broken.wz", number_of_clusters=16,
                                 scheduler=cluster.scheduler_address, progress=truncate_a_shard)
        assert "\n" not in str(raised.value)
    assert not (tmp_path / "broken.wz").exists()
    assert _leftovers(tmp_path) == ["dask.wz", "serial.wz"]


def test_warm_up_loads_the_encoders_kernels_in_the_parent_before_workers_are_forked():
    """--jobs forks its workers from a parent that has run the encoder once (parallel.warm_up): they inherit
    numba's start-up and the loaded kernels instead of each paying ~0.9 CPU s. Checked in a fresh process."""
    import subprocess
    import sys

    code = """
from weightzip import parallel
from weightzip.core import CentroidInitialization, ClusterConfig
from weightzip.core.assign import _assign_kernel
from weightzip.core.optimal import _bin_moments, _optimal_run_starts
from weightzip.format import WriteOptions
kernels = (_assign_kernel, _bin_moments, _optimal_run_starts)
assert not any(kernel.signatures for kernel in kernels)
for k in (16, 256):
    settings = parallel.EncodeSettings(ClusterConfig(k, CentroidInitialization.OPTIMAL, axis=None), False, 256, None,
                                       WriteOptions().encode_options())
    parallel.warm_up(settings)
    assert all(kernel.signatures for kernel in kernels), [kernel.signatures for kernel in kernels]
print("ok")
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]
