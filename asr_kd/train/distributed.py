"""Data-parallel training on Ray Train: ``asr-kd train --workers N`` (DDP, CPU or GPU).

Each worker runs the same ``Trainer`` as single-process training with its rank: the deterministic plan
is cut into batches of ``batch.max_frames / N`` frames, worker ``r`` takes batches ``r, r+N, ...``,
gradients are averaged by DDP (gloo on CPU, NCCL on GPU) — so an optimizer step sees about
``batch.max_frames`` frames whatever ``N`` is — and only rank 0 writes checkpoints, metrics and the
final model dir, so the results format is identical to ``--workers 1``. Worker output is not forwarded
(``log_to_driver=False``); the driver draws the progress bar from rank 0's ``progress.json``.

On CPU each worker gets one thread (``threads_per_worker``): on this project's 2-core machine two
1-thread workers train the teacher ~1.5x faster than one process with 2 threads. Paths in the config
are made absolute first, because Ray workers do not run in the caller's directory.

Nothing listens beyond the machine: the local Ray cluster binds loopback and uses a per-run token
(``asr_kd.label.ray_runtime.init_ray``), Gloo/NCCL talk over ``lo``, and the DDP rendezvous is a
``FileStore`` in a private temporary directory instead of Ray Train's default ``TCPStore``, whose
server torch binds to all interfaces.

``--address auto|HOST:PORT`` trains on an existing Ray cluster (joined with token authentication, like
``asr-kd label --address``). The multi-node assumption: every node sees the config's data dirs, the
store, ``units.from_model`` and ``--out`` at the same paths (a shared filesystem, as Kaldi and icefall
clusters have). The rendezvous file then lies in a private directory under ``--out`` on that
filesystem (removed at the end), and Gloo/NCCL use the nodes' network interfaces.
"""

from __future__ import annotations

import logging
import shutil
import sys
import tempfile
from pathlib import Path

from asr_kd.devices import layout_line, per_gpu
from asr_kd.errors import AsrKdError, remote_error_message
from asr_kd.train.config import TrainConfig

log = logging.getLogger(__name__)


def absolutize(config: TrainConfig) -> TrainConfig:
    """A copy of ``config`` whose data dirs, store and units paths are absolute."""
    c = config.model_copy(deep=True)
    ab = lambda p: str(Path(p).resolve()) if p else p  # noqa: E731
    c.data.train = [ab(p) for p in c.data.train]
    c.data.unlabeled = [ab(p) for p in c.data.unlabeled]
    c.data.dev = ab(c.data.dev)
    c.units.from_model = ab(c.units.from_model)
    if c.kd is not None:
        c.kd.store = ab(c.kd.store) if isinstance(c.kd.store, str) else [ab(p) for p in c.kd.store]
    return c


def _worker_loop(cfg: dict) -> None:
    import ray.train
    import torch

    from asr_kd.train.loop import train

    torch.set_num_threads(cfg["threads"])
    ctx = ray.train.get_context()
    # the validated object itself (pickled by Ray): a dump re-validated here would count defaults as keys
    # the user set, which the config's "key does nothing" checks refuse
    config = cfg["config"] if isinstance(cfg["config"], TrainConfig) else TrainConfig.model_validate(cfg["config"])
    # the worker's CPU share, not the single-process train.threads: N workers x 2 threads on 2 cores
    # would oversubscribe them (and torch/OpenMP spin-waits make that 10-100x slower)
    config.train.threads = cfg["threads"]
    # worker output is not forwarded to the driver (log_to_driver=False); the driver shows a bar from
    # rank 0's progress.json instead
    train(config, cfg["out"], resume=cfg["resume"], progress=False,
          rank=ctx.get_world_rank(), world_size=ctx.get_world_size(), command=cfg["command"])


def _require_cuda() -> None:
    """Run in each GPU worker: fail with the reason when CUDA is unusable there (asr_kd.devices)."""
    from asr_kd.devices import resolve_device

    resolve_device("cuda")


def file_store_torch_config(store_file: str):
    """A Ray Train ``TorchConfig`` whose process group meets in ``file://store_file`` (a FileStore: no
    socket) instead of a TCPStore on rank 0 (torch binds its server to all interfaces). On a cluster
    ``store_file`` must be on the filesystem every node shares (``train_distributed`` puts it under --out)."""
    import dataclasses

    import ray
    from ray.train.torch import TorchConfig
    from ray.train.torch.config import (V1WorkerGroup, _set_torch_distributed_env_vars, _setup_torch_process_group,
                                        _TorchBackend)

    class _FileStoreTorchBackend(_TorchBackend):
        def on_start(self, worker_group, backend_config):
            backend = backend_config.backend
            if backend is None:
                backend = "nccl" if worker_group.get_resources_per_worker().get("GPU", 0) > 0 else "gloo"
            if backend == "nccl":  # before NCCL's own failure, say why a GPU worker cannot use its GPU
                worker_group.execute(_require_cuda)
            if not isinstance(worker_group, V1WorkerGroup):
                worker_group.execute(_set_torch_distributed_env_vars)
            ray.get([worker_group.execute_single_async(i, _setup_torch_process_group, backend=backend, world_rank=i,
                                                       world_size=len(worker_group), init_method=f"file://{store_file}",
                                                       timeout_s=backend_config.timeout_s)
                     for i in range(len(worker_group))])

    @dataclasses.dataclass
    class _FileStoreTorchConfig(TorchConfig):
        @property
        def backend_cls(self):
            return _FileStoreTorchBackend

    return _FileStoreTorchConfig()


