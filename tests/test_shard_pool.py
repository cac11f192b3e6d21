"""ShardActorPool (the "actors" labeling layout on plain Ray actors), with small stand-in actors on the
session's local Ray: rows spread over all actors, each result once; a dead actor's rows go to the live
actors and a replacement starts; an actor that cannot start raises its own error; a crash loop stops."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from asr_kd.errors import AsrKdError
from asr_kd.label.shard_pool import ShardActorPool

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(autouse=True)
def _ship_this_module_by_value():
    """Ray's workers cannot import the tests: send the stand-in actor class by value."""
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield
    cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


class Worker:
    """Returns its pid with the row; dies (os._exit) at row ``die_at`` while ``marker`` does not exist yet,
    or at every row when ``always_die``."""

    def __init__(self, die_at: int = -1, marker: str = "", always_die: bool = False, refuse: bool = False):
        if refuse:
            raise AsrKdError("this teacher needs a GPU: none is visible")
        self.die_at, self.marker, self.always_die = die_at, marker, always_die

    def ready(self) -> bool:
        return True

    def label_shard(self, shard: int, batches: bytes) -> dict:
        if self.always_die or (shard == self.die_at and not os.path.exists(self.marker)):
            if self.marker:
                Path(self.marker).write_text(str(os.getpid()))
            os._exit(1)
        return {"shard": shard, "batches": batches, "pid": os.getpid()}


def rows(n: int) -> list[dict]:
    return [{"shard": s, "batches": f"b{s}".encode()} for s in range(n)]


def pool(ray, size: int = 2, **kwargs) -> ShardActorPool:
    return ShardActorPool(ray.remote(Worker), size, dict(num_cpus=0.5), kwargs, start_timeout_s=60)


def test_a_few_rows_spread_over_every_actor_and_each_result_comes_once(ray_cluster):
    out = list(pool(ray_cluster).map(rows(2)))  # two rows, two actors in flight 2: one each, not both on the first
    assert sorted(r["shard"] for r in out) == [0, 1] and len({r["pid"] for r in out}) == 2
    out = list(pool(ray_cluster).map(rows(9)))
    assert sorted((r["shard"], r["batches"]) for r in out) == [(s, f"b{s}".encode()) for s in range(9)]


def test_a_dead_actors_rows_go_to_the_live_actors_and_a_replacement_starts(ray_cluster, tmp_path):
    marker = tmp_path / "died"
    p = pool(ray_cluster, die_at=3, marker=str(marker))
    out = list(p.map(rows(12)))
    assert marker.exists() and p.deaths == 1
    assert sorted(r["shard"] for r in out) == list(range(12))  # nothing lost, nothing twice
    assert next(r["pid"] for r in out if r["shard"] == 3) != int(marker.read_text())  # labeled again, elsewhere


def test_an_actor_that_cannot_start_raises_its_own_error(ray_cluster):
    with pytest.raises(AsrKdError, match="label: this teacher needs a GPU: none is visible"):
        list(pool(ray_cluster, refuse=True).map(rows(2)))


def test_actors_dying_at_every_row_stop_after_max_deaths_with_a_clear_error(ray_cluster):
    p = ShardActorPool(ray_cluster.remote(Worker), 2, dict(num_cpus=0.5), dict(always_die=True), start_timeout_s=60,
                       max_deaths=3)
    with pytest.raises(AsrKdError, match=r"died 4 times \(more than 3\).*rerun the same command"):
        list(p.map(rows(4)))
