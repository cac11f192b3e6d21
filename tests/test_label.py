"""Ray labeling: equality with a plain loop, multi-node, actor crash, driver interrupt, bad input."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from asr_kd.data.cmvn import GlobalCMVN
from asr_kd.data.datadir import DataDir, write_data_dir
from asr_kd.data.features import FbankConfig
from asr_kd.data.units import CharTokenizer
from asr_kd.label.pipeline import LabelOptions, label, label_local
from asr_kd.label.plan import plan_shards
from asr_kd.models import PRESETS, build_model, parse_model_config
from asr_kd.models.model_dir import save_model_dir
from asr_kd.targets.reader import StoreReader
from asr_kd.targets.verify import verify_store

ROOT = Path(__file__).resolve().parents[1]


def make_teacher(out: Path, seed: int = 0) -> Path:
    """A tiny full-context conformer with seeded random weights, its output layer scaled up so that its
    frames are decisive (a near-uniform random teacher would make any two stores look alike)."""
    torch.manual_seed(seed)
    tok = CharTokenizer.build(["hello world", "the quick brown fox jumps over a lazy dog"])
    model = build_model(parse_model_config(PRESETS["tiny_conformer"]), tok.vocab_size).eval()
    with torch.no_grad():
        model.output.weight.mul_(8.0)
        model.output.bias.add_(torch.linspace(-1, 1, tok.vocab_size))  # a spread of ranks, not ties
    cmvn = GlobalCMVN(mean=torch.full((80,), -8.0), std=torch.full((80,), 4.0))
    save_model_dir(out, model, parse_model_config(PRESETS["tiny_conformer"]), tok, cmvn, FbankConfig())
    return out


def write_wav(path: Path, seconds: float, seed: int, sr: int = 16000) -> None:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    f0 = 120 + 80 * rng.random()
    wave = 0.3 * np.sin(2 * np.pi * f0 * t * (1 + 0.3 * np.sin(2 * np.pi * 1.5 * t))) + 0.05 * rng.standard_normal(t.size)
    sf.write(path, wave.astype(np.float32), sr, subtype="PCM_16")


def make_data(root: Path, n: int, bad: bool = False) -> Path:
    audio = root / "audio"
    audio.mkdir(parents=True, exist_ok=True)
    wav_scp, utt2spk = {}, {}
    for i in range(n):
        utt = f"spk{i % 3}-utt{i:03d}"
        p = audio / f"{utt}.wav"
        write_wav(p, 0.4 + 0.15 * (i % 7), seed=i)
        wav_scp[utt], utt2spk[utt] = str(p), f"spk{i % 3}"
    if bad:
        wav_scp["bad-missing"] = str(audio / "does-not-exist.wav")
        (audio / "empty.wav").write_bytes(b"")
        wav_scp["bad-empty"] = str(audio / "empty.wav")
        (audio / "corrupt.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunkjunkjunk" * 10)
        wav_scp["bad-corrupt"] = str(audio / "corrupt.wav")
        nan = np.zeros(16000, dtype=np.float32)
        nan[100:200] = np.nan
        sf.write(audio / "nan.wav", nan, 16000, subtype="FLOAT")
        wav_scp["bad-nan"] = str(audio / "nan.wav")
        for u in ("bad-missing", "bad-empty", "bad-corrupt", "bad-nan"):
            utt2spk[u] = "bad"
    d = root / "data"
    write_data_dir(DataDir(wav_scp=wav_scp, utt2spk=utt2spk), d)
    return d


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("label")
    teacher = make_teacher(root / "teacher")
    data = make_data(root / "corpus", 30)
    return root, teacher, data


def options(**kw) -> LabelOptions:
    base = dict(top_k=4, shard_size=7, actors=2, actor_num_cpus=0.5, read_batch_size=4, progress=False)
    base.update(kw)
    return LabelOptions(**base)


LOG8_STEP = (math.log(1e6) - math.log(1e-10)) / 255  # one log8 code: 0.1445 nats of log-odds


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p.astype(np.float64), 1e-10, 1 - 1e-6)
    return np.log(p) - np.log1p(-p)


def target_differences(ids_a: np.ndarray, p_a: np.ndarray, ids_b: np.ndarray, p_b: np.ndarray) -> list[str]:
    """How two top-k target sequences of one utterance differ beyond quantization (empty: the same).

    The same teacher on the same audio gives the same floats up to summation order (batch padding),
    so each stored probability may move by at most one quantization code (log8: one step of log-odds;
    float16 is finer) and a unit id may change rank only where its probability is within two codes of
    a neighbour's. Ids are compared *exactly* at every rank whose margin to the ranks above and below
    exceeds that, so a teacher that put its mass on other units cannot pass as "close enough".
    """
    if ids_a.shape != ids_b.shape:
        return [f"shape {ids_a.shape} vs {ids_b.shape}"]
    out = []
    la, lb = _logit(p_a), _logit(p_b)
    far = np.abs(la - lb) > 1.01 * LOG8_STEP + 1e-6
    for t, r in zip(*np.nonzero(far)):
        out.append(f"frame {t} rank {r}: p {p_a[t, r]:.4g} vs {p_b[t, r]:.4g}")
    k = ids_a.shape[1]
    margin = 2 * LOG8_STEP
    for r in range(k - 1):  # the last stored rank has an unknown neighbour below: its id is not compared
        clear = la[:, r] - la[:, r + 1] > margin
        if r > 0:
            clear &= la[:, r - 1] - la[:, r] > margin
        for t in np.nonzero(clear & (ids_a[:, r] != ids_b[:, r]))[0]:
            out.append(f"frame {t} rank {r}: unit {ids_a[t, r]} vs {ids_b[t, r]} (margin {la[t, r] - la[t, r + 1]:.2f} nats)")
    return out


def assert_same_targets(a: Path, b: Path) -> int:
    """Both stores hold the same utterances with the same targets; returns how many ids were compared."""
    ra, rb = StoreReader(a), StoreReader(b)
    assert ra.utt_ids == rb.utt_ids
    compared = 0
    for utt in ra.utt_ids:
        (ia, pa), (ib, pb) = ra.get_sparse(utt), rb.get_sparse(utt)
        problems = target_differences(ia, pa, ib, pb)
        assert not problems, f"{utt}: {problems[:5]}"
        compared += int((_logit(pa[:, 0]) - _logit(pa[:, 1]) > 2 * LOG8_STEP).sum())
    assert compared > 0, "no frame had a clear top-1: the comparison checked no unit id"
    return compared


def test_target_comparison_tells_two_utterances_apart(setup, tmp_path):
    """Negative control for ``assert_same_targets``: two different utterances (cut to one length) differ,
    and so do the targets of one utterance from a teacher with other weights."""
    root, teacher, data = setup
    label_local([str(teacher)], str(data), str(tmp_path / "a"), options())
    label_local([str(make_teacher(tmp_path / "t2", seed=7))], str(data), str(tmp_path / "b"), options())
    ra, rb = StoreReader(tmp_path / "a"), StoreReader(tmp_path / "b")
    u, v = ra.utt_ids[0], ra.utt_ids[1]
    (iu, pu), (iv, pv) = ra.get_sparse(u), ra.get_sparse(v)
    n = min(len(iu), len(iv))
    assert target_differences(iu[:n], pu[:n], iv[:n], pv[:n])
    assert target_differences(*ra.get_sparse(u), *rb.get_sparse(u))
    assert target_differences(iu, pu, iu, pu) == []
    # the same probabilities on other units: the top-1 and second ids swapped (mutation the old helper, dense
    # probabilities within atol=0.02 of a near-uniform random teacher and no id comparison, let through)
    swapped = iu.copy()
    swapped[:, [0, 1]] = swapped[:, [1, 0]]
    assert any("unit" in d for d in target_differences(iu, pu, swapped, pu))
    with pytest.raises(AssertionError):
        assert_same_targets(tmp_path / "a", tmp_path / "b")


def test_ray_store_equals_plain_loop(setup, ray_cluster):
    """The default CPU layout (each actor decodes its own shards and sends compact columns back)."""
    root, teacher, data = setup
    s_ray = label([str(teacher)], str(data), str(root / "store_ray"), options())
    s_loc = label_local([str(teacher)], str(data), str(root / "store_local"), options())
    assert s_ray.utterances == s_loc.utterances == 30 and s_ray.rejects == 0
    assert_same_targets(root / "store_ray", root / "store_local")
    reader = StoreReader(root / "store_ray")
    index_lines = (root / "store_ray" / "index.tsv").read_text().splitlines()
    assert len(index_lines) == len(set(line.split("\t")[0] for line in index_lines)) == 30  # none twice
    assert reader.meta.k == 4 and reader.meta.quantization == "log8"
    pseudo = (root / "store_ray" / "text.pseudo").read_text().splitlines()
    assert sorted(line.split(" ", 1)[0] for line in pseudo) == reader.utt_ids
    verify_store(reader)


def test_read_tasks_layout_writes_the_store_the_actors_layout_writes(setup, ray_cluster, caplog):
    """``--audio-read tasks`` (CPU read tasks feed the actors, one row per planned batch: the GPU layout)
    and ``actors`` (one row per shard) run the same planned batches, so their stores are byte-identical."""
    root, teacher, data = setup
    with caplog.at_level("INFO", logger="asr_kd.label.pipeline"):
        label([str(teacher)], str(data), str(root / "store_tasks"), options(audio_read="tasks"))
        label([str(teacher)], str(data), str(root / "store_actors"), options(audio_read="actors"))
    layouts = [r.getMessage() for r in caplog.records if "layout" in r.getMessage()]
    assert "audio decoding on CPU tasks" in layouts[0] and "each actor decodes its own shards" in layouts[1], layouts
    shards = sorted(p.name for p in (root / "store_tasks" / "shards").iterdir())
    assert shards == sorted(p.name for p in (root / "store_actors" / "shards").iterdir()) and len(shards) == 10
    for name in shards:
        assert (root / "store_tasks" / "shards" / name).read_bytes() == (root / "store_actors" / "shards" / name).read_bytes(), name


def test_actor_killed_mid_run_loses_nothing(setup, ray_cluster, monkeypatch):
    root, teacher, data = setup
    marker = root / "actor-died.txt"
    monkeypatch.setenv("ASR_KD_TEST_KILL_ACTOR_AFTER_BATCHES", "2")
    monkeypatch.setenv("ASR_KD_TEST_KILL_ACTOR_MARKER", str(marker))
    summary = label([str(teacher)], str(data), str(root / "store_crash"), options())
    assert marker.exists(), "the test hook did not kill an actor"
    assert summary.utterances == 30
    verify_store(StoreReader(root / "store_crash"))
    if not (root / "store_local").exists():
        label_local([str(teacher)], str(data), str(root / "store_local"), options())
    assert_same_targets(root / "store_crash", root / "store_local")


def test_driver_interrupt_then_rerun_completes_only_missing_shards(setup, ray_cluster, monkeypatch):
    root, teacher, data = setup
    out = root / "store_resume"
    n_shards = len(plan_shards(__import__("asr_kd.data.datadir", fromlist=["x"]).read_data_dir(data), 7))
    monkeypatch.setenv("ASR_KD_TEST_STOP_AFTER_SHARDS", "2")
    with pytest.raises(KeyboardInterrupt):
        label([str(teacher)], str(data), str(out), options())
    monkeypatch.delenv("ASR_KD_TEST_STOP_AFTER_SHARDS")
    done_before = sorted(int(p.stem.split("-")[1]) for p in (out / "shards").glob("shard-*.json"))
    assert len(done_before) >= 2
    summary = label([str(teacher)], str(data), str(out), options())
    assert summary.shards_skipped == done_before
    assert sorted(summary.shards_written) == [s for s in range(n_shards) if s not in done_before]
    if not (root / "store_local").exists():
        label_local([str(teacher)], str(data), str(root / "store_local"), options())
    assert_same_targets(out, root / "store_local")


def test_bad_audio_goes_to_rejects_and_the_rest_is_labeled(tmp_path, setup, ray_cluster):
    _, teacher, _ = setup
    data = make_data(tmp_path / "corpus", 10, bad=True)
    summary = label([str(teacher)], str(data), str(tmp_path / "store"), options())
    assert summary.utterances == 10 and summary.rejects == 4
    rejects = dict(line.split("\t", 1) for line in (tmp_path / "store" / "rejects.tsv").read_text().splitlines())
    assert rejects["bad-missing"].startswith("missing")
    assert rejects["bad-empty"].split(":")[0] in ("empty", "unreadable")
    assert rejects["bad-corrupt"].startswith("unreadable")
    assert rejects["bad-nan"].startswith("nan_or_inf")
    assert len(StoreReader(tmp_path / "store").utt_ids) == 10


def _per_utterance_confidence(teacher: Path, data: Path) -> dict[str, tuple[float, float]]:
    """``{utt: (mean max probability, mean entropy)}`` computed by the ensemble one utterance at a time."""
    from asr_kd.data.audio import load_audio
    from asr_kd.data.datadir import read_data_dir
    from asr_kd.label.teacher import TeacherEnsemble

    ens = TeacherEnsemble([str(teacher)], top_k=4)
    d = read_data_dir(data)
    out = {}
    for u in d.utt_ids:
        r = ens([u], [load_audio(d.source(u), sample_rate=16000)])[0]
        out[u] = (r.mean_max_prob, r.mean_entropy)
    return out


def _midpoint_threshold(values: dict[str, float]) -> float:
    v = sorted(values.values())
    lo, hi = v[len(v) // 2 - 1], v[len(v) // 2]
    assert hi - lo > 1e-4, "two utterances tie at the median: the split would depend on float noise"
    return (lo + hi) / 2


@pytest.mark.parametrize("option, column, rejected_if", [
    ("min_max_prob", 0, lambda v, t: v < t),
    ("max_entropy", 1, lambda v, t: v > t),
])
def test_confidence_filter_at_the_median_splits_the_corpus(tmp_path, setup, option, column, rejected_if):
    """With the threshold between the two middle utterances, exactly the less confident half is rejected,
    named in rejects.tsv with its value, and the other half is in the store (mutations caught: a filter that
    rejects everything -- the only case tested before --, a comparison the wrong way round, max_entropy ignored)."""
    root, teacher, data = setup
    values = {u: c[column] for u, c in _per_utterance_confidence(teacher, data).items()}
    threshold = _midpoint_threshold(values)
    want_rejected = {u for u, v in values.items() if rejected_if(v, threshold)}
    assert len(want_rejected) == 15
    s = label_local([str(teacher)], str(data), str(tmp_path / "store"), options(**{option: threshold}))
    assert (s.utterances, s.rejects) == (15, 15)
    rejects = dict(line.split("\t", 1) for line in (tmp_path / "store" / "rejects.tsv").read_text().splitlines())
    assert set(rejects) == want_rejected
    assert all(r.startswith("low_confidence") and f"{values[u]:.3f}" in r for u, r in rejects.items())
    assert set(StoreReader(tmp_path / "store").utt_ids) == set(values) - want_rejected


def _shard_batches(teacher: Path, data: Path, shard: list[str]) -> list[dict]:
    """The collector's input for one shard, as two result batches (first half, second half)."""
    from asr_kd.data.audio import load_audio
    from asr_kd.data.datadir import read_data_dir
    from asr_kd.label.worker import label_rows
    from asr_kd.label.teacher import TeacherEnsemble

    ens = TeacherEnsemble([str(teacher)], top_k=4)
    d = read_data_dir(data)
    half = len(shard) // 2
    out = []
    for part in (shard[:half], shard[half:]):
        waves = [load_audio(d.source(u), sample_rate=16000).numpy() for u in part]
        out.append(label_rows(ens, part, [0] * len(part), waves, [""] * len(part), 40000))
    return out


