"""Labeling throughput: audio-hours per wall-hour of the Ray pipeline vs a naive loop vs the ceiling.

Three measurements, one run, the same teacher and data:

(a) ``pipeline``  ``asr_kd.label.pipeline.label`` once per layout in ``--audio-read`` (actors that decode
                  their own shards; CPU read tasks feeding the actors) and actor count in ``--actors``.
                  Ray is started before timing (its start is reported apart); actor start-up and model
                  loading are inside the timing, and the start-up column separates them out.
(b) ``naive``     ``label_local(one_at_a_time=True)``: one process, batch of 1, read -> fbank -> forward ->
                  write, nothing overlapped; torch uses ``--naive-threads`` threads (default: all cores,
                  the same hardware the pipeline gets).
(c) ``ceiling``   the teacher forward alone (``model(cmvn(fbank))`` under ``no_grad``) on pre-batched
                  in-memory features, one thread, the same batches the pipeline forms (its shards sorted
                  by duration, ``read_batch_size`` utterances, ``batch_max_frames``). The N-actor ceiling on CPU is N
                  such processes (one thread each, every N-th batch) timed while running at the same
                  time, the way N actors share the machine (measured, not assumed to be N x one process:
                  shared caches, memory bandwidth and clock boost make them differ); with ``--gpu``, N x
                  one GPU.
                  On CPU the ceilings are measured before and after the pipeline runs and the means used.

efficiency = pipeline / ceiling (same actor count), speedup = pipeline / naive. A shared host's speed
drifts over minutes, so the ceilings are measured before and after, and a diagnostic is measured inside
each pipeline run: the actors' CPU seconds in the teacher's forward per second of the steady-state
window (``ASR_KD_FORWARD_LOG``); it is above the efficiency by what the forward loses per CPU-second
inside the pipeline (caches and memory shared with decoding and fbank).

Defaults (about 5 minutes on 2 CPU cores): the demo teacher preset with random weights, 200 synthetic
utterances of 2-6 s (~0.22 h), actors 1 and 2. ``--quick``: 60 utterances, actors 2 only. The issue's
measurement: ``--model exp/synth/teacher --data data/synth/train_unlabeled --actors 2`` (the trained
demo teacher on the demo's unlabeled set).
``--gpu``: teacher on CUDA, fbank on the GPU, ceiling in float32 and bf16 autocast, actors with one GPU
each; reports audio-hours per GPU-hour, the GPUs' mean utilization during the pipeline runs (nvidia-smi
samples) and the GPU-hours to label 1,000,000 hours, in its own section (``label_throughput_gpu``).
``--precision bf16`` runs the pipeline and the naive loop at that precision (``asr-kd label --precision``);
its KL cost is in the label_precision sections. ``tools/bench/gpu_label.sh`` runs the GPU measurements.

    python -m tools.bench.label_throughput [--quick] [--model DIR] [--data DIR] [--audio-read actors tasks] [--gpu]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import time
from pathlib import Path

import torch

from tools.bench.common import add_output_args, gpu_utilization, publish, scratch_dir, table
from tools.bench.fixtures import random_model_dir, synthetic_data

PROJECT_HOURS = 1_000_000


def steady_rate(store_dir: Path, frame_shift_ms: float = 40.0) -> float:
    """Audio-hours per wall-hour between the first and the last shard marker (start-up excluded).

    Read from the store itself: each marker records its frames, its file time is when the shard landed.
    """
    import json

    marks = sorted((p.stat().st_mtime, json.loads(p.read_text())["frames"]) for p in (store_dir / "shards").glob("shard-*.json"))
    if len(marks) < 3:
        return float("nan")
    span = marks[-1][0] - marks[0][0]
    hours = sum(f for _, f in marks[1:]) * frame_shift_ms / 1000 / 3600
    return hours / (span / 3600) if span > 0 else float("nan")


def marker_window(store_dir: Path) -> tuple[float, float]:
    """Unix times of the first and the last shard marker (the steady-state window)."""
    times = sorted(p.stat().st_mtime for p in (store_dir / "shards").glob("shard-*.json"))
    return (times[0], times[-1]) if times else (float("nan"), float("nan"))


def phase_shares(log: Path, start: float, end: float, actors: int) -> dict[str, float]:
    """CPU seconds per actor-second of the window ``start``..``end`` (unix times), by phase (``TeacherActor.PHASES``:
    forward, fbank, read, call, process), from the ``ASR_KD_FORWARD_LOG`` lines ``pid time <cumulative seconds
    per phase>`` the actors append at the start and the end of each call: measured inside the run itself, with no ceiling run at
    another moment. The cumulative figures are interpolated linearly between an actor's calls."""
    import numpy as np

    from asr_kd.label.worker import TeacherActor

    per_pid: dict[str, list[list[float]]] = {}
    for line in log.read_text().splitlines() if log.is_file() else []:
        pid, *values = line.split()
        per_pid.setdefault(pid, []).append([float(v) for v in values])
    totals = dict.fromkeys(TeacherActor.PHASES, 0.0)
    for points in per_pid.values():
        points.sort()
        times = np.array([p[0] for p in points])
        for j, phase in enumerate(TeacherActor.PHASES, start=1):
            secs = np.array([p[j] for p in points])
            totals[phase] += float(np.interp(end, times, secs, left=0.0) - np.interp(start, times, secs, left=0.0))
    span = actors * (end - start)
    return {k: (v / span if span > 0 else float("nan")) for k, v in totals.items()}


