"""The "actors" labeling layout on plain Ray actors: each actor labels whole shards, two in flight.

With one row per shard there is nothing for Ray Data to stream, split or fuse, and its machinery is not
free: on 2 cores its executor loop, prefetch threads and helper actors (stats, actor locations) took ~3 %
of the machine from the teacher actors, and its start-up added ~2 s (``label_throughput``'s breakdown).
The tasks layout (CPU read tasks feeding GPU actors), where Ray Data does stream, still uses it.

Fault tolerance is ours rather than Ray's actor restart: a restarted actor runs its queued tasks only
once it is back, and after the loss of a host it may never come back (no free CPU elsewhere), leaving
its shards waiting forever. Here a task whose actor died puts its shard back at the head of the queue
for the live actors, and a replacement actor is started and used once (if ever) it is up. Results are
whole shards, so a shard is never half-labeled twice; the driver keys rows by utterance anyway.
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Iterable, Iterator
from typing import Any

from asr_kd.errors import AsrKdError, remote_error_message

log = logging.getLogger(__name__)


class ShardActorPool:
    """``size`` actors of ``actor_cls`` (a ``ray.remote`` class with ``ready()`` and ``label_shard(shard,
    batches)``) created with ``options`` (num_cpus, num_gpus, runtime_env) and ``kwargs``.

    ``map(rows)`` yields each row's result once, in completion order: rows go to actors ``in_flight`` at a
    time each (the next one waits at the actor while one runs); labeling starts once every actor is up
    (within ``start_timeout_s``; an actor that fails to start raises its error), so that the first actor up
    does not take the first shards of a small run alone. After ``max_deaths`` actor deaths it gives up
    (the run resumes from the shards written)."""

    def __init__(self, actor_cls: Any, size: int, options: dict[str, Any], kwargs: dict[str, Any], in_flight: int = 2,
                 start_timeout_s: float = 600.0, max_deaths: int | None = None):
        self.actor_cls, self.size, self.options, self.kwargs = actor_cls, size, options, kwargs
        self.in_flight, self.start_timeout_s = in_flight, start_timeout_s
        self.max_deaths = max_deaths if max_deaths is not None else 3 * size
        self.deaths = 0

    def _start(self) -> Any:
        return self.actor_cls.options(**self.options).remote(**self.kwargs)

    def map(self, rows: Iterable[dict[str, Any]]) -> Iterator[Any]:
        import ray
        from ray.exceptions import RayActorError

        queue = collections.deque(rows)
        actors = [self._start() for _ in range(self.size)]
        starting = {a.ready.remote(): a for a in actors}  # replacements are added here too
        live: list[Any] = []
        running: dict[Any, tuple[Any, dict[str, Any]]] = {}  # task ref -> (actor, row)
        load: collections.Counter = collections.Counter()
        try:
            self._wait_for_all(starting, live)

            def dispatch() -> None:
                # one row per actor first (a few rows spread over all); a second one waits at an actor only while
                # every live actor still has work queued behind it, so the run does not end with one actor
                # labeling two shards while the others idle
                for level in range(1, self.in_flight + 1):
                    for actor in live:
                        if load[actor] < level and queue and (level == 1 or len(queue) >= len(live)):
                            row = queue.popleft()
                            running[actor.label_shard.remote(row["shard"], row["batches"])] = (actor, row)
                            load[actor] += 1

            dispatch()
            while running or queue:
                if not running and not starting:
                    raise AsrKdError(f"label: every teacher actor died ({self.deaths} deaths) with {len(queue)} shard(s) "
                                     "left; rerun the same command to finish them")
                waiting = list(running) + list(starting)
                timeout = None if running else self.start_timeout_s  # only replacements left to wait for
                done, _ = ray.wait(waiting, num_returns=1, timeout=timeout)
                if not done:
                    raise AsrKdError(f"label: no teacher actor left and none restarted within {self.start_timeout_s:g} s "
                                     f"({len(queue)} shard(s) left); rerun the same command when the cluster has room")
                ref = done[0]
                if ref in starting:
                    actor = starting.pop(ref)
                    try:
                        ray.get(ref)
                    except RayActorError:
                        self._died(actor, None, queue, live, starting)
                        continue
                    live.append(actor)
                    log.info("label: a replacement teacher actor is up (%d live)", len(live))
                    dispatch()
                    continue
                actor, row = running.pop(ref)
                load[actor] -= 1
                try:
                    result = ray.get(ref)
                except RayActorError as exc:
                    self._died(actor, row, queue, live, starting, exc)
                    dispatch()
                    continue
                dispatch()  # the next row is on its way before this result is handled
                yield result
        finally:
            for actor in set(live) | set(starting.values()) | {a for a, _ in running.values()}:
                ray.kill(actor, no_restart=True)

    def _wait_for_all(self, starting: dict[Any, Any], live: list[Any]) -> None:
        """Wait until every first actor is up; the first one that fails to start raises its own error."""
        import ray

        deadline = time.monotonic() + self.start_timeout_s
        while starting:
            done, _ = ray.wait(list(starting), num_returns=1, timeout=max(0.0, deadline - time.monotonic()))
            if not done:
                raise AsrKdError(f"label: {len(starting)} of {self.size} teacher actor(s) did not start within "
                                 f"{self.start_timeout_s:g} s: the cluster lacks the CPUs/GPUs they ask for "
                                 f"({self.options.get('num_cpus')} CPU, {self.options.get('num_gpus') or 0} GPU each); "
                                 "use fewer --actors or a smaller --actor-cpus")
            actor = starting.pop(done[0])
            try:
                ray.get(done[0])
            except Exception as exc:
                ours = remote_error_message(exc)
                if ours is not None:
                    raise AsrKdError(f"label: {ours}") from None
                raise
            live.append(actor)

    def _died(self, actor: Any, row: dict[str, Any] | None, queue: collections.deque, live: list[Any],
              starting: dict[Any, Any], exc: BaseException | None = None) -> None:
        """An actor is gone: its row back at the head of the queue, a replacement started (until ``max_deaths``)."""
        import ray

        if row is not None:
            queue.appendleft(row)
        if actor not in live and row is not None:
            return  # already counted (its other in-flight rows fail one by one)
        if actor in live:
            live.remove(actor)
        self.deaths += 1
        ray.kill(actor, no_restart=True)
        log.warning("label: a teacher actor died (%s); its shards go back to the queue (%d death(s) so far)",
                    type(exc).__name__ if exc else "did not restart", self.deaths)
        if self.deaths > self.max_deaths:
            raise AsrKdError(f"label: teacher actors died {self.deaths} times (more than {self.max_deaths}); the shards "
                             "written are kept: fix the cause (memory? a lost host?) and rerun the same command")
        replacement = self._start()
        starting[replacement.ready.remote()] = replacement
