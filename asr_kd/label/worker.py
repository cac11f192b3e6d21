"""The worker side of labeling: decode planned batches, run the teachers, send rows back to the driver.

``read_audio_group`` (Ray Data CPU tasks, layout "tasks") and ``read_planned_batch`` decode the audio of
planned teacher batches (``asr_kd.label.plan``); ``label_groups``/``label_batch``/``label_rows`` run the
teacher ensemble on decoded audio, one output row per utterance (errors kept as reject reasons). With a
format-2 store the rows carry the store's compact columns (``codec.encode_entries``: ~5 bytes per 40 ms
frame), not ids and probabilities (96 bytes per frame at top-8). ``TeacherActor`` serves both layouts:
Ray Data batches of decoded audio (``label_decoded``) and whole shards it decodes itself (``label_shard``,
``asr_kd.label.shard_pool``).

Test and profiling hooks read here, from the environment (the driver passes ``ASR_KD_TEST_*`` and
``ASR_KD_FORWARD_LOG`` on to the actors): ``KILL_ACTOR_ENV``, ``KILL_ACTOR_MARKER_ENV``, ``BATCH_LOG_ENV``,
``FORWARD_LOG_ENV``.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from asr_kd.data.sources import read_item
from asr_kd.errors import AudioError
from asr_kd.label.plan import pack_by_frames, unpack_items
from asr_kd.label.teacher import SoftTargets, TeacherEnsemble

KILL_ACTOR_ENV = "ASR_KD_TEST_KILL_ACTOR_AFTER_BATCHES"  # test hook: an actor dies once after N batches
KILL_ACTOR_MARKER_ENV = "ASR_KD_TEST_KILL_ACTOR_MARKER"  # file created by the dying actor (die only once)
TARGET_COLUMNS = ("counts", "ids", "probs", "codes")  # per-utterance arrays of label_rows' output (lists, unstacked)
FORWARD_LOG_ENV = "ASR_KD_FORWARD_LOG"  # profiling: actors log cumulative CPU seconds by phase per call
BATCH_LOG_ENV = "ASR_KD_TEST_BATCH_LOG"  # test hook: append the utterance ids of every teacher forward to this file


def read_audio_group(batch: dict[str, np.ndarray], sample_rate: int, max_seconds: float,
                     allow_pipes: bool) -> dict[str, Any]:
    """Ray task: decode the audio of planned teacher batches (rows); bad files get an ``error``.

    Each output row keeps its batch whole: ``wave`` is the batch's waveforms concatenated and
    ``meta`` (JSON) holds the utterance ids, their lengths in samples and their errors."""
    torch.set_num_threads(1)
    waves, metas = [], []
    for utts in batch["utts"]:
        wave, meta = read_planned_batch(unpack_items(utts), sample_rate, max_seconds, allow_pipes)
        waves.append(wave)
        metas.append(json.dumps(meta))
    return {"shard": batch["shard"], "wave": waves, "meta": np.array(metas, dtype=object)}


def read_planned_batch(items: list[list], sample_rate: int, max_seconds: float, allow_pipes: bool
                       ) -> tuple[np.ndarray, dict[str, list]]:
    """Decode one planned batch: its waveforms concatenated (float32 at ``sample_rate`` Hz) and
    ``{"utt_ids", "lengths" (samples), "errors", "notes"}``; a bad file gets an error, not an exception."""
    parts, ids, lengths, errors, notes = [], [], [], [], []
    for item in items:
        note = ""
        try:
            wave, note = read_item(item, sample_rate, max_seconds, allow_pipes)
            err = ""
        except AudioError as exc:
            wave, err = np.zeros(0, dtype=np.float32), f"{exc.reason}: {exc.detail}"
        parts.append(wave)
        ids.append(item[0])
        lengths.append(int(wave.shape[0]))
        errors.append(err)
        notes.append(note)
    wave = np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)
    return wave, {"utt_ids": ids, "lengths": lengths, "errors": errors, "notes": notes}


def label_groups(ensemble: "TeacherEnsemble", batch: dict[str, Any], batch_max_frames: int,
                 encoder: dict[str, Any] | None = None) -> dict[str, Any]:
    """Label the planned batches read by ``read_audio_group``: one forward per planned batch (split
    further only if its decoded audio exceeds ``batch_max_frames``), one output row per utterance."""
    return _merge_rows([label_batch(ensemble, int(shard), wave, json.loads(str(meta)), batch_max_frames, encoder)
                        for shard, wave, meta in zip(batch["shard"], batch["wave"], batch["meta"])],
                       ensemble, batch_max_frames, encoder)


def label_batch(ensemble: "TeacherEnsemble", shard: int, wave: np.ndarray, meta: dict[str, list], batch_max_frames: int,
                encoder: dict[str, Any] | None = None) -> dict[str, Any]:
    """Label one decoded planned batch (``read_planned_batch``'s output): one output row per utterance."""
    bounds = np.cumsum([0] + meta["lengths"])
    wave = np.asarray(wave, dtype=np.float32)
    waves = [wave[bounds[i]: bounds[i + 1]] for i in range(len(meta["lengths"]))]
    return label_rows(ensemble, meta["utt_ids"], [shard] * len(waves), waves, meta["errors"], batch_max_frames,
                      meta.get("notes"), encoder)


def _merge_rows(outs: list[dict[str, Any]], ensemble: "TeacherEnsemble", batch_max_frames: int,
                encoder: dict[str, Any] | None = None) -> dict[str, Any]:
    """Concatenate ``label_rows`` outputs column by column (an empty output when there are none)."""
    if not outs:
        return label_rows(ensemble, [], [], [], [], batch_max_frames, encoder=encoder)
    merged: dict[str, Any] = {}
    for key in outs[0]:
        if key in TARGET_COLUMNS:
            merged[key] = [a for o in outs for a in o[key]]
        else:
            merged[key] = np.concatenate([o[key] for o in outs])
    return merged


def sub_batches(lengths: list[int], max_frames: int) -> list[list[int]]:
    """Indices grouped (longest first) so that count x longest stays within ``max_frames`` samples/160."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return pack_by_frames(order, [max(lengths[i] // 160, 1) for i in order], max_frames)


class TeacherActor:
    """Teacher actor: fbank + teacher ensemble, serving one of two protocols.

    - ``label_decoded(batch)`` (layout "tasks", Ray Data's actor pool: ``map_batches`` calls the actor, and
      ``__call__`` is ``label_decoded``): rows of ``read_audio_group``, planned batches already decoded by
      CPU tasks;
    - ``label_shard(shard, batches)`` (layout "actors", ``asr_kd.label.shard_pool.ShardActorPool``, which needs
      ``read_options``): one row of ``shard_rows``, a whole shard whose planned batches the actor decodes itself,
      one after the other.

    Both return one output row per utterance, tagged with the node's IP (column ``node``)."""

    def __init__(self, model_dirs: list[str], ensemble_kwargs: dict[str, Any], batch_max_frames: int,
                 threads: int = 1, device: str = "auto", read_options: dict[str, Any] | None = None,
                 encoder: dict[str, Any] | None = None):
        from asr_kd.devices import resolve_device
        from asr_kd.label.malloc import keep_freed_memory

        torch.set_num_threads(threads)
        keep_freed_memory()  # batch after batch of the same shapes: reuse freed memory (asr_kd.label.malloc)
        device = str(resolve_device(device))  # an actor given a GPU it cannot use fails instead of using its CPU
        self.ensemble = TeacherEnsemble(model_dirs, device=device, **ensemble_kwargs)
        self.batch_max_frames = batch_max_frames  # padded 10 ms frames per teacher forward
        self.read_options = read_options  # sample_rate, max_seconds, allow_pipes: for label_shard (decodes its shards)
        self.encoder = encoder  # a format-2 store's encoder_params: rows carry the store's compact columns
        self.calls = 0
        self.kill_after = int(os.environ.get(KILL_ACTOR_ENV, "0") or 0)
        self.kill_marker = os.environ.get(KILL_ACTOR_MARKER_ENV)
        self.node = _node_ip()
        self.forward_log = os.environ.get(FORWARD_LOG_ENV)
        self.read_seconds = 0.0  # CPU seconds of this thread decoding audio (label_shard only)
        self.call_seconds = 0.0  # CPU seconds of this thread inside labeling calls (read, fbank, forward and the rest)
        self.process_start = time.process_time()  # the process's CPU seconds once the teachers are loaded

    def _count_batch(self) -> None:
        """Count one planned batch; the test hook ``KILL_ACTOR_ENV`` kills this actor once at its N-th."""
        self.calls += 1
        if (self.kill_after and self.calls == self.kill_after and self.kill_marker
                and not os.path.exists(self.kill_marker)):
            Path(self.kill_marker).write_text(f"actor {os.getpid()} killed itself after {self.calls} batches\n")
            os._exit(1)  # simulate a crash mid-run (test hook)

    PHASES = ("forward", "fbank", "read", "call", "process")
    """Columns of an ``ASR_KD_FORWARD_LOG`` line after ``<pid> <unix time>``: cumulative CPU seconds in the
    teachers' forward, in fbank, decoding audio, inside the labeling calls (``label_shard``/``label_decoded``:
    the three and the rest: top-k, greedy decoding, the store's encoding) -- all of this thread -- and of the
    whole actor process since the teachers were loaded (Ray's threads, serializing the output).
    ``tools/bench/label_throughput`` reads them."""

    def ready(self) -> bool:
        """True once constructed (``ShardActorPool`` waits on it: the teachers are loaded)."""
        return True

    def label_shard(self, shard: int, batches: bytes) -> dict[str, Any]:
        """Layout "actors" (``ShardActorPool``): one row of ``shard_rows``, shard number ``shard`` and its planned
        teacher batches (``pack_items``: lists of items), decoded here batch by batch with ``read_options`` and
        labeled one forward per planned batch; one output row per utterance of the shard."""
        if self.read_options is None:
            raise ValueError("TeacherActor.label_shard needs read_options (the actor decodes the shard's audio)")
        read_options = self.read_options

        def work() -> dict[str, Any]:
            outs = []
            for items in unpack_items(batches):
                self._count_batch()
                t0 = time.thread_time()
                wave, meta = read_planned_batch(items, **read_options)
                self.read_seconds += time.thread_time() - t0
                outs.append(label_batch(self.ensemble, int(shard), wave, meta, self.batch_max_frames, self.encoder))
            return _merge_rows(outs, self.ensemble, self.batch_max_frames, self.encoder)

        return self._timed(work)

    def label_decoded(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Layout "tasks" (Ray Data's ``map_batches``, through ``__call__``): ``batch`` holds rows of
        ``read_audio_group`` (columns ``shard``, ``wave``, ``meta``), planned teacher batches decoded by CPU tasks;
        one forward per planned batch, one output row per utterance."""
        def work() -> dict[str, Any]:
            for _ in batch["shard"]:
                self._count_batch()
            return label_groups(self.ensemble, batch, self.batch_max_frames, self.encoder)

        return self._timed(work)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Ray Data's entry point (``map_batches`` calls the actor): ``label_decoded``."""
        return self.label_decoded(batch)

    def _timed(self, work: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """Run one labeling call: its output tagged with this node's IP (column ``node``), its CPU seconds counted,
        and with ``FORWARD_LOG_ENV`` a phase line at its start and its end."""
        if self.forward_log:  # at the start and the end of each call: a reader interpolates within calls only
            self._log_phases()
        call_start = time.thread_time()
        out = work()
        out["node"] = np.asarray([self.node] * len(out["utt_id"]), dtype=object)  # which host labeled each row
        self.call_seconds += time.thread_time() - call_start
        if self.forward_log:
            self._log_phases()
        return out

    def _log_phases(self) -> None:
        """One ``FORWARD_LOG_ENV`` line: pid, time, cumulative seconds per phase (``PHASES``); one short O_APPEND
        write, so the lines of concurrent actors do not interleave."""
        e = self.ensemble
        with open(self.forward_log, "a", encoding="utf-8") as fh:  # type: ignore[arg-type]
            process = time.process_time() - self.process_start
            fh.write(f"{os.getpid()} {time.time():.3f} {e.forward_seconds:.4f} {e.fbank_seconds:.4f} "
                     f"{self.read_seconds:.4f} {self.call_seconds:.4f} {process:.4f}\n")


def _node_ip() -> str:
    """The IP address of the Ray node this process runs on ("" outside Ray)."""
    try:
        import ray

        return str(ray.util.get_node_ip_address()) if ray.is_initialized() else ""
    except Exception:  # pragma: no cover - Ray internals of other versions
        return ""


def label_rows(ensemble: TeacherEnsemble, utt_ids: list, shards: list, waves: list, errors: list, batch_max_frames: int,
               notes: list | None = None, encoder: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run the ensemble over decoded rows; returns one output row per input row (errors and notes kept).

    Targets: ``ids``/``probs`` ``(T, k)`` per utterance, or with ``encoder`` (a format-2 store's
    ``StoreWriter.encoder_params()``) the store's compact columns ``counts``/``ids``/``codes``
    (``codec.encode_entries``): the form sent back to the driver, ~5 bytes per frame instead of 96."""
    n = len(utt_ids)
    unmapped = np.zeros(n)
    if encoder is None:
        out_ids: list[np.ndarray] = [np.zeros((0, ensemble.top_k), np.int64)] * n
        out_probs: list[np.ndarray] = [np.zeros((0, ensemble.top_k), np.float32)] * n
    else:
        from asr_kd.targets import quant
        from asr_kd.targets.codec import encode_entries

        out_counts: list[np.ndarray] = [np.zeros(0, np.uint8)] * n
        out_ids = [np.zeros(0, quant.id_dtype(encoder["vocab_size"]))] * n
        out_probs = [np.zeros(0, quant.code_dtype(encoder["quantization"]))] * n  # the kept entries' codes
    pseudo = [""] * n
    max_prob = np.full(n, np.nan)
    entropy = np.full(n, np.nan)
    errs = [str(e) for e in errors]
    ok = [i for i in range(n) if not errs[i]]
    batch_log = os.environ.get(BATCH_LOG_ENV)
    for group in sub_batches([len(waves[i]) for i in ok], batch_max_frames):
        idx = [ok[j] for j in group]
        if batch_log:  # one short O_APPEND write per line: lines of concurrent actors do not interleave
            with open(batch_log, "a", encoding="utf-8") as f:
                f.write(" ".join(str(utt_ids[i]) for i in idx) + "\n")
        results: list[SoftTargets] = ensemble([str(utt_ids[i]) for i in idx],
                                              [torch.from_numpy(np.asarray(waves[i])) for i in idx])
        for i, r in zip(idx, results):
            if r.ids.shape[0] == 0:
                errs[i] = "too_short: fewer samples than one output frame"
            elif not torch.isfinite(r.probs).all():
                errs[i] = "nan_output: the teacher produced NaN/inf probabilities"
            else:
                if encoder is None:
                    out_ids[i], out_probs[i] = r.ids.numpy(), r.probs.numpy()
                else:
                    out_counts[i], out_ids[i], out_probs[i] = encode_entries(r.ids.numpy(), r.probs.numpy(), **encoder)
                pseudo[i] = r.pseudo_text
                max_prob[i] = r.mean_max_prob
                entropy[i] = r.mean_entropy
                unmapped[i] = r.unmapped_mass
    targets = ({"ids": out_ids, "probs": out_probs} if encoder is None
               else {"counts": out_counts, "ids": out_ids, "codes": out_probs})
    return {"utt_id": np.asarray(utt_ids, dtype=object), "shard": np.asarray(shards), **targets,
            "pseudo": np.asarray(pseudo, dtype=object), "max_prob": max_prob, "entropy": entropy,
            "error": np.asarray(errs, dtype=object), "samples": np.asarray([len(w) for w in waves]),
            "unmapped": unmapped, "note": np.asarray([str(x) for x in (notes or [""] * n)], dtype=object)}