def test_collector_writes_nothing_twice_when_a_batch_comes_back_twice(setup, tmp_path):
    """A retried Ray task can deliver a result batch again, before or after its shard is complete. The
    crash test above kills an actor before it computes, so this is what shows "nothing written twice".
    (Mutation caught: keying pending rows by position instead of utterance id.)"""
    from asr_kd.data.datadir import read_data_dir
    from asr_kd.label.collector import ShardCollector, open_writer
    from asr_kd.label.pipeline import _meta_for
    from asr_kd.label.teacher import TeacherEnsemble

    root, teacher, data = setup
    shard = plan_shards(read_data_dir(data), 7)[0]
    first, second = _shard_batches(teacher, data, shard)
    o = options()
    writer = open_writer(str(tmp_path / "store"), _meta_for(TeacherEnsemble([str(teacher)], top_k=4), o), o)
    collector = ShardCollector(writer, [shard], o, 16000)
    collector.add(first)
    collector.add(first)  # the same rows again while the shard is still pending
    assert collector.written == []
    collector.add(second)
    assert collector.written == [0] and collector.labeled == len(shard) and not collector.pending
    writer.finalize(expected_shards=1)
    index = [line.split("\t")[0] for line in (tmp_path / "store" / "index.tsv").read_text().splitlines()]
    assert sorted(index) == sorted(shard)  # each utterance once


