"""A failed ``label`` run cleans up the same way whatever fails: Ray, if the run started it, is shut down,
and a store dir the run created that holds no finished shard is removed; a store from an earlier run stays."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from factories import ROOT, cli_env, make_data, make_teacher

# Run in a fresh interpreter: in this one a test session's Ray may be up already, and label() then neither
# starts nor stops Ray. The failure comes after Ray is up: the layout asks for a GPU the local cluster has not
# (actor_layout). An --audio-read value that only reads_in_actors checks, once the layout is known, failed at
# the same point and the same way before the fix.
FAILING_RUN = r"""
import json, sys
import ray
from asr_kd.errors import AsrKdError
from asr_kd.label.pipeline import LabelOptions, label

teacher, data, store = sys.argv[1:]
try:
    label([teacher], data, store, LabelOptions(top_k=4, shard_size=4, progress=False, actors=1, num_gpus_per_actor=1.0))
    error = None
except AsrKdError as exc:
    error = str(exc)
print(json.dumps({"error": error, "ray_up": ray.is_initialized()}))
"""


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("cleanup")
    return make_teacher(root / "teacher"), make_data(root, 6)


def _earlier_partial_store(teacher: Path, data: Path, store: Path) -> set[int]:
    """A store an earlier run left with some shards finished (one shard's marker removed: it is redone)."""
    from asr_kd.label.pipeline import LabelOptions, label_local
    from asr_kd.targets.layout import completed_shards

    label_local([str(teacher)], str(data), str(store), LabelOptions(top_k=4, shard_size=4, progress=False))
    (store / "shards" / "shard-00001.json").unlink()
    return completed_shards(store)


def test_a_failure_after_ray_started_shuts_it_down_and_leaves_no_empty_new_store(corpus, tmp_path):
    """Before the fix the run left the Ray it had started running, and its new empty store behind."""
    teacher, data = corpus
    store = tmp_path / "new_store"
    proc = subprocess.run([sys.executable, "-c", FAILING_RUN, str(teacher), str(data), str(store)],
                          capture_output=True, text=True, timeout=300, cwd=ROOT, env=cli_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "GPU(s) but the Ray cluster has 0" in (run["error"] or ""), run
    assert not run["ray_up"], run  # shut down by the run that started it
    assert not store.exists()  # created by the failed run, no shard finished: removed


def test_a_new_store_is_removed_on_failure_only_while_no_shard_is_finished(corpus, tmp_path):
    """The guard around ``label``'s store: any failure (Ctrl-C too) removes a store dir this run created while it
    holds no finished shard; one with a finished shard, or one that existed before the run, stays."""
    from asr_kd.label.pipeline import _new_store_removed_on_failure
    from asr_kd.targets.layout import completed_shards

    teacher, data = corpus
    new = tmp_path / "new"
    with pytest.raises(KeyboardInterrupt), _new_store_removed_on_failure(str(new)):
        (new / "shards").mkdir(parents=True)
        (new / "meta.json").write_text("{}")
        raise KeyboardInterrupt  # Ctrl-C before any shard was finished
    assert not new.exists()
    with pytest.raises(RuntimeError), _new_store_removed_on_failure(str(new)):
        _earlier_partial_store(teacher, data, new)  # this run finished shard 0, then failed
        raise RuntimeError("later failure")
    assert new.is_dir()  # kept: a rerun resumes from its finished shard
    old = tmp_path / "old"
    finished = _earlier_partial_store(teacher, data, old)
    assert finished == {0}
    with pytest.raises(RuntimeError), _new_store_removed_on_failure(str(old)):
        raise RuntimeError("failure")
    assert completed_shards(old) == finished  # an earlier run's store: never removed
    empty_old = tmp_path / "old_empty"
    (empty_old / "shards").mkdir(parents=True)
    with pytest.raises(RuntimeError), _new_store_removed_on_failure(str(empty_old)):
        raise RuntimeError("failure")
    assert empty_old.is_dir()  # it existed before this run, even without a finished shard: left alone
