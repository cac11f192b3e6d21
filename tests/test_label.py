"""Ray labeling: equality with a plain loop, multi-node, actor crash, driver interrupt, bad input."""

from __future__ import annotations

import json
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
from asr_kd.label.pipeline import LabelOptions, label, label_local, plan_shards
from asr_kd.models import PRESETS, build_model, parse_model_config
from asr_kd.models.model_dir import save_model_dir
from asr_kd.targets.store import StoreReader

ROOT = Path(__file__).resolve().parents[1]


def make_teacher(out: Path, seed: int = 0) -> Path:
    """A tiny full-context conformer with seeded random weights (labels need not be good to be equal)."""
    torch.manual_seed(seed)
    tok = CharTokenizer.build(["hello world", "the quick brown fox jumps over a lazy dog"])
    model = build_model(parse_model_config(PRESETS["tiny_conformer"]), tok.vocab_size).eval()
    with torch.no_grad():
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


def assert_same_targets(a: Path, b: Path, atol: float = 0.02) -> None:
    ra, rb = StoreReader(a), StoreReader(b)
    assert ra.utt_ids == rb.utt_ids
    for utt in ra.utt_ids:
        da, db = ra.get_dense(utt), rb.get_dense(utt)
        assert da.shape == db.shape, utt
        # same distributions up to quantization (log8: a few % relative) and float summation order
        np.testing.assert_allclose(da, db, atol=atol, err_msg=utt)


def test_ray_store_equals_plain_loop(setup, ray_cluster):
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
    reader.verify()


def test_actor_killed_mid_run_loses_nothing(setup, ray_cluster, monkeypatch):
    root, teacher, data = setup
    marker = root / "actor-died.txt"
    monkeypatch.setenv("ASR_KD_TEST_KILL_ACTOR_AFTER_BATCHES", "2")
    monkeypatch.setenv("ASR_KD_TEST_KILL_ACTOR_MARKER", str(marker))
    summary = label([str(teacher)], str(data), str(root / "store_crash"), options())
    assert marker.exists(), "the test hook did not kill an actor"
    assert summary.utterances == 30
    StoreReader(root / "store_crash").verify()
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


def test_confidence_filter_lists_filtered_utterances(tmp_path, setup):
    root, teacher, data = setup
    s = label_local([str(teacher)], str(data), str(tmp_path / "store"), options(min_max_prob=0.999))
    assert s.rejects == 30 and s.utterances == 0
    lines = (tmp_path / "store" / "rejects.tsv").read_text().splitlines()
    assert len(lines) == 30 and all("low_confidence" in line for line in lines)


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
    """Two teachers averaged, labeled on a ray.cluster_utils.Cluster with two nodes (own process)."""
    root, teacher, data = setup
    teacher2 = make_teacher(tmp_path / "teacher2", seed=5)
    script = f"""
import os, json
os.environ["RAY_AUTH_MODE"] = "disabled"
import ray
from ray.cluster_utils import Cluster
from asr_kd.label.pipeline import LabelOptions, label, label_local
cluster = Cluster(initialize_head=True, head_node_args={{"num_cpus": 1, "include_dashboard": False}})
cluster.add_node(num_cpus=1)
ray.init(address=cluster.address, logging_level="ERROR", log_to_driver=False)
assert len([n for n in ray.nodes() if n["Alive"]]) == 2
opts = LabelOptions(top_k=4, shard_size=7, actors=2, actor_num_cpus=0.5, read_batch_size=4, progress=False,
                    weights=[0.7, 0.3])
s = label([{str(teacher)!r}, {str(teacher2)!r}], {str(data)!r}, {str(tmp_path / 'store_cluster')!r}, opts)
nodes = {{n["NodeID"] for n in ray.nodes() if n["Alive"]}}
ray.shutdown(); cluster.shutdown()
label_local([{str(teacher)!r}, {str(teacher2)!r}], {str(data)!r}, {str(tmp_path / 'store_local2')!r}, opts)
print(json.dumps({{"utts": s.utterances, "nodes": len(nodes)}}))
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600,
                          env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result == {"utts": 30, "nodes": 2}
    assert_same_targets(tmp_path / "store_cluster", tmp_path / "store_local2")
    meta = StoreReader(tmp_path / "store_cluster").meta
    assert len(meta.teacher_fingerprints) == 2 and meta.teacher_weights == pytest.approx([0.7, 0.3])


def test_stats_reports_teacher_kl_that_shrinks_with_k(setup, tmp_path, capsys):
    from asr_kd.cli import main
    from asr_kd.models.model_dir import load_model_dir

    _, teacher, data = setup
    vocab = load_model_dir(teacher).tokenizer.vocab_size
    kls = {}
    for k in (1, vocab):
        label_local([str(teacher)], str(data), str(tmp_path / f"k{k}"), options(top_k=k, quantization="float16"))
        assert main(["targets", "stats", str(tmp_path / f"k{k}"), "--json", "--teacher", str(teacher),
                     "--data", str(data), "--sample", "10"]) == 0
        kls[k] = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["kl_nats"]
    assert kls[vocab] < 1e-3  # every unit kept: only float16 rounding remains
    assert kls[1] > 100 * kls[vocab]


def test_actor_cpu_share_leaves_room_for_audio_reading():
    from asr_kd.errors import AsrKdError
    from asr_kd.label.pipeline import READ_TASK_CPUS, actor_cpu_share

    # 2 actors on a 2-CPU machine: reserving 1 CPU each would starve the reading tasks forever
    share = actor_cpu_share(2.0, 2, None)
    assert 2 * share + READ_TASK_CPUS <= 2.0
    assert actor_cpu_share(16.0, 4, None) == 1.0
    with pytest.raises(AsrKdError, match="leave no CPU for audio reading"):
        actor_cpu_share(2.0, 2, 1.0)
