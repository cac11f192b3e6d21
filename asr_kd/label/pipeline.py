"""Label audio with teacher soft targets on Ray (a pool of teacher actors) into a sharded store: the run.

Input: a data dir, an audio shard dir (``asr-kd data shard``) or a lhotse CutSet manifest, each a row
source of ``asr_kd.data.sources`` (ids, durations in seconds, and per utterance a small item saying
where its audio is). Everything below is the same for all three, so the same audio gives the same store.

This module holds the run (``label`` on Ray, ``label_local`` in one process) and its options; the parts
have a module each:

- ``asr_kd.label.plan``: shards of ``shard_size`` consecutive ids (locality: a recording's segments, an
  audio shard's members stay together), each sorted by duration (ties by id) and cut into teacher batches
  (consecutive utterances, at most ``read_batch_size`` of them and ``batch_max_frames`` padded frames) —
  a pure function of the input and the options, so a rerun plans the same shards and the same batches. A
  batch never crosses a shard: which shards are already done cannot change how the others are batched,
  and since the teacher's float results depend on the batch it runs in (padding, BLAS blocking), a
  resumed run writes the bytes a clean run writes. Also the ``--dry-run`` (``plan_only``).
- ``asr_kd.label.layout``: how many teacher actors, their CPUs and GPUs, and which layout reads the audio.
- ``asr_kd.label.worker``: audio reading and ``TeacherActor`` (fbank + teachers, the store's encoding).
- ``asr_kd.label.collector``: the driver groups result rows by shard and writes a shard (atomically) once
  all its utterances are back: rejects first, then targets, then its marker.

Shards already complete in the store (their completion marker exists) are skipped: that is the resume.
The rest flow through one of two layouts (``--audio-read``, ``layout.reads_in_actors``)::

  actors (default on CPUs): one row per shard, on plain Ray actors (``asr_kd.label.shard_pool``)
    shards ─▶ ShardActorPool(TeacherActor, size=actors, 2 in flight each; a dead actor's shards requeued)
                              each actor decodes its shard batch by batch, fbank + teachers, encodes
  tasks (default for GPU actors): one row per planned batch
    from_items(batches) ─▶ map_batches(read_audio_group)   CPU tasks: decode + resample, catch bad files
                        ─▶ map_batches(TeacherActor, compute=ActorPoolStrategy(size=actors))
                                                 fbank + teachers (num_gpus=1 each when GPUs exist),
                                                 one forward per planned batch, one row out per utterance
  then  driver: ShardCollector writes each shard once complete.

Actors send a format-2 store's compact columns back (``codec.encode_entries``: ~5 bytes per 40 ms
frame), not ids and probabilities (96 bytes per frame at top-8); the driver only lays out, compresses
and writes them.

A shard whose actor died goes back to the queue for the live actors and a replacement actor is
started (layout "actors"); Ray Data retries such tasks and restarts the actor (layout "tasks"); the
driver keys results by utterance id, so a crash loses nothing and writes nothing twice. Bad
utterances (unreadable, empty, NaN, too long, NaN teacher output, low confidence) are listed in
``rejects.tsv`` with reasons; everything else is labeled. The teachers' 1-best transcripts go to ``text.pseudo``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shutil
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from asr_kd.data.sources import LabelSource, open_source
from asr_kd.errors import AsrKdError, remote_error_message
from asr_kd.label.collector import ShardCollector, encoder_of, finish_store, open_writer
from asr_kd.label.layout import (ACTOR_START_TIMEOUT_S, READ_TASK_CPUS, actor_cpu_share, actor_layout,
                                  check_actor_gpus, reads_in_actors)
from asr_kd.label.plan import batch_rows, plan_shards, shard_rows
from asr_kd.label.ray_runtime import ray_session
from asr_kd.label.teacher import TeacherEnsemble
from asr_kd.label.worker import FORWARD_LOG_ENV, TeacherActor, label_groups, read_audio_group
from asr_kd.targets.codec import DEFAULT_TOP_P, check_top_p

log = logging.getLogger(__name__)



@dataclasses.dataclass
class LabelOptions:
    top_k: int = 8  # k_max: most units kept per output frame
    top_p: float = DEFAULT_TOP_P  # keep the fewest units whose mass reaches this, in (0, 1]; 1 = fixed top-k
    format_version: int = 2  # store format: 2 (top-p, zstd blocks) or 1 (fixed top-k records, for old readers)
    codec: str = "zstd"  # v2 block compression: "zstd" or "none"
    quantization: str = "log8"  # "log8" (1-byte log-probability codes) or "float16"
    temperature: float = 1.0
    shard_size: int = 256  # utterances per shard
    max_seconds: float = 60.0  # longer utterances are rejected as too_long
    batch_max_frames: int = 40000  # padded 10 ms frames per teacher forward
    read_batch_size: int = 16  # at most this many utterances per teacher batch (batches never cross a shard)
    actors: int | None = None  # None: one per GPU of the Ray cluster (with num_gpus_per_actor), else one per cluster CPU
    actor_num_cpus: float | None = None  # None: share the cluster's CPUs (keeping room for read tasks when there are any)
    audio_read: str = "auto"  # "actors": each teacher actor decodes its own shard; "tasks": CPU tasks decode for the
    #                           actors; "auto": actors on a CPU-only layout, tasks when the actors hold GPUs
    num_gpus_per_actor: float | None = None  # None: 1 when the cluster has GPUs, else 0
    min_max_prob: float | None = None  # confidence filter: mean per-frame max probability below -> rejected
    max_entropy: float | None = None  # confidence filter: mean per-frame entropy (nats) above -> rejected
    weights: list[float] | None = None  # teacher weights (probabilities averaged with these)
    allow_pipes: bool = False
    address: str | None = None  # None: local Ray; "auto" or HOST:PORT joins a cluster
    progress: bool = True
    units_from: str | None = None  # model dir or tokens.txt: the store's units (and framing) for foreign teachers
    unit_map_files: list[str] | None = None  # per foreign teacher (or one for all): TEACHER_SYMBOL STUDENT_SYMBOL lines
    unmapped_rule: str = "renormalize"  # mass of unmapped teacher units: "renormalize" or "blank"
    frame_conversion: str = "peak"  # teacher frames -> stored frames: "peak" or "mean" (asr_kd.label.frame_rate)
    precision: str = "fp32"  # teacher forward under autocast: "fp32", "bf16" or "fp16" (recorded in the store's meta)

    def ensemble_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``TeacherEnsemble`` that these options set."""
        def absolute(p: str) -> str:  # Ray actors may run in another working directory
            return str(Path(p).resolve())

        return dict(weights=self.weights, top_k=self.top_k, temperature=self.temperature,
                    units_from=absolute(self.units_from) if self.units_from else None,
                    unit_map_files=[absolute(f) for f in self.unit_map_files] if self.unit_map_files else None, unmapped_rule=self.unmapped_rule,
                    frame_conversion=self.frame_conversion, precision=self.precision)


