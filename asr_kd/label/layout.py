"""How many teacher actors, and the CPUs and GPUs each gets, from the options and the Ray cluster.

``actor_layout``: one actor per GPU when the cluster has GPUs, else one per cluster CPU (``cpu_actors``);
``reads_in_actors``: whether the actors decode their own audio (layout "actors") or CPU read tasks do
(layout "tasks"); ``actor_cpu_share``: the CPUs per actor that still leave room for the read tasks;
``check_actor_gpus``: a probe that CUDA works where the actors will run, before the pool starts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from asr_kd.errors import AsrKdError, remote_error_message

if TYPE_CHECKING:
    from asr_kd.label.pipeline import LabelOptions

READ_TASK_CPUS = 0.25  # CPU reserved per audio-reading task
ACTOR_START_TIMEOUT_S = 600  # the actor pool must be up within this (model loading included)


def cpu_actors(cluster_cpus: float) -> int:
    """Teacher actors when ``--actors`` is not given and they run on CPUs: one per CPU of the Ray cluster
    (each runs torch with one thread and decodes its own audio, so the CPUs are busy with no oversubscription)."""
    return max(1, int(cluster_cpus + 1e-9))


def actor_layout(o: LabelOptions, cluster_gpus: float, cluster_cpus: float = 2.0) -> tuple[int, float, str]:
    """Teacher actors, GPUs per actor and the reason, from the options and the Ray cluster's resources: one
    actor per GPU (``num_gpus=1``) when the cluster has GPUs and ``--actors`` is not given, else one per
    cluster CPU (``cpu_actors``). A GPU request the cluster cannot meet is an error here, not an actor pool
    waiting forever for resources."""
    from asr_kd.devices import per_gpu

    gpus = o.num_gpus_per_actor
    if gpus is None:
        gpus = 1.0 if cluster_gpus >= 1 else 0.0
    actors, why = per_gpu(o.actors, cluster_gpus, cpu_actors(cluster_cpus), "--actors", gpus)
    if actors < 1:
        raise AsrKdError(f"label: --actors must be >= 1, got {actors}")
    if gpus > 0 and actors * gpus > cluster_gpus + 1e-9:
        raise AsrKdError(f"label: {actors} actor(s) x {gpus:g} GPU need {actors * gpus:g} GPU(s) but the Ray cluster "
                         f"has {cluster_gpus:g}; lower --actors or --gpus-per-actor (0 = CPU actors)")
    return actors, gpus, why


def _cuda_probe() -> str:
    from asr_kd.devices import resolve_device

    return str(resolve_device("cuda"))


def check_actor_gpus(actors: int, gpus: float) -> None:
    """Before the actor pool starts: ``actors`` Ray tasks holding ``gpus`` GPU(s) each check that CUDA works
    where the teacher actors will run. A teacher actor whose constructor fails is restarted by Ray Data's
    pool (the GPU default, layout "tasks") again and again, so the clear error (``asr_kd.devices``) is
    raised here instead of the stage hanging (``ShardActorPool`` raises an actor's start-up error itself)."""
    import ray

    probe = ray.remote(_cuda_probe)
    refs = [probe.options(num_gpus=gpus, num_cpus=0, max_retries=0, scheduling_strategy="SPREAD").remote()
            for _ in range(actors)]
    failure = None
    for ref in refs:  # every result fetched: no "unhandled error" noise from the probes after the first
        try:
            ray.get(ref)
        except Exception as exc:
            failure = failure or exc
    if failure is not None:
        ours = remote_error_message(failure)
        if ours is None:
            raise failure
        raise AsrKdError(f"label: {ours}") from None


def reads_in_actors(o: LabelOptions, gpus_per_actor: float) -> bool:
    """Whether the teacher actors decode their own audio (layout "actors") rather than CPU read tasks.

    Auto: actors on CPUs read their own shards — on a CPU-only machine decoding is a few percent of the
    teacher's work, and a separate read stage only adds Ray scheduling and object-store copies
    (BENCHMARKS.md, label_throughput); GPU actors get CPU read tasks, so decoding runs on the node's
    CPUs in parallel while the GPU computes."""
    if o.audio_read not in ("auto", "actors", "tasks"):
        raise AsrKdError(f"label: --audio-read must be auto, actors or tasks, got {o.audio_read!r}")
    if o.audio_read == "auto":
        return gpus_per_actor <= 0
    return o.audio_read == "actors"


def actor_cpu_share(cluster_cpus: float, actors: int, requested: float | None, read_tasks: bool = True) -> float:
    """CPUs to reserve per teacher actor so that audio-reading tasks (if any) can still be scheduled.

    If the actors reserved every CPU, no reading task could start and the pipeline would wait
    forever (the starvation of ray-project/ray#44687). Auto (``requested=None``): share all CPUs but
    ``READ_TASK_CPUS`` (all of them without read tasks) among the actors, at most 1 each. An explicit
    request that leaves no room is an error, not a hang.
    """
    if actors < 1:
        raise AsrKdError(f"label: --actors must be >= 1, got {actors}")
    room = cluster_cpus - (READ_TASK_CPUS if read_tasks else 0.0)
    if requested is None:
        share = min(1.0, room / actors)
        if share <= 0:
            raise AsrKdError(f"label: the Ray cluster has {cluster_cpus} CPU(s): not enough for audio reading plus "
                             f"{actors} actor(s)")
        return share
    if requested * actors > room + 1e-9 and not read_tasks:
        raise AsrKdError(f"label: {actors} actor(s) x {requested} CPU need more than the {cluster_cpus} CPU(s) of the "
                         "Ray cluster (the pool would wait forever); lower --actors or --actor-cpus")
    if requested * actors > room + 1e-9:
        raise AsrKdError(f"label: {actors} actor(s) x {requested} CPU leave no CPU for audio reading on a cluster with "
                         f"{cluster_cpus} CPU(s) (the pipeline would stall); lower --actors or --actor-cpus")
    return requested