def test_collector_ignores_a_batch_that_comes_back_after_its_shard_was_written(setup, tmp_path):
    from asr_kd.data.datadir import read_data_dir
    from asr_kd.label.collector import ShardCollector, open_writer
    from asr_kd.label.pipeline import _meta_for
    from asr_kd.label.teacher import TeacherEnsemble

    root, teacher, data = setup
    shard = plan_shards(read_data_dir(data), 7)[0]
    first, second = _shard_batches(teacher, data, shard)
    o = options()
    writer = open_writer(str(tmp_path / "store"), _meta_for(TeacherEnsemble([str(teacher)], top_k=4), o), o)
    collector = ShardCollector(writer, [shard], o, 16000)
    for batch in (first, second, second, first):
        collector.add(batch)
    assert collector.written == [0] and collector.labeled == len(shard) and not collector.pending


def test_collector_counts_utterances_per_node_once_even_when_a_batch_comes_back(setup, tmp_path):
    """The actors tag each row with their node's IP; the summary's ``by node`` counts each utterance of
    a written shard once (a retried batch from another node replaces the row, it does not add to it), and
    is shown only when more than one node labeled (the multi-host test reads it)."""
    from asr_kd.data.datadir import read_data_dir
    from asr_kd.label.collector import ShardCollector, open_writer
    from asr_kd.label.pipeline import LabelSummary, _meta_for
    from asr_kd.label.teacher import TeacherEnsemble

    root, teacher, data = setup
    shard = plan_shards(read_data_dir(data), 7)[0]
    first, second = _shard_batches(teacher, data, shard)

    def on(node: str, batch: dict) -> dict:
        return {**batch, "node": np.asarray([node] * len(batch["utt_id"]), dtype=object)}

    o = options()
    writer = open_writer(str(tmp_path / "store"), _meta_for(TeacherEnsemble([str(teacher)], top_k=4), o), o)
    collector = ShardCollector(writer, [shard], o, 16000)
    collector.add(on("10.0.0.2", first))
    collector.add(on("10.0.0.1", first))  # retried on the head after its first node died
    collector.add(on("10.0.0.2", second))
    collector.add(on("10.0.0.1", second))  # a late duplicate after the shard was written: dropped
    assert collector.written == [0]
    assert collector.nodes == {"10.0.0.1": len(first["utt_id"]), "10.0.0.2": len(second["utt_id"])}
    line = LabelSummary(7, 0, 0.001, 1.0, [0], [], collector.nodes).line()
    assert line.endswith(f"; by node: 10.0.0.1 {len(first['utt_id'])}, 10.0.0.2 {len(second['utt_id'])}")
    assert "by node" not in LabelSummary(7, 0, 0.001, 1.0, [0], [], {"10.0.0.1": 7}).line()


