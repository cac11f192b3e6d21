"""Length-bucketed batches bounded by total padded frames, deterministic per (seed, epoch).

Why not a library sampler: SpeechBrain's DynamicBatchSampler and lhotse's DynamicBucketingSampler
both bucket by duration, but neither lets us re-create the exact batch list of epoch ``e`` from
``(seed, e)`` alone and skip the first ``n`` batches, which is what makes ``--resume`` after a kill
reach the same weights as an uninterrupted run. The plan here is a pure function of its inputs.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class BatchPlanItem:
    """One batch: utterance ids sorted longest first, and the padded size in 10 ms input frames."""

    utt_ids: tuple[str, ...]
    padded_frames: int


def plan_batches(
    lengths: dict[str, int],
    max_frames: int,
    seed: int,
    epoch: int,
    shuffle: bool = True,
    max_utts: int | None = None,
) -> list[BatchPlanItem]:
    """Group utterances of similar length into batches of at most ``max_frames`` padded frames.

    ``lengths`` maps utterance id -> length in 10 ms feature frames. Utterances are sorted by length
    (ties broken by id, so the plan never depends on dict order), cut greedily into batches whose
    ``len(batch) * longest`` stays within ``max_frames`` (an utterance longer than ``max_frames`` gets
    a batch of its own), then the batch order is shuffled with ``Random(seed * 1_000_003 + epoch)``.
    Within a sort run, neighbouring lengths are lightly shuffled first so that equal-length
    utterances do not always meet in the same batch.
    """
    rng = random.Random(seed * 1_000_003 + epoch)
    items = sorted(lengths.items(), key=lambda kv: (kv[1], kv[0]))
    if shuffle:
        # jitter: sort by length rounded to ~5 %, random within a band
        items = sorted(items, key=lambda kv: (int(kv[1] ** 0.5 * 4), rng.random()))
    batches: list[BatchPlanItem] = []
    current: list[tuple[str, int]] = []
    longest = 0
    for utt, n in items:
        new_longest = max(longest, n)
        too_many = max_utts is not None and len(current) + 1 > max_utts
        if current and (new_longest * (len(current) + 1) > max_frames or too_many):
            batches.append(_finish(current))
            current, new_longest = [], n
        current.append((utt, n))
        longest = new_longest
    if current:
        batches.append(_finish(current))
    if shuffle:
        rng.shuffle(batches)
    return batches


def _finish(batch: list[tuple[str, int]]) -> BatchPlanItem:
    batch = sorted(batch, key=lambda kv: (-kv[1], kv[0]))
    return BatchPlanItem(tuple(u for u, _ in batch), batch[0][1] * len(batch))


def mix_batches(
    labeled: list[BatchPlanItem],
    unlabeled: list[BatchPlanItem],
    unlabeled_per_labeled: float,
    seed: int,
    epoch: int,
) -> list[tuple[str, BatchPlanItem]]:
    """Interleave labeled and unlabeled batches: ``unlabeled_per_labeled`` unlabeled per labeled batch.

    An epoch is one pass over the unlabeled batches; the labeled batches are cycled (a new order each
    cycle) or cut to ``round(len(unlabeled) / unlabeled_per_labeled)`` batches, so the mix holds for
    any corpus sizes. With one list empty, the other is returned as is. Positions are spread evenly
    with a phase drawn from ``(seed, epoch)``; the result is deterministic. Returns
    ``(source, batch)`` pairs with source ``"labeled"`` or ``"unlabeled"``.
    """
    if not unlabeled:
        return [("labeled", b) for b in labeled]
    if not labeled:
        return [("unlabeled", b) for b in unlabeled]
    if unlabeled_per_labeled <= 0:
        raise ValueError(f"unlabeled_per_labeled must be > 0, got {unlabeled_per_labeled}")
    rng = random.Random(seed * 7919 + epoch)
    n_labeled = max(1, round(len(unlabeled) / unlabeled_per_labeled))
    chosen: list[BatchPlanItem] = []
    while len(chosen) < n_labeled:
        cycle = list(labeled)
        if chosen:
            rng.shuffle(cycle)
        chosen.extend(cycle[: n_labeled - len(chosen)])
    total = n_labeled + len(unlabeled)
    share = n_labeled / total
    out: list[tuple[str, BatchPlanItem]] = []
    acc = rng.random()
    li = ui = 0
    for _ in range(total):
        acc += share
        if (acc >= 1.0 and li < n_labeled) or ui >= len(unlabeled):
            acc -= 1.0
            out.append(("labeled", chosen[li]))
            li += 1
        else:
            out.append(("unlabeled", unlabeled[ui]))
            ui += 1
    return out