@dataclasses.dataclass
class LabelSummary:
    utterances: int  # labeled in this run
    rejects: int  # rejected in this run
    hours: float  # audio hours labeled in this run
    wall_s: float
    shards_written: list[int]
    shards_skipped: list[int]
    nodes: dict[str, int] = dataclasses.field(default_factory=dict)  # node IP -> utterances its actors labeled (Ray)

    @property
    def audio_hours_per_wall_hour(self) -> float:
        return self.hours / (self.wall_s / 3600) if self.wall_s > 0 else float("nan")

    def line(self) -> str:
        return (f"labeled {self.utterances} utterances ({self.hours:.3f} h) in {len(self.shards_written)} shards "
                f"({len(self.shards_skipped)} already done), {self.rejects} rejects, wall {self.wall_s:.1f} s, "
                f"{self.audio_hours_per_wall_hour:.1f} audio-hours per wall-hour{self.by_node()}")

    def by_node(self) -> str:
        """``"; by node: 10.0.0.1 120, 10.0.0.2 136"`` when actors on more than one node labeled (else empty)."""
        if len(self.nodes) < 2:
            return ""
        return "; by node: " + ", ".join(f"{ip} {n}" for ip, n in sorted(self.nodes.items()))


def check_options(o: LabelOptions) -> None:
    """Refuse bad store settings before any teacher is loaded (errors name the flag and value)."""
    check_top_p(o.top_p, o.top_k, where="label")
    if o.format_version not in (1, 2):
        raise AsrKdError(f"label: --format-version must be 1 or 2, got {o.format_version}")
    if o.format_version == 1 and o.top_p != 1.0:
        raise AsrKdError(f"label: --format-version 1 stores a fixed top-k; --top-p {o.top_p} needs format version 2 "
                         "(or pass --top-p 1)")
    if o.codec not in ("zstd", "none"):
        raise AsrKdError(f"label: --codec must be 'zstd' or 'none', got {o.codec!r}")