def _use_gpu(config: TrainConfig, workers: int, cluster_gpus: float, use_gpu: bool | None) -> bool:
    """One GPU per worker when the cluster has GPUs; never some workers on GPUs and the rest (or all)
    silently on CPUs."""
    from asr_kd.devices import DeviceError

    if use_gpu is not None:
        return use_gpu
    if config.train.device == "cpu" or cluster_gpus == 0:
        return False
    if cluster_gpus < workers:
        raise DeviceError(f"--workers {workers} but the Ray cluster has {cluster_gpus:g} GPU(s): DDP needs one GPU per "
                          f"worker. Use --workers {int(cluster_gpus)} (or add GPUs); to train on CPUs knowingly, set "
                          "train.device=cpu")
    return True


CPU_WORKERS = 1  # DDP workers when --workers is not given and the Ray cluster has no GPU


def worker_layout(config: TrainConfig, workers: int | None, cluster_gpus: float,
                  use_gpu: bool | None = None) -> tuple[int, bool, str]:
    """DDP workers, whether each takes a GPU, and the reason: ``--workers`` when given, else one worker per
    GPU of the Ray cluster (``CPU_WORKERS`` on a cluster without GPUs, or with ``train.device=cpu``)."""
    gpus = 0.0 if config.train.device == "cpu" or use_gpu is False else cluster_gpus
    workers, why = per_gpu(workers, gpus, CPU_WORKERS, "--workers")
    if config.train.device == "cpu" and cluster_gpus > 0 and "not given" in why:
        why = "--workers not given and train.device=cpu: the CPU default"
    if workers < 1:
        raise AsrKdError(f"--workers must be >= 1, got {workers}")
    return workers, _use_gpu(config, workers, cluster_gpus, use_gpu), why


def train_dtype(config: TrainConfig, on_gpu: bool) -> str:
    """The compute dtype of the training step, as the loop sets it (``Trainer._autocast``)."""
    return "bfloat16 autocast (float32 weights)" if on_gpu and config.train.amp else "float32"


def train_distributed(config: TrainConfig, out_dir: str, workers: int | None, resume: bool = False,
                      use_gpu: bool | None = None, threads_per_worker: int = 1, progress: bool = True,
                      address: str | None = None) -> None:
    """Train ``config`` with ``workers`` DDP workers on Ray Train (None: one per GPU of the cluster, see
    ``worker_layout``): a local Ray when ``address`` is None, else the cluster at ``address`` (see the module
    docstring for what its nodes must share)."""
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from asr_kd.label.ray_runtime import init_ray
    from asr_kd.train.metrics import ProgressWatcher, read_progress

    started = init_ray(address)
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    # private (0700) and fresh (no stale store file); on a cluster it must be where every node sees it
    rendezvous = Path(tempfile.mkdtemp(prefix=".ddp-rendezvous-", dir=out if address else None))
    try:
        workers, use_gpu, why = worker_layout(config, workers, ray.cluster_resources().get("GPU", 0), use_gpu)
        log.info(layout_line("train", workers, "Ray Train (DDP) worker(s)", 1 if use_gpu else 0,
                             "cuda" if use_gpu else "cpu", train_dtype(config, use_gpu), why)
                 + ("" if use_gpu else f", {threads_per_worker} thread(s) each"))
        if use_gpu:  # a worker given a GPU it cannot use fails (asr_kd.devices), it does not train on its CPU
            config = config.model_copy(deep=True)
            config.train.device = "cuda"
        trainer = TorchTrainer(
            _worker_loop,
            torch_config=file_store_torch_config(str(rendezvous / "store")),
            train_loop_config={"config": absolutize(config), "out": str(out), "resume": resume,
                               "threads": threads_per_worker, "command": list(sys.argv)},
            scaling_config=ScalingConfig(num_workers=workers, use_gpu=use_gpu,
                                         resources_per_worker={"CPU": threads_per_worker}),
            run_config=RunConfig(name="ray_train", storage_path=str(out / "ray_results")),
        )
        with ProgressWatcher(out, desc=f"train {out.name} ({workers} workers)", enabled=progress):
            try:
                trainer.fit()
            except Exception as exc:  # a worker's clear error (e.g. DeviceError) arrives wrapped by Ray Train
                ours = remote_error_message(exc)
                if ours is None:
                    raise
                raise AsrKdError(ours) from None
        summary = read_progress(out).get("summary")
        if summary:
            print(summary)
    finally:
        if started:
            ray.shutdown()
        shutil.rmtree(rendezvous, ignore_errors=True)