def test_teachers_with_different_units_are_refused(tmp_path, setup):
    _, teacher, data = setup
    from asr_kd.errors import AsrKdError

    other = tmp_path / "other"
    torch.manual_seed(1)
    tok = CharTokenizer.build(["xyz"])
    cfg = parse_model_config(PRESETS["tiny_conformer"])
    save_model_dir(other, build_model(cfg, tok.vocab_size), cfg, tok,
                   GlobalCMVN(mean=torch.zeros(80), std=torch.ones(80)), FbankConfig())
    with pytest.raises(AsrKdError, match="units"):
        label_local([str(teacher), str(other)], str(data), str(tmp_path / "store"), options())


def test_multi_teacher_average_and_two_node_cluster(tmp_path, setup):
    """Two teachers averaged, labeled on a ray.cluster_utils.Cluster with two nodes (own process).

    Each node has 2 logical CPUs and each actor asks for 1.5, so one actor fits per node; every worker
    process runs a setup hook that wraps ``TeacherActor``'s labeling methods (``label_shard``, ``label_decoded``)
    to log the node id of each row it labels. Two distinct nodes must have labeled rows, together all 30 (mutations caught: one actor, or
    both actors on the head -- the test used to count alive nodes only, which is 2 either way)."""
    root, teacher, data = setup
    teacher2 = make_teacher(tmp_path / "teacher2", seed=5)
    work_log = tmp_path / "actor_work.log"
    script = f"""
import os, json
os.environ["RAY_AUTH_MODE"] = "disabled"
import ray
from ray.cluster_utils import Cluster
from asr_kd.label.pipeline import LabelOptions, label, label_local

def record_actor_node():
    import os, ray
    from asr_kd.label import worker
    for name in ("label_shard", "label_decoded"):  # the two protocols (layout "actors" and "tasks")
        call = getattr(worker.TeacherActor, name)
        if getattr(call, "records_node", False):
            continue
        def recording_call(self, *args, _call=call):
            out = _call(self, *args)
            with open({str(work_log)!r}, "a") as fh:
                fh.write(f"{{ray.get_runtime_context().get_node_id()}} {{os.getpid()}} {{len(out['utt_id'])}}\\n")
            return out
        recording_call.records_node = True
        setattr(worker.TeacherActor, name, recording_call)

cluster = Cluster(initialize_head=True, head_node_args={{"num_cpus": 2, "include_dashboard": False}})
cluster.add_node(num_cpus=2)
ray.init(address=cluster.address, logging_level="ERROR", log_to_driver=False,
         runtime_env={{"worker_process_setup_hook": record_actor_node}})
alive = {{n["NodeID"] for n in ray.nodes() if n["Alive"]}}
assert len(alive) == 2
opts = LabelOptions(top_k=4, shard_size=7, actors=2, actor_num_cpus=1.5, read_batch_size=4, progress=False,
                    weights=[0.7, 0.3])
s = label([{str(teacher)!r}, {str(teacher2)!r}], {str(data)!r}, {str(tmp_path / 'store_cluster')!r}, opts)
ray.shutdown(); cluster.shutdown()
label_local([{str(teacher)!r}, {str(teacher2)!r}], {str(data)!r}, {str(tmp_path / 'store_local2')!r}, opts)
print(json.dumps({{"utts": s.utterances, "nodes": sorted(alive)}}))
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600,
                          env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["utts"] == 30
    rows_by_node: dict[str, int] = {}
    for line in work_log.read_text().splitlines():
        node, _pid, rows = line.split()
        rows_by_node[node] = rows_by_node.get(node, 0) + int(rows)
    assert set(rows_by_node) == set(result["nodes"]), rows_by_node  # both nodes labeled, and no other
    assert all(n > 0 for n in rows_by_node.values()) and sum(rows_by_node.values()) == 30, rows_by_node
    assert_same_targets(tmp_path / "store_cluster", tmp_path / "store_local2")
    meta = StoreReader(tmp_path / "store_cluster").meta
    assert len(meta.teacher_fingerprints) == 2 and meta.teacher_weights == pytest.approx([0.7, 0.3])


def test_ensemble_is_the_weighted_average_of_single_teacher_stores_at_the_temperature(setup, tmp_path):
    """Stores of each teacher alone, combined by hand, equal the ensemble's store: weights 3:1 (normalized
    to 0.75/0.25) on the temperature-T probabilities; and a single teacher's T=2 store is its T=1 store
    re-tempered, p_T proportional to p_1 ** (1/T). Every unit is kept (k = vocabulary) in float16, so only
    rounding separates them. (Mutations caught: weights ignored or not normalized, log-probabilities
    averaged instead of probabilities, temperature applied after averaging or not at all.)"""
    from asr_kd.models.model_dir import load_model_dir

    root, teacher, data = setup
    teacher2 = make_teacher(tmp_path / "teacher2", seed=5)
    vocab = load_model_dir(teacher).tokenizer.vocab_size
    full = dict(top_k=vocab, top_p=1.0, quantization="float16")
    for name, models, extra in (("a", [teacher], {}), ("b", [teacher2], {}), ("ab", [teacher, teacher2], {"weights": [3.0, 1.0]}),
                                ("a1", [teacher], {"temperature": 1.0})):
        temperature = extra.pop("temperature", 2.0)
        label_local([str(m) for m in models], str(data), str(tmp_path / name),
                    options(**full, temperature=temperature, **extra))
    ra, rb, rab, ra1 = (StoreReader(tmp_path / n) for n in ("a", "b", "ab", "a1"))
    assert rab.meta.temperature == 2.0 and rab.meta.teacher_weights == pytest.approx([0.75, 0.25])
    moved = 0.0
    for utt in rab.utt_ids:
        pa, pb, pab, pa1 = (r.get_dense(utt) for r in (ra, rb, rab, ra1))
        np.testing.assert_allclose(pab, 0.75 * pa + 0.25 * pb, atol=2e-3, rtol=2e-3, err_msg=utt)
        tempered = pa1.astype(np.float64) ** 0.5
        tempered /= tempered.sum(-1, keepdims=True)
        np.testing.assert_allclose(pa, tempered, atol=2e-3, rtol=2e-3, err_msg=utt)
        moved = max(moved, float(np.abs(pa - pa1).max()), float(np.abs(pab - pa).max()))
    assert moved > 0.05  # the temperature and the second teacher both change the targets visibly


def test_stats_reports_teacher_kl_that_shrinks_with_k(setup, tmp_path, capsys):
    from asr_kd.cli import main
    from asr_kd.models.model_dir import load_model_dir

    _, teacher, data = setup
    vocab = load_model_dir(teacher).tokenizer.vocab_size
    kls = {}
    for k in (1, vocab):
        label_local([str(teacher)], str(data), str(tmp_path / f"k{k}"), options(top_k=k, top_p=1.0, quantization="float16"))
        assert main(["targets", "stats", str(tmp_path / f"k{k}"), "--json", "--teacher", str(teacher),
                     "--data", str(data), "--sample", "10"]) == 0
        kls[k] = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["kl_nats"]
    assert kls[vocab] < 1e-3  # every unit kept: only float16 rounding remains
    assert kls[1] > 100 * kls[vocab]


def test_actor_cpu_share_leaves_room_for_audio_reading():
    from asr_kd.errors import AsrKdError
    from asr_kd.label.layout import READ_TASK_CPUS, actor_cpu_share

    # 2 actors on a 2-CPU machine: reserving 1 CPU each would starve the reading tasks forever
    share = actor_cpu_share(2.0, 2, None)
    assert 2 * share + READ_TASK_CPUS <= 2.0
    assert actor_cpu_share(16.0, 4, None) == 1.0
    with pytest.raises(AsrKdError, match="leave no CPU for audio reading"):
        actor_cpu_share(2.0, 2, 1.0)
    # actors that decode their own audio (no read tasks) may take every CPU, but not more
    assert actor_cpu_share(2.0, 2, None, read_tasks=False) == 1.0
    assert actor_cpu_share(2.0, 2, 1.0, read_tasks=False) == 1.0
    with pytest.raises(AsrKdError, match="wait forever"):
        actor_cpu_share(2.0, 2, 1.5, read_tasks=False)


def test_layout_defaults_actors_read_on_cpus_and_tasks_feed_gpus():
    from asr_kd.errors import AsrKdError
    from asr_kd.label.layout import actor_layout, reads_in_actors

    assert actor_layout(LabelOptions(), 0, 8.0)[:2] == (8, 0.0)  # one CPU actor per cluster CPU
    assert actor_layout(LabelOptions(), 0, 1.0)[:2] == (1, 0.0)
    assert reads_in_actors(LabelOptions(), 0.0) and not reads_in_actors(LabelOptions(), 1.0)
    assert reads_in_actors(LabelOptions(audio_read="actors"), 1.0) and not reads_in_actors(LabelOptions(audio_read="tasks"), 0.0)
    with pytest.raises(AsrKdError, match="--audio-read"):
        reads_in_actors(LabelOptions(audio_read="gpu"), 0.0)


def test_default_store_is_v2_top_p_and_bad_settings_are_refused(setup, tmp_path, capsys):
    """'asr-kd label' without store flags writes format v2 with the chosen top-p and zstd, bound to its
    teacher's path and fingerprint; a threshold outside (0, 1] or k_max < 1 is refused before any work."""
    from asr_kd.cli import main
    from asr_kd.models.model_dir import read_fingerprint
    from asr_kd.targets.codec import DEFAULT_TOP_P

    _, teacher, data = setup
    out = tmp_path / "store"
    assert main(["label", "--model", str(teacher), "--data", str(data), "--out", str(out), "--local", "--no-progress"]) == 0
    meta = StoreReader(out).meta
    assert (meta.format_version, meta.top_p, meta.k, meta.codec) == (2, DEFAULT_TOP_P, 8, "zstd")
    assert meta.teacher_fingerprints == [read_fingerprint(teacher)] and meta.teachers == [str(teacher.resolve())]
    for flags, message in ((["--top-p", "0"], r"top-p threshold must be in \(0, 1\].*got 0.0"),
                           (["--top-p", "1.5"], r"top-p threshold must be in \(0, 1\].*got 1.5"),
                           (["--top-k", "0"], r"k_max \(--top-k\) must be an integer >= 1.*got 0"),
                           (["--format-version", "1"], r"--format-version 1 stores a fixed top-k; --top-p 0.999")):
        rc = main(["label", "--model", str(teacher), "--data", str(data), "--out", str(tmp_path / "bad"), "--local",
                   "--no-progress", *flags])
        assert rc == 2 and re.search(message, capsys.readouterr().err), flags
        assert not (tmp_path / "bad").exists()  # refused before anything was written