def _meta_for(ensemble: TeacherEnsemble, options: LabelOptions) -> dict[str, Any]:
    extra: dict[str, Any] = {"teacher_details": ensemble.describe()} if ensemble.has_foreign else {}
    if options.precision != "fp32":
        extra["teacher_precision"] = options.precision
    v2 = options.format_version >= 2
    store_format: dict[str, Any] = dict(format_version=options.format_version)
    if v2:
        store_format.update(top_p=options.top_p, codec=options.codec,
                            teachers=[str(Path(t.path).resolve()) for t in ensemble.teachers])
    return dict(
        **extra,
        **store_format,
        teacher_fingerprints=ensemble.fingerprints,
        teacher_weights=ensemble.weights,
        units_hash=ensemble.tokenizer.units_hash(),
        vocab_size=ensemble.tokenizer.vocab_size,
        frame_shift_ms=ensemble.frame_shift_ms,
        subsampling=ensemble.subsampling,
        k=options.top_k,
        quantization=options.quantization,
        temperature=options.temperature,
        fbank=ensemble.fbank_config.model_dump(mode="json"),
    )


def _resolve_spec(spec: str) -> str:
    """A ``--model`` argument with its directory made absolute (an ``hf:``/``speechbrain:`` prefix kept) for the actors."""
    from asr_kd.label.teacher import split_spec

    prefix, path = split_spec(spec)
    return (prefix or "") + str(Path(path).resolve())


@contextlib.contextmanager
def _new_store_removed_on_failure(out_dir: str) -> Iterator[None]:
    """Around a run that opens the store ``out_dir``: if the block fails in any way (an error, Ctrl-C) and the
    dir did not exist before, it is removed unless it holds a finished shard (``completed_shards``: a rerun
    resumes from those). A store that existed before the run is never removed."""
    from asr_kd.targets.layout import completed_shards

    created = not Path(out_dir).exists()
    try:
        yield
    except BaseException:
        if created and Path(out_dir).is_dir() and not completed_shards(out_dir):
            shutil.rmtree(out_dir, ignore_errors=True)
        raise


