"""Planning a labeling run: shards, teacher batches and the Ray input rows, with no teacher and no Ray.

The utterances (in the source's id order) are cut into shards of ``shard_size`` consecutive ids
(``plan_shards``), each shard sorted by duration (ties by id) and cut into teacher batches of at most
``read_batch_size`` utterances and ``batch_max_frames`` padded 10 ms frames (``plan_teacher_batches``).
Everything here is a pure function of the input and the options, so a rerun plans the same shards and
the same batches. The rows handed to Ray (``batch_rows``: one per teacher batch; ``shard_rows``: one per
shard) carry items (where the audio is, never the audio), compressed by ``pack_items``.
``plan_only`` is ``asr-kd label --dry-run``: the plan and what planning cost the driver.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

import numpy as np

from asr_kd.data.audio import utterance_seconds
from asr_kd.data.sources import LabelSource, open_source
from asr_kd.errors import AsrKdError
from asr_kd.label.layout import reads_in_actors

if TYPE_CHECKING:
    from asr_kd.data.datadir import DataDir
    from asr_kd.label.pipeline import LabelOptions


def plan_shards(data: "DataDir | LabelSource", shard_size: int,
                seconds: "Mapping[str, float] | None" = None) -> "Sequence[list[str]]":
    """Shards of ``shard_size`` consecutive utterance ids (the source's sorted order), each sorted by
    (duration, id) for batching.

    Consecutive ids keep locality: the segments of a recording (Kaldi ids start with the recording's)
    land in one shard or two neighbours, and the members of a shard come from one or two audio shards
    (``asr-kd data shard`` packs consecutive ids), so a labeling worker reads forward through a file
    instead of seeking all over the corpus; nothing is sorted across the whole corpus. With compact
    durations (``asr_kd.data.sources.Durations``) the plan is a ``ShardPlan`` that orders a shard's ids
    when asked; otherwise lists."""
    from asr_kd.data.sources import Durations

    if shard_size < 1:
        raise AsrKdError(f"label: shard size must be >= 1, got {shard_size}")
    seconds = seconds if seconds is not None else {u: utterance_seconds(data, u) for u in data.utt_ids}
    if isinstance(seconds, Durations):
        return ShardPlan(seconds.ids, np.asarray(seconds.values()), shard_size)
    ids = sorted(data.utt_ids)
    return [sorted(ids[i: i + shard_size], key=lambda u: (seconds[u], u)) for i in range(0, len(ids), shard_size)]


class ShardPlan(Sequence):
    """Shards of ``plan_shards`` over compact ids and durations (no per-utterance Python objects): shard
    ``s`` is ids ``s * shard_size ..`` sorted by (duration, id); ``plan[s]`` lists its ids when asked (the
    last few are cached)."""

    def __init__(self, ids: Sequence[str], durations: np.ndarray, shard_size: int):
        self.ids, self.durations, self.shard_size = ids, durations, shard_size
        self._cache: dict[int, list[str]] = {}

    def __len__(self) -> int:
        return -(-len(self.durations) // self.shard_size)

    def __getitem__(self, s):  # type: ignore[override]
        if isinstance(s, slice):
            return [self[i] for i in range(*s.indices(len(self)))]
        if s < 0:
            s += len(self)
        if not 0 <= s < len(self):
            raise IndexError(s)
        shard = self._cache.get(s)  # (the collector asks for a pending shard once per row)
        if shard is None:
            if len(self._cache) >= 64:
                self._cache.pop(next(iter(self._cache)))
            shard = self._cache[s] = [self.ids[i] for i in self.indices(s).tolist()]
        return shard

    def indices(self, s: int) -> np.ndarray:
        """Positions (in the source's sorted ids) of shard ``s``'s utterances, in plan order: by duration,
        ties by position (= by id)."""
        start = s * self.shard_size
        block = self.durations[start: start + self.shard_size]
        return start + np.lexsort((np.arange(len(block)), block))


def plan_teacher_batches(shard: list[str], seconds: Mapping[str, float], max_utts: int,
                         max_frames: int) -> list[list[str]]:
    """Cut one shard (sorted by duration) into teacher batches of consecutive utterances: at most
    ``max_utts`` utterances and ``max_frames`` padded 10 ms frames (count x longest) per batch.

    Depends only on the shard and the options — never on which other shards are done — so a resumed
    run forms exactly the batches an uninterrupted one does."""
    if max_utts < 1 or max_frames < 1:
        raise AsrKdError(f"label: batch sizes must be >= 1, got {max_utts} utterances / {max_frames} frames")
    return pack_by_frames(shard, [max(int(seconds[utt] * 100), 1) for utt in shard], max_frames, max_utts)


def pack_by_frames(items: list, frames: list[int], max_frames: int, max_utts: int | None = None) -> list[list]:
    """Greedy cut of ``items`` (in the given order) into consecutive groups whose count x longest
    ``frames`` stays within ``max_frames`` (and at most ``max_utts`` items); a lone long item is its own group."""
    groups: list[list] = []
    cur: list = []
    longest = 0
    for item, n in zip(items, frames):
        if cur and ((max_utts is not None and len(cur) >= max_utts) or max(longest, n) * (len(cur) + 1) > max_frames):
            groups.append(cur)
            cur, longest = [], 0
        cur.append(item)
        longest = max(longest, n)
    if cur:
        groups.append(cur)
    return groups


def _shard_batches(data: LabelSource, shards: "Sequence[list[str]]", s: int, seconds: Mapping[str, float],
                   max_utts: int, max_frames: int) -> list[list[list]]:
    """Shard ``s``'s planned teacher batches (``plan_teacher_batches``) as lists of items (``asr_kd.data.sources``:
    where the audio is, never the audio). Over a ``ShardPlan`` durations and items are looked up by
    index (no search by id)."""
    local = shard_seconds(shards, s, seconds)
    if isinstance(shards, ShardPlan) and hasattr(data, "item_at"):
        index = dict(zip(shards[s], shards.indices(s).tolist()))
        return [[data.item_at(index[u], u) for u in utts]
                for utts in plan_teacher_batches(shards[s], local, max_utts, max_frames)]
    return [[data.item(u) for u in utts] for utts in plan_teacher_batches(shards[s], local, max_utts, max_frames)]


def shard_seconds(shards: "Sequence[list[str]]", s: int, seconds: Mapping[str, float]) -> Mapping[str, float]:
    """Durations of shard ``s``'s utterances: looked up by index over a ``ShardPlan``, else ``seconds`` itself."""
    if isinstance(shards, ShardPlan):
        return dict(zip(shards[s], np.asarray(seconds.values())[shards.indices(s)].tolist()))
    return seconds


def pack_items(obj: list) -> bytes:
    """A row's planned items as zlib-compressed JSON: the paths, tar names and ids of neighbouring items
    repeat, so the driver holds ~4x fewer bytes per planned utterance (``asr-kd label --dry-run``)."""
    return zlib.compress(json.dumps(obj, separators=(",", ":")).encode("utf-8"), 6)


def unpack_items(blob: Any) -> list:
    """``pack_items`` reversed (a worker reading its row)."""
    return json.loads(zlib.decompress(bytes(blob)).decode("utf-8"))


def batch_rows(data: LabelSource, shards: "Sequence[list[str]]", todo: Iterable[int], seconds: Mapping[str, float],
               max_utts: int, max_frames: int) -> list[dict[str, Any]]:
    """One row per planned teacher batch of the shards in ``todo`` (layout "tasks", ``label_local``): its shard and
    its utterances' items (``pack_items``)."""
    return [{"shard": s, "utts": pack_items(items)} for s in todo
            for items in _shard_batches(data, shards, s, seconds, max_utts, max_frames)]


def shard_rows(data: LabelSource, shards: "Sequence[list[str]]", todo: Iterable[int], seconds: Mapping[str, float],
               max_utts: int, max_frames: int) -> list[dict[str, Any]]:
    """One row per shard of ``todo`` (layout "actors"): ``batches`` is the list of its planned teacher batches
    (``pack_items``), each a list of items — the batches ``batch_rows`` plans, in the same order."""
    return [{"shard": s, "batches": pack_items(_shard_batches(data, shards, s, seconds, max_utts, max_frames))}
            for s in todo]



@dataclasses.dataclass
class PlanSummary:
    """What ``asr-kd label --dry-run`` reports: the plan a run would execute, and what planning cost the driver."""

    utterances: int
    hours: float  # audio hours of the planned utterances (from the input's durations)
    shards: int
    shards_done: int  # complete in the store already (a rerun skips them)
    batches: int  # teacher batches of the shards to do
    padding: float  # fraction of padded 10 ms frames in those batches
    rows: int  # Ray input rows (one per shard with actors reading, one per batch with read tasks)
    driver_bytes: int  # growth of the driver's peak resident memory while planning
    wall_s: float

    @property
    def bytes_per_utterance(self) -> float:
        return self.driver_bytes / max(self.utterances, 1)

    def line(self) -> str:
        return (f"dry run: {self.utterances} utterances ({self.hours:.3f} h) in {self.shards} shards "
                f"({self.shards_done} done, {self.shards - self.shards_done} to do), {self.batches} teacher batches "
                f"({100 * self.padding:.1f} % padding), {self.rows} Ray input rows; planning took {self.wall_s:.1f} s "
                f"and {self.driver_bytes / 2**20:.1f} MiB of driver memory ({self.bytes_per_utterance:.0f} bytes per "
                "utterance); nothing was labeled or written")


def _rss_bytes() -> int:
    """This process's resident memory now (Linux /proc; 0 elsewhere)."""
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _peak_rss_bytes() -> int:
    """This process's peak resident memory so far."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def plan_only(data_dir: str, out_dir: str, options: LabelOptions, gpus_per_actor: float = 0.0) -> PlanSummary:
    """``asr-kd label --dry-run``: open the input, plan shards and batches and build the Ray input rows
    exactly as ``label`` would (the shards complete in ``out_dir``, if it exists, are left out), then
    report. No teacher is loaded, no Ray is started, nothing is written. ``options`` are checked by the
    caller (``asr_kd.label.pipeline.check_options``: the store settings, which planning does not use)."""
    from asr_kd.targets.layout import completed_shards

    o = options
    t0 = time.time()
    rss0 = _rss_bytes()
    data = open_source(data_dir, allow_pipes=o.allow_pipes)
    seconds = data.seconds()
    shards = plan_shards(data, o.shard_size, seconds)
    done = completed_shards(out_dir) if Path(out_dir).exists() else set()
    todo = [s for s in range(len(shards)) if s not in done]
    fused = reads_in_actors(o, gpus_per_actor)
    make_rows = shard_rows if fused else batch_rows
    rows = make_rows(data, shards, todo, seconds, o.read_batch_size, o.batch_max_frames)
    batches = frames = padded = 0
    for s in todo:
        local = shard_seconds(shards, s, seconds)
        for utts in plan_teacher_batches(shards[s], local, o.read_batch_size, o.batch_max_frames):
            n = [max(int(local[u] * 100), 1) for u in utts]
            batches += 1
            frames += sum(n)
            padded += max(n) * len(n)
    grown = max(_peak_rss_bytes() - rss0, 0)
    summary = PlanSummary(len(data), sum(seconds.values()) / 3600, len(shards), len(done), batches,
                          1 - frames / padded if padded else 0.0, len(rows), grown, time.time() - t0)
    del rows
    return summary