def test_actor_reading_its_shard_logs_its_cpu_time_by_phase_for_the_benchmark(setup, monkeypatch, tmp_path):
    """``ASR_KD_FORWARD_LOG`` (label_throughput's in-run breakdown): the actor appends its pid, the time and its
    cumulative CPU seconds per phase (forward, fbank, decoding, the call, the process) at the start and the end
    of each call; a shard row is decoded and labeled."""
    from asr_kd.data.sources import open_source
    from asr_kd.label.plan import shard_rows
    from asr_kd.label.worker import TeacherActor

    root, teacher, data = setup
    log = tmp_path / "forward.log"
    monkeypatch.setenv("ASR_KD_FORWARD_LOG", str(log))
    o = options()
    actor = TeacherActor([str(teacher)], o.ensemble_kwargs(), o.batch_max_frames, device="cpu",
                         read_options=dict(sample_rate=16000, max_seconds=60.0, allow_pipes=False))
    src = open_source(data)
    shards = plan_shards(src, 7, src.seconds())
    row = shard_rows(src, shards, [0], src.seconds(), 4, o.batch_max_frames)[0]
    out = actor.label_shard(0, row["batches"])
    assert sorted(out["utt_id"]) == sorted(shards[0]) and len(out["utt_id"]) == 7  # the whole shard, each once
    assert all(e == "" for e in out["error"]) and all(len(p) > 0 for p in out["probs"])
    first, last = log.read_text().splitlines()  # at the call's start and at its end
    assert [float(x) for x in first.split()[2:7]][:4] == [0.0, 0.0, 0.0, 0.0]
    pid, when, *seconds = last.split()
    forward, fbank, read, call, process = (float(x) for x in seconds)  # TeacherActor.PHASES, cumulative
    assert int(pid) > 0 and float(when) > 0 and 0 < forward == pytest.approx(actor.ensemble.forward_seconds, abs=1e-3)
    assert fbank == pytest.approx(actor.ensemble.fbank_seconds, abs=1e-3) and read == pytest.approx(actor.read_seconds, abs=1e-3)
    assert 0 < fbank and 0 < read and forward + fbank + read < call <= process  # the phases are parts of the call