def label(model_dirs: list[str], data_dir: str, out_dir: str, options: LabelOptions | None = None) -> LabelSummary:
    """Label ``data_dir`` with the teachers in ``model_dirs`` into the store ``out_dir`` (resumable).

    ``data_dir`` is a Kaldi-style data dir, an audio shard dir (``asr-kd data shard``) or a lhotse
    CutSet manifest (``asr_kd.data.sources.open_source``); the same audio gives the same store.

    Whatever fails, the cleanup is the same: Ray, if this call started it, is shut down (``ray_session``),
    and a store dir this call created that holds no finished shard is removed (``_new_store_removed_on_failure``)."""
    o = options or LabelOptions()
    check_options(o)
    t0 = time.time()
    data = open_source(data_dir, allow_pipes=o.allow_pipes)
    # the driver loads the teachers once to check them and to fill the store's meta
    ensemble = TeacherEnsemble(model_dirs, device="cpu", **o.ensemble_kwargs())
    with _new_store_removed_on_failure(out_dir):
        writer = open_writer(out_dir, _meta_for(ensemble, o), o)
        seconds = data.seconds()
        shards = plan_shards(data, o.shard_size, seconds)
        writer.check_plan(shards, data_dir)  # a store does not grow: clear message if the data changed
        done = sorted(writer.completed_shards())
        todo = [s for s in range(len(shards)) if s not in set(done)]
        collector = ShardCollector(writer, shards, o, ensemble.sample_rate, record_unmapped=ensemble.has_foreign)
        log.info("label: %d utterances in %d shards, %d already done, %d to do",
                 len(data), len(shards), len(done), len(todo))
        if todo:
            with ray_session(o.address):
                _label_on_ray(model_dirs, data, shards, todo, seconds, o, ensemble, writer, collector, out_dir)
            if collector.pending:
                missing = {s: sorted(set(shards[s]) - set(r)) for s, r in collector.pending.items()}
                raise AsrKdError(f"label: Ray returned incomplete shards {sorted(missing)} (e.g. "
                                 f"{next(iter(missing.values()))[:3]} missing); rerun the same command to finish them")
        finish_store(writer, out_dir, len(shards), ensemble)
    summary = LabelSummary(collector.labeled, collector.rejected, collector.seconds / 3600, time.time() - t0,
                           sorted(collector.written), done, dict(collector.nodes))
    if collector.nodes:
        log.info("label: utterances labeled per Ray node: %s",
                 ", ".join(f"{ip} {n}" for ip, n in sorted(collector.nodes.items())))
    print(summary.line())
    return summary


def _label_on_ray(model_dirs: list[str], data: LabelSource, shards: Sequence[list[str]], todo: list[int],
                  seconds: Mapping[str, float], o: LabelOptions, ensemble: TeacherEnsemble, writer: Any,
                  collector: ShardCollector, out_dir: str) -> None:
    """Label the shards ``todo`` on the running Ray (``ray_session``) into ``collector``: the actor layout, the GPU
    check, the actor pool or the Ray Data stream, the progress bar; the actors are gone when it returns or raises."""
    import ray
    from ray.data import ActorPoolStrategy

    from asr_kd.devices import layout_line

    cluster_cpus = ray.cluster_resources().get("CPU", 1.0)
    actors, gpus, why = actor_layout(o, ray.cluster_resources().get("GPU", 0), cluster_cpus)
    fused = reads_in_actors(o, gpus)
    actor_cpus = actor_cpu_share(cluster_cpus, actors, o.actor_num_cpus, read_tasks=not fused)
    precision = {"fp32": "float32", "bf16": "bfloat16 autocast",
                 "fp16": "float16 autocast"}.get(o.precision, o.precision)
    log.info(layout_line("label", actors, "teacher actor(s)", gpus, "cuda" if gpus > 0 else "cpu", precision, why)
             + f", {actor_cpus:g} CPU each; "
             + ("each actor decodes its own shards" if fused else "audio decoding on CPU tasks"))
    if gpus > 0:
        check_actor_gpus(actors, gpus)
    read_options = dict(sample_rate=ensemble.sample_rate, max_seconds=o.max_seconds, allow_pipes=o.allow_pipes)
    n_utts = sum(len(shards[s]) for s in todo)
    # test hooks (ASR_KD_TEST_*) and the forward-time log set in the driver reach the actors through their runtime env
    hooks = {k: v for k, v in os.environ.items() if k.startswith("ASR_KD_TEST_") or k == FORWARD_LOG_ENV}
    actor_kwargs = dict(model_dirs=[_resolve_spec(m) for m in model_dirs], ensemble_kwargs=o.ensemble_kwargs(),
                        batch_max_frames=o.batch_max_frames, device="cuda" if gpus > 0 else "cpu",
                        read_options=read_options if fused else None, encoder=encoder_of(writer))
    if fused:  # one row per shard on plain actors, two in flight each (asr_kd.label.shard_pool: why not Ray Data)
        from asr_kd.label.shard_pool import ShardActorPool

        rows = shard_rows(data, shards, todo, seconds, o.read_batch_size, o.batch_max_frames)
        pool = ShardActorPool(ray.remote(TeacherActor), actors,
                              dict(num_cpus=actor_cpus, num_gpus=gpus, scheduling_strategy="SPREAD",
                                   runtime_env={"env_vars": hooks} if hooks else None),
                              actor_kwargs, in_flight=2, start_timeout_s=ACTOR_START_TIMEOUT_S)
        results = pool.map(rows)
    else:  # one row per planned teacher batch; Ray Data may bundle rows as it likes, each is labeled on its own
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        ctx.print_on_execution_start = False
        # start labeling once every actor is up (and Ray Data names a pool that cannot start after this)
        ctx.wait_for_min_actors_s = ACTOR_START_TIMEOUT_S
        rows = batch_rows(data, shards, todo, seconds, o.read_batch_size, o.batch_max_frames)
        ds = ray.data.from_items(rows, override_num_blocks=max(1, min(len(rows), 200)))
        ds = ds.map_batches(read_audio_group, batch_size=1, num_cpus=READ_TASK_CPUS, fn_kwargs=read_options)
        ds = ds.map_batches(TeacherActor, batch_size=1, compute=ActorPoolStrategy(size=actors),
                            num_cpus=actor_cpus, num_gpus=gpus,  # Ray restarts actors and retries tasks by default
                            runtime_env={"env_vars": hooks} if hooks else None, fn_constructor_kwargs=actor_kwargs)
        results = ds.iter_batches(batch_size=None, batch_format="numpy")
    bar = tqdm(total=n_utts, desc=f"label {Path(out_dir).name}", unit="utt", disable=not o.progress,
               dynamic_ncols=True)
    try:
        for batch in results:
            bar.update(collector.add(batch))
            bar.set_postfix(hours=f"{collector.seconds / 3600:.2f}",
                            shards=f"{len(shards) - len(todo) + len(collector.written)}/{len(shards)}")
    except Exception as exc:  # an actor's clear error (e.g. a GPU it cannot use) arrives wrapped by Ray
        ours = remote_error_message(exc)
        if ours is None:
            raise
        raise AsrKdError(f"label: {ours}") from None
    finally:
        bar.close()
        close = getattr(results, "close", None)
        if close is not None:
            close()  # the actor pool kills its actors (on a cluster joined with --address too)