def ceiling(model_dirs: list[str], data_dir: str, read_batch_size: int, batch_max_frames: int, shard_size: int, device: str,
            bf16: bool = False, repeats: int = 1, share: tuple[int, int] = (0, 1), barrier=None) -> tuple[float, float]:
    """Seconds of teacher forward (all teachers) over the data, and its audio hours.

    Audio is decoded and featurized first (not timed); the batches are the pipeline's (``shard_size``
    consecutive ids per shard, each sorted by duration and cut into teacher batches).
    ``share=(i, n)``: only batches ``i, i + n, ...`` (worker ``i`` of ``n``); ``barrier``: waited on after
    the warm-up, so that concurrent workers time the same moment.
    """
    from asr_kd.data.audio import load_audio
    from asr_kd.data.audio import utterance_seconds
    from asr_kd.data.datadir import read_data_dir
    from asr_kd.errors import AudioError
    from asr_kd.label.plan import plan_shards, plan_teacher_batches, shard_seconds
    from asr_kd.label.teacher import TeacherEnsemble
    from asr_kd.label.worker import sub_batches

    ens = TeacherEnsemble(model_dirs, device=device)
    data = read_data_dir(data_dir)
    seconds = {u: utterance_seconds(data, u) for u in data.utt_ids}
    shards = plan_shards(data, shard_size, seconds)
    planned = [batch for s in range(len(shards))  # the pipeline's teacher batches (utterance ids)
               for batch in plan_teacher_batches(shards[s], shard_seconds(shards, s, seconds), read_batch_size,
                                                 batch_max_frames)]
    groups = []  # this worker's share of them (batches share[0], share[0] + share[1], ...) as lists of waveforms
    for batch in planned[share[0]::share[1]]:
        waves = []
        for utt in batch:
            try:
                waves.append(load_audio(data.source(utt), sample_rate=ens.fbank_config.sample_rate, max_seconds=60.0))
            except AudioError:
                continue
        groups += [[waves[j] for j in group] for group in sub_batches([w.numel() for w in waves], batch_max_frames)]
    batches, samples = [], 0
    for ws in groups:
        lens = torch.tensor([w.numel() for w in ws])
        padded = torch.nn.utils.rnn.pad_sequence(ws, batch_first=True)
        with torch.no_grad():
            feats, feat_lens = ens.fbank(padded.to(ens.device), lens.to(ens.device))  # fbank on the teacher's device
        batches.append([(t.cmvn(feats), feat_lens) for t in ens.teachers])
        samples += int(lens.sum())
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()

    def one_pass() -> None:
        with torch.no_grad(), autocast:
            for per_teacher in batches:
                for teacher, (x, lens) in zip(ens.teachers, per_teacher):
                    log_probs, _ = teacher.model(x, lens)
                    torch.softmax(log_probs.float(), dim=-1)
        if device == "cuda":
            torch.cuda.synchronize()

    one_pass()  # warm-up (allocator, kernels) not timed
    if barrier is not None:
        barrier.wait()
    t0 = time.perf_counter()
    for _ in range(repeats):
        one_pass()
    seconds = (time.perf_counter() - t0) / repeats
    return seconds, samples / ens.fbank_config.sample_rate / 3600


