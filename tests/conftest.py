"""Shared test setup: one CPU thread everywhere, one local Ray cluster per session.

The CI and dev machines have 2 cores; two processes with 2 threads each run 10-100x slower, so every
test process and Ray worker uses one torch/BLAS thread.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("KALDI_ROOT", "/nonexistent-kaldi-root")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def ray_cluster():
    """A local Ray instance (2 CPUs, no dashboard) shared by all tests of the session (~3 s to start)."""
    import ray
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False,
                 runtime_env={"env_vars": {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}})
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    yield ray
    ray.shutdown()