def label_local(model_dirs: list[str], data_dir: str, out_dir: str, options: LabelOptions | None = None,
                one_at_a_time: bool = False) -> LabelSummary:
    """The same store from a plain single-process loop (no Ray): the reference for equality tests
    and, with ``one_at_a_time=True`` (batch 1, no pipelining), the naive baseline of the benchmark."""
    o = options or LabelOptions()
    check_options(o)
    t0 = time.time()
    data = open_source(data_dir, allow_pipes=o.allow_pipes)
    from asr_kd.devices import resolve_device

    ensemble = TeacherEnsemble(model_dirs, device=str(resolve_device("auto")), **o.ensemble_kwargs())
    writer = open_writer(out_dir, _meta_for(ensemble, o), o)
    seconds = data.seconds()
    shards = plan_shards(data, o.shard_size, seconds)
    writer.check_plan(shards, data_dir)  # a store does not grow: clear message if the data changed
    done = sorted(writer.completed_shards())
    sample_rate = ensemble.sample_rate
    collector = ShardCollector(writer, shards, o, sample_rate, record_unmapped=ensemble.has_foreign)
    todo = [s for s in range(len(shards)) if s not in set(done)]
    # the batches the Ray pipeline plans (one utterance each for the naive baseline)
    rows = batch_rows(data, shards, todo, seconds, 1 if one_at_a_time else o.read_batch_size,
                       1 if one_at_a_time else o.batch_max_frames)
    for row in tqdm(rows, desc="label (local)", disable=not o.progress):
        read = read_audio_group({"shard": np.asarray([row["shard"]]), "utts": np.asarray([row["utts"]], dtype=object)},
                                sample_rate, o.max_seconds, o.allow_pipes)
        collector.add(label_groups(ensemble, read, 1 if one_at_a_time else o.batch_max_frames, encoder_of(writer)))
    finish_store(writer, out_dir, len(shards), ensemble)
    summary = LabelSummary(collector.labeled, collector.rejected, collector.seconds / 3600, time.time() - t0,
                           sorted(collector.written), done)
    log.info(summary.line())
    return summary