def _ceiling_worker(args: tuple, share: tuple[int, int], barrier, results) -> None:
    """One process of ``concurrent_ceiling``: one torch thread, its share of the batches, malloc tuned as
    in the actors (``asr_kd.label.malloc``)."""
    from asr_kd.label.malloc import keep_freed_memory

    torch.set_num_threads(1)
    keep_freed_memory()
    results.put(ceiling(*args, share=share, barrier=barrier))


def concurrent_ceiling(model_dirs: list[str], data_dir: str, read_batch_size: int, batch_max_frames: int, shard_size: int,
                       workers: int) -> tuple[float, float]:
    """``(audio-hours per wall-hour, audio hours)`` of ``workers`` forward-only processes (one thread each)
    running at the same time, each on every ``workers``-th batch: the ceiling of N workers on this machine
    as it is, not assumed to be N x one process (shared caches, memory bandwidth and clock boost make them
    differ). Processes of their own also keep the bench's process (the naive loop) as it was."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(workers), ctx.Queue()
    args = (model_dirs, data_dir, read_batch_size, batch_max_frames, shard_size, "cpu")
    procs = [ctx.Process(target=_ceiling_worker, args=(args, (i, workers), barrier, results)) for i in range(workers)]
    for proc in procs:
        proc.start()
    parts = [results.get() for _ in procs]
    for proc in procs:
        proc.join()
    hours = sum(h for _, h in parts)
    return hours / (max(sec for sec, _ in parts) / 3600), hours


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="60 utterances, 2 actors only (about a minute)")
    p.add_argument("--model", action="append", help="teacher model dir(s) (default: demo_teacher preset, random weights)")
    p.add_argument("--data", help="data dir to label (default: synthetic 2-6 s utterances)")
    p.add_argument("--utts", type=int, help="synthetic utterances (default 200, --quick 60)")
    p.add_argument("--actors", type=int, nargs="+", help="actor counts to measure (default: 1 2; --quick: 2)")
    p.add_argument("--audio-read", nargs="+", choices=["actors", "tasks"],
                   help="pipeline layouts to measure (asr-kd label --audio-read; default: actors and tasks on CPU, tasks with --gpu)")
    p.add_argument("--repeats", type=int, default=1,
                   help="pipeline runs per actor count and layout, each between two ceiling runs; the table shows the "
                        "run of median steady-state efficiency and lists them all")
    p.add_argument("--naive-threads", type=int, default=os.cpu_count(), help="torch threads of the naive loop")
    p.add_argument("--read-batch-size", type=int, default=16)
    p.add_argument("--batch-max-frames", type=int, default=40000)
    p.add_argument("--gpu", action="store_true", help="CUDA teacher, fbank on GPU, bf16 ceiling, GPU-hour projection")
    p.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32",
                   help="teacher forward precision of the pipeline and naive runs (asr-kd label --precision)")
    add_output_args(p)
    args = p.parse_args()
    # Ray runs its workers at nice 15 (RAY_worker_niceness); the naive loop and the ceiling run in this
    # process. On a machine shared with other work, equal niceness keeps the comparison fair.
    os.nice(int(os.environ.get("RAY_worker_niceness", "15")) - os.nice(0))
    if args.gpu and not torch.cuda.is_available():
        p.error("--gpu: no CUDA device visible")
    n_utts = args.utts or (60 if args.quick else 200)
    actor_counts = args.actors or ([2] if args.quick else [1, 2])
    layouts = args.audio_read or (["tasks"] if args.gpu else ["actors", "tasks"])
    runs = [(n, layout) for layout in layouts for n in actor_counts]
    device = "cuda" if args.gpu else "cpu"
    with scratch_dir(args.work, "bench-label-") as work:
        model_dirs = args.model or [str(random_model_dir(work / "teacher", "demo_teacher"))]
        data_dir = args.data or str(synthetic_data(work / "corpus", n_utts))
        teacher_desc = ", ".join(args.model) if args.model else "demo_teacher preset, random weights"

        # (c) ceiling: one GPU, or 1 and N CPU processes at once
        torch.set_num_threads(1)
        ceil_bf16 = None
        # ~12 shards, so that the steady-state rate can be read from the shard markers' times
        shard_size = max(4, n_utts // 12) if not args.data else 256
        plan = (model_dirs, data_dir, args.read_batch_size, args.batch_max_frames, shard_size)
        if args.gpu:
            ceil_s, hours = ceiling(*plan, device)
            ceil_1 = hours / (ceil_s / 3600)
            s, _ = ceiling(*plan, device, bf16=True)
            ceil_bf16 = hours / (s / 3600)
        else:
            ceil_1, hours = concurrent_ceiling(*plan, 1)
        print(f"ceiling: {hours:.3f} h of audio -> {ceil_1:.0f} audio-h per wall-h per worker")
        many = [n for n in actor_counts if n > 1] if not args.gpu else []
        ceil_many = {n: concurrent_ceiling(*plan, n)[0] for n in many}
        for n, r in ceil_many.items():
            print(f"ceiling, {n} processes at once: {r:.0f} audio-h per wall-h ({r / (n * ceil_1):.2f} of {n} x one)")

        # (b) naive loop
        from asr_kd.label.pipeline import LabelOptions, label, label_local
        from asr_kd.label.ray_runtime import init_ray

        torch.set_num_threads(args.naive_threads)
        common = dict(read_batch_size=args.read_batch_size, batch_max_frames=args.batch_max_frames, progress=False,
                      shard_size=shard_size, precision=args.precision)
        naive = label_local(model_dirs, data_dir, str(work / "store_naive"), LabelOptions(**common), one_at_a_time=True)
        torch.set_num_threads(1)
        print(f"naive: {naive.line()}")

        # (a) pipeline, per actor count; Ray started once, outside the timing
        import ray

        t0 = time.perf_counter()
        init_ray(None)
        ray_start_s = time.perf_counter() - t0
        cpus = ray.cluster_resources().get("CPU", 1)
        pipe, gpu_use, store_of, around, repeats_of = {}, {}, {}, {}, {}
        last: dict[int, float] = {}  # N -> the latest N-process ceiling (the one after a run is the next one's before)
        try:
            for n, layout in runs:
                tried = []
                for r in range(args.repeats):
                    if not args.gpu:  # the ceiling right before and right after each run: the host's speed drifts
                        before = last.get(n) or concurrent_ceiling(*plan, n)[0]
                    out = work / f"store_pipe{n}_{layout}_{r}"
                    shutil.rmtree(out, ignore_errors=True)
                    # read tasks: leave CPU for them (num_cpus=0.25 each), actors share cpus - 0.5 (ray #44687);
                    # actors that read: asr-kd label's own share (all CPUs)
                    actor_cpus = 0.0 if args.gpu else (max(0.1, min(1.0, (cpus - 0.5) / n)) if layout == "tasks" else None)
                    opts = LabelOptions(actors=n, actor_num_cpus=actor_cpus, num_gpus_per_actor=1.0 if args.gpu else 0.0,
                                        audio_read=layout, **common)
                    os.environ["ASR_KD_FORWARD_LOG"] = str(out) + ".forward.log"
                    with gpu_utilization(work / f"gpu_util_{n}_{layout}_{r}.csv") as use:
                        summary = label(model_dirs, data_dir, str(out), opts)
                    del os.environ["ASR_KD_FORWARD_LOG"]
                    ceil_here = float("nan")
                    if not args.gpu:
                        last[n] = concurrent_ceiling(*plan, n)[0]
                        ceil_here = (before + last[n]) / 2
                    tried.append((steady_rate(out) / ceil_here if ceil_here == ceil_here else 0.0, r, summary, use, out, ceil_here))
                    print(f"pipeline {n} actor(s), {layout}, run {r + 1}: {summary.line()}; ceiling around it {ceil_here:.0f}")
                tried.sort(key=lambda t: t[0])
                _, r, pipe[n, layout], gpu_use[n, layout], store_of[n, layout], around[n, layout] = tried[len(tried) // 2]
                repeats_of[n, layout] = [t[0] for t in tried]
        finally:
            ray.shutdown()
        reading = {"actors": "actors read their shards", "tasks": "CPU read tasks"}
        if not args.gpu:  # the forward rate again: a shared host's speed drifts over minutes
            torch.set_num_threads(1)
            after_1, _ = concurrent_ceiling(*plan, 1)
            after = {n: last[n] for n in many}  # measured right after the last run with N actors
            ceil_before = ceil_1
            ceil_1 = (ceil_1 + after_1) / 2
            drift = (f" The forward-only rates were measured before and after the pipeline runs (one process: {ceil_before:.0f} "
                     f"and {after_1:.0f} audio-h per wall-h"
                     + "".join(f"; {n} at once: {ceil_many[n]:.0f} and {after[n]:.0f}" for n in many)
                     + "); the ceiling rows use their means. A pipeline row's efficiency uses the N-process ceiling "
                     "measured right before and right after that run (their mean): "
                     + "; ".join(f"{reading[lay]}, {n} actor(s): {around[n, lay]:.0f}"
                                 + (f" (steady-state efficiencies of its {len(v)} runs: {', '.join(f'{e:.2f}' for e in v)}; "
                                    "the table shows the median run)" if len(v) > 1 else "")
                                 for (n, lay), v in repeats_of.items()) + ".")
            ceil_many = {n: (ceil_many[n] + after[n]) / 2 for n in many}
        else:
            drift = ""
        # the N-worker ceiling: N forward-only processes measured at once on CPU; N GPUs: N x one
        ceil_rate = {n: ceil_many.get(n, n * ceil_1) for n in actor_counts}

        # table
        rows = []
        naive_rate = naive.audio_hours_per_wall_hour
        naive_steady = steady_rate(work / "store_naive")
        rows.append(["naive loop (batch 1, no overlap)", f"{args.naive_threads} threads", f"{naive.wall_s:.1f}", "-",
                     f"{naive_rate:.0f}", f"{naive_steady:.0f}", "-", "1.00x"])
        startup, in_run = {}, {}
        for (n, layout), s in pipe.items():
            rate = s.audio_hours_per_wall_hour
            steady = steady_rate(store_of[n, layout])
            startup[n, layout] = s.wall_s - s.hours / steady * 3600 if steady == steady else float("nan")
            # (on a GPU the forward's CUDA kernels run asynchronously: the actors' timer sees launches only)
            in_run[n, layout] = (None if args.gpu else
                                 phase_shares(Path(str(store_of[n, layout]) + ".forward.log"), *marker_window(store_of[n, layout]), n))
            ceil_here = around[n, layout] if not args.gpu else ceil_rate[n]
            rows.append([f"Ray pipeline, {n} actor(s), {reading[layout]}", f"{n} x 1 thread" if not args.gpu else f"{n} GPU(s)",
                         f"{s.wall_s:.1f}", f"{startup[n, layout]:.1f}", f"{rate:.0f}", f"{steady:.0f}",
                         f"{rate / ceil_here:.2f} ({steady / ceil_here:.2f})",
                         f"{rate / naive_rate:.2f}x ({steady / naive_steady:.2f}x)"])
        for n in actor_counts:
            what = (f"{n} GPU(s) (N x one)" if args.gpu else "1 process" if n == 1 else f"{n} processes at once")
            rows.append([f"ceiling: teacher forward only, {what}", f"{n} x 1 thread" if not args.gpu else f"{n} GPU(s)",
                         f"{hours / ceil_rate[n] * 3600:.1f}", "-", f"{ceil_rate[n]:.0f}", "-", "1.00", f"{ceil_rate[n] / naive_rate:.2f}x"])
        if ceil_bf16:
            rows.append(["ceiling, bf16 autocast, x1", "1 GPU", "-", "-", f"{ceil_bf16:.0f}", "-", "-", f"{ceil_bf16 / naive_rate:.2f}x"])
        body = [
            f"Teacher: {teacher_desc}. Data: {data_dir if args.data else f'{n_utts} synthetic utterances of 2-6 s'} "
            f"({hours:.3f} h). Device: {device}; teacher precision {args.precision} (ceiling rows: fp32 unless marked). Everything runs at nice {os.nice(0)} (Ray's worker niceness). Ray start-up ({ray_start_s:.1f} s) is not timed; actor start-up and "
            "model loading are. Efficiency = pipeline / ceiling with the same number of workers; the ceiling of N "
            + ("GPUs is N x the one-GPU forward rate" if args.gpu else
               "workers is N forward-only processes (one thread each) measured running at the same time, each on every "
               "N-th batch, measured rather than assumed to be N x the one-process rate"
               + "".join(f" ({n} at once: {ceil_rate[n] / (n * ceil_1):.2f} of {n} x one process)" for n in many))
            + "; speedup = pipeline / naive loop.",
            "",
            "Steady state = audio of shards 2..N over the time between the first and the last shard landing "
            "(start-up excluded); figures in brackets use it. Start-up = wall - audio / steady rate (planning, actor "
            "start and model loading, the first shard's fill, the tail)." + drift,
            "",
            table(["run", "compute", "wall s", "start-up s", "audio-h per wall-h (end to end)", "steady state", "efficiency",
                   "speedup vs naive"], rows),
        ]
        if not args.gpu:
            body += ["", "Where the actors' time goes (a diagnostic, drift-free): CPU seconds per actor-second of the "
                     "steady-state window, from each actor's own clocks (`ASR_KD_FORWARD_LOG`). The forward share exceeds the "
                     "efficiency by what the forward loses per CPU-second inside the pipeline (caches and memory shared "
                     "with decoding and fbank); 'other in the call' is top-k, greedy decoding and the store's encoding; "
                     "'Ray, outside the call' is the actor process's other CPU (serializing results, Ray's threads); "
                     "'off CPU' is waiting for work or preempted by other processes (Ray's, the driver's).", "",
                     table(["run", "forward", "fbank", "audio decoding", "other in the call", "Ray, outside the call", "off CPU"],
                           [[f"{n} actor(s), {reading[lay]}", *(f"{x:.3f}" for x in (
                               v["forward"], v["fbank"], v["read"], v["call"] - v["forward"] - v["fbank"] - v["read"],
                               v["process"] - v["call"], 1 - v["process"]))] for (n, lay), v in in_run.items()])]
        best_key = max(pipe, key=lambda k: pipe[k].audio_hours_per_wall_hour)
        best_n = best_key[0]
        best = pipe[best_key].audio_hours_per_wall_hour
        best_steady = steady_rate(store_of[best_key])
        best_ceil = around[best_key] if not args.gpu else ceil_rate[best_n]
        load = os.getloadavg()[0]
        body += ["", f"Targets: steady-state efficiency >= 0.8 (measured {best_steady / best_ceil:.2f} steady state, "
                 f"{best / best_ceil:.2f} end to end, {best_n} actors, {reading[best_key[1]]}; forward share "
                 f"inside the run {in_run[best_key]['forward'] if in_run[best_key] else float('nan'):.2f}), wall time "
                 f"<= 0.5 of the naive loop (measured {pipe[best_key].wall_s / naive.wall_s:.2f}), speedup aimed at 3x "
                 f"(measured {best / naive_rate:.2f}x end to end, {best_steady / naive_steady:.2f}x steady state). "
                 f"1-minute load average when done: {load:.1f} on {os.cpu_count()} cores."]
        for layout in layouts:
            ns = sorted(n for n, lay in pipe if lay == layout)
            if len(ns) > 1:
                body.append(f"Scaling {ns[0]} -> {ns[-1]} actors ({reading[layout]}): "
                            f"{pipe[ns[-1], layout].audio_hours_per_wall_hour / pipe[ns[0], layout].audio_hours_per_wall_hour:.2f}x.")
        if args.gpu:
            per_gpu = best / best_n
            use = gpu_use.get(best_key) or {}
            util = (f"mean GPU utilization {use['mean_util']:.0f} % over {use['samples']} nvidia-smi samples, peak "
                    f"{use['max_mem_mib']:,} MiB" if use else "GPU utilization not sampled (no nvidia-smi)")
            body += ["", f"Audio-hours per GPU-hour (pipeline, {args.precision}, {best_n} GPU(s)): {per_gpu:.0f}; {util}; "
                     f"1,000,000 h would take {PROJECT_HOURS / per_gpu:.0f} GPU-hours "
                     f"({PROJECT_HOURS / per_gpu / 24 / 8:.1f} days on 8 GPUs)."]
            if ceil_bf16:
                body.append(f"bf16 ceiling: {ceil_bf16:.0f} audio-h per GPU-hour -> {PROJECT_HOURS / ceil_bf16:.0f} GPU-hours "
                            "for 1,000,000 h if the pipeline kept up.")
        name, title = (("label_throughput_gpu", "Labeling throughput on a GPU (asr-kd label)") if args.gpu
                       else ("label_throughput", "Labeling throughput (asr-kd label)"))
        publish(name, title, body, write=not args.no_write)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
