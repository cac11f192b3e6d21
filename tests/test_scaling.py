"""The scaling study's parts: nested ``data subset --hours`` with the parent's feature cache,
``prepare synth --size``, ``train.dev_every_steps`` + ``evaluate --checkpoint``, the report's figures
against a hand computation, and ``recipes/synth/scaling.sh`` end to end on the tiny profile.

Mutations each test was checked against are named in its docstring.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from asr_kd.cli import main
from asr_kd.config import load_config
from asr_kd.data.datadir import DataDir, read_data_dir, write_data_dir
from asr_kd.errors import ConfigError
from asr_kd.train.config import TrainConfig
from asr_kd.train.loop import Trainer
from factories import make_data, tiny_train_config

pytestmark = pytest.mark.timeout(600)


@pytest.fixture
def pool(tmp_path, write_wav):
    """40 utterances of 1.0-1.9 s (utt2dur known), 4 speakers, unlabeled."""
    wav, u2s, dur = {}, {}, {}
    for i in range(40):
        utt = f"s{i % 4}-u{i:02d}"
        seconds = 1.0 + 0.1 * (i % 10)
        wav[utt] = str(write_wav(tmp_path / f"{utt}.wav", seconds=seconds, seed=i))
        u2s[utt], dur[utt] = f"s{i % 4}", seconds
    return write_data_dir(DataDir(wav_scp=wav, utt2spk=u2s, utt2dur=dur), tmp_path / "pool")


def _hours(d: Path) -> float:
    return read_data_dir(d).total_seconds() / 3600


def test_subset_hours_is_the_shortest_prefix_and_smaller_subsets_nest(pool, tmp_path):
    """Each subset holds at least the hours asked for, one utterance fewer would not, and the smaller
    subset is inside the larger for one seed (another seed draws another order). (Mutations caught:
    sample() per call instead of one shuffle -> not nested; the loop stopping one utterance late.)"""
    sizes = {}
    for name, hours in (("a", 0.002), ("b", 0.006), ("c", 0.010)):
        assert main(["data", "subset", "--hours", str(hours), "--seed", "3", "--out", str(tmp_path / name), str(pool)]) == 0
        got = read_data_dir(tmp_path / name)
        sizes[name] = set(got.utt_ids)
        seconds = got.total_seconds()
        assert seconds >= hours * 3600
        shortest_last = min(got.duration(u) for u in got.utt_ids)
        assert seconds - shortest_last < hours * 3600 + max(got.duration(u) for u in got.utt_ids)
    assert sizes["a"] < sizes["b"] < sizes["c"]
    assert len({s for u in sizes["c"] for s in [u.split("-")[0]]}) == 4  # a random order, not the sorted ids' first speaker
    assert main(["data", "subset", "--hours", "0.006", "--seed", "4", "--out", str(tmp_path / "other"), str(pool)]) == 0
    assert set(read_data_dir(tmp_path / "other").utt_ids) != sizes["b"]


def test_subset_hours_beyond_the_pool_is_refused_with_both_figures(pool, tmp_path, capsys):
    """Asking more hours than the pool holds names the pool, the hours there and the hours needed, and
    writes nothing. (Mutation caught: silently returning the whole pool.)"""
    total = _hours(pool)
    assert main(["data", "subset", "--hours", "1.0", "--out", str(tmp_path / "big"), str(pool)]) == 2
    err = capsys.readouterr().err
    assert str(pool) in err and f"{total:.2f} h" in err and "1.00 h requested" in err
    assert not (tmp_path / "big").exists()


def test_subset_of_a_cached_dir_reads_the_parents_features(pool, tmp_path):
    """A subset of a dir with a feature cache has its own feats.scp and cache.json pointing into the
    parent's ark, and training reads every utterance from it. (Mutation caught: no carry -> the subset
    computes fbank from audio.)"""
    assert main(["data", "fbank", "--no-progress", str(pool)]) == 0
    assert main(["data", "subset", "--hours", "0.004", "--out", str(tmp_path / "sub"), str(pool)]) == 0
    sub = tmp_path / "sub"
    ids = read_data_dir(sub).utt_ids
    scp = dict(line.split(" ", 1) for line in (sub / "feats.scp").read_text().splitlines())
    assert sorted(scp) == ids and all(str((pool / "fbank" / "feats.ark").resolve()) in v for v in scp.values())
    from asr_kd.data.feature_cache import FeatureCache
    from asr_kd.data.features import FbankConfig

    cache = FeatureCache.open(sub, FbankConfig())
    data = read_data_dir(sub)
    parent = FeatureCache.open(pool, FbankConfig())
    for utt in ids:
        mine = cache.get(utt, data.source(utt))
        assert mine is not None and (mine == parent.get(utt, read_data_dir(pool).source(utt))).all()


def test_prepare_synth_size_overrides_one_split_and_refuses_bad_ones():
    """``--size train_unlabeled=N`` changes only that split; a wrong split name or a non-number is a
    ConfigError naming the argument. (Mutation caught: overrides ignored.)"""
    from data_prep.synth.profiles import DEMO, with_sizes

    big = with_sizes(DEMO, ["train_unlabeled=56000"])
    assert big.sizes.train_unlabeled == 56000 and big.sizes.train_labeled == DEMO.sizes.train_labeled
    assert big.voices == DEMO.voices and big.augment == DEMO.augment and big.name == "demo+train_unlabeled=56000"
    assert with_sizes(DEMO, []) is DEMO
    for bad in ("train=5", "train_unlabeled=lots", "train_unlabeled=0", "train_unlabeled"):
        with pytest.raises(ConfigError, match="--size"):
            with_sizes(DEMO, [bad])


def test_dev_every_steps_ranks_snapshots_and_evaluate_scores_the_best_one(tmp_path, capsys):
    """With ``train.dev_every_steps`` the run logs dev WER at those steps, ranks the snapshots in best.tsv
    beside the epoch checkpoints, keeps only the keep_best on disk, and ``evaluate --checkpoint best``
    scores exactly the weights ranked first (not the final model's). A missing checkpoint is refused,
    listing the ones there. (Mutations caught: the snapshot saved before the eval, so its weights differ;
    --checkpoint ignored.)"""
    data = make_data(tmp_path / "d", 6, with_text=True, min_s=1.2, step_s=0.1)
    dev = make_data(tmp_path / "dev", 3, with_text=True, prefix="dev", min_s=1.2, step_s=0.1)
    cfg = load_config(tiny_train_config(tmp_path / "c.yaml", [str(data)], max_steps=12, max_frames=500,
                                        extra={"train.dev_every_steps": 4, "train.keep_best": 2, "data.dev": str(dev),
                                               "optim.lr": 5e-3}), TrainConfig)
    trainer = Trainer(cfg, tmp_path / "m", progress=False)
    trainer.run()
    rows = [r for r in (tmp_path / "m" / "metrics.csv").read_text().splitlines()[1:] if r.startswith("dev,")]
    header = (tmp_path / "m" / "metrics.csv").read_text().splitlines()[0].split(",")
    steps = sorted({int(dict(zip(header, r.split(",")))["step"]) for r in rows})
    assert {4, 8} <= set(steps)
    ranking = trainer.ckpt.ranking()
    assert {"dev-step-00000004.pt", "dev-step-00000008.pt"} <= {n for n, _ in ranking}
    on_disk = sorted(p.name for p in (tmp_path / "m" / "checkpoints").glob("dev-step-*.pt"))
    assert set(on_disk) <= {n for n, _ in ranking[:2]}
    out = tmp_path / "eval_best"
    assert main(["evaluate", "--model", str(tmp_path / "m"), "--checkpoint", "best", "--data", str(dev), "--out", str(out),
                 "--no-progress"]) == 0
    result = json.loads((out / "wer.json").read_text())
    best_name, best_wer = ranking[0]
    assert result["checkpoint"] == best_name
    assert result["wer"] == pytest.approx(best_wer, abs=0.01)  # the same weights on the same dev set
    assert main(["evaluate", "--model", str(tmp_path / "m"), "--checkpoint", "epoch-999.pt", "--data", str(dev),
                 "--out", str(tmp_path / "e2"), "--no-progress"]) != 0
    err = capsys.readouterr().err
    assert "epoch-999.pt: no such checkpoint" in err and best_name in err


# ------------------------------------------------------------------------------ report
def _wer(d: Path, wer: float, checkpoint: str | None = None, params: int = 1000) -> None:
    d.mkdir(parents=True, exist_ok=True)
    (d / "wer.json").write_text(json.dumps({"wer": wer, "checkpoint": checkpoint, "params": params}))


def _model_dir(d: Path, unlabeled: list[str] | None = None, steps: int = 100) -> None:
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.yaml").write_text(json.dumps({"data": {"train": ["lab"], "unlabeled": unlabeled or []}}))
    (d / "meta.json").write_text(json.dumps({"steps": steps}))


def test_scaling_report_numbers_match_a_hand_computation(tmp_path):
    """Baseline per seed: the variant dev prefers (best snapshot for s0, averaged final for s1); means over
    seeds; KD / baseline and KD / teacher on test; unlabeled hours from the subset's utt2dur; stage
    seconds from the markers. (Mutations caught: the baseline scored on its final model always; the KD
    ratio taken on dev.)"""
    exp, data = tmp_path / "exp", tmp_path / "data"
    for name, seconds in (("u1", 1800.0), ("u2", 7200.0)):
        write_data_dir(DataDir(wav_scp={f"a-{name}": "/x.wav"}, utt2spk={f"a-{name}": "a"}, utt2dur={f"a-{name}": seconds}),
                       data / name)
    _model_dir(exp / "teacher")
    for s, v in (("dev", 20.0), ("dev_unl", 25.0), ("test", 30.0)):
        _wer(exp / "teacher" / f"eval_{s}", v)
    # s0: best snapshot better on dev -> its test (58) counts; s1: averaged final better on dev -> 62
    _model_dir(exp / "baseline_s0")
    for s, final, best in (("dev", 40.0, 38.0), ("dev_unl", 45.0, 44.0), ("test", 60.0, 58.0)):
        _wer(exp / "baseline_s0" / f"eval_{s}", final)
        _wer(exp / "baseline_s0" / f"eval_best_{s}", best, checkpoint="dev-step-00000400.pt")
    _model_dir(exp / "baseline_s1")
    for s, final, best in (("dev", 39.0, 41.0), ("dev_unl", 44.0, 46.0), ("test", 62.0, 57.0)):
        _wer(exp / "baseline_s1" / f"eval_{s}", final)
        _wer(exp / "baseline_s1" / f"eval_best_{s}", best, checkpoint="dev-step-00000200.pt")
    for name, unl, test in (("kd_1.5x_s0", "u1", 50.0), ("kd_4.5x_s0", "u2", 40.0), ("kd_4.5x_s1", "u2", 42.0)):
        _model_dir(exp / name, [str(data / unl)])
        for s, v in (("dev", test - 15), ("dev_unl", test - 10), ("test", test)):
            _wer(exp / name / f"eval_{s}", v)
    (exp / ".done").mkdir()
    (exp / ".done" / "teacher").write_text("2026-12-08T00:00:00Z\nseconds 600\n")
    from asr_kd.scaling_report import write_scaling_report

    study = write_scaling_report(exp, None, exp / "scaling.md")
    b = study["baseline"]
    assert [r["scored"] for r in b["seeds"]] == ["best dev snapshot", "averaged final model"]
    assert b["test_wer"] == pytest.approx((58.0 + 62.0) / 2) and b["step"] == [400, 100]
    assert b["spread"] == pytest.approx(4.0)
    p1, p2 = study["points"]
    assert p1["unlabeled_hours"] == pytest.approx(0.5) and p2["unlabeled_hours"] == pytest.approx(2.0)
    assert p2["kd"]["test_wer"] == pytest.approx(41.0) and p2["kd"]["spread"] == pytest.approx(2.0)
    assert p2["kd"]["kd_vs_baseline"] == pytest.approx(41.0 / 60.0)
    assert p1["kd"]["kd_vs_teacher"] == pytest.approx(50.0 / 30.0)
    assert [r["test_wer"] for r in p2["kd"]["seeds"]] == [40.0, 42.0]
    assert study["seconds"] == {"teacher": 600}
    saved = json.loads((exp / "scaling.json").read_text())
    assert saved["points"][1]["kd"]["dev_wer"] == pytest.approx(26.0)
    assert (exp / "scaling.png").stat().st_size > 0
    assert "| KD | 2.0 |" in (exp / "scaling.md").read_text()


# ------------------------------------------------------------------------------ the recipe
def test_scaling_recipe_refuses_a_stage_whose_inputs_are_missing(tmp_path):
    """A stage run before the stages it reads names the missing stage and how to run it; an unknown
    option is refused. (Mutation caught: `after` lines removed -> a later `need` names a file instead.)"""
    from test_recipes import run

    exp = tmp_path / "exp"
    for stage, missing in (("5", "stage 1 (subsets) has not run"), ("3", "stage 2 (teacher) has not run"),
                           ("7", "stage 6 (eval) has not run")):
        proc = run("recipes/synth/scaling.sh", "--stage", stage, "--exp", str(exp), "--data", str(tmp_path / "d"),
                   cwd=tmp_path)
        assert proc.returncode == 1 and missing in proc.stderr and f"--stage {missing.split()[1]}" in proc.stderr
    bad = run("recipes/synth/scaling.sh", "--multiple", "3", cwd=tmp_path)
    assert bad.returncode == 2 and "unknown option --multiple" in bad.stderr


@pytest.mark.slow
def test_scaling_recipe_runs_every_stage_on_the_tiny_profile(tmp_path):
    """scaling.sh on the tiny profile with tiny models: every stage, nested subsets, the report's
    JSON keys the README promises; a rerun skips every stage; a stage before its inputs and a pool too
    small for the multiples are refused with the stage / the hours named. About 2-4 min on 2 cores:
    behind the slow marker (the refusals alone run in the default suite)."""
    import yaml

    from test_recipes import ROOT, run, tiny_confs

    confs = tiny_confs(ROOT / "recipes" / "synth" / "conf" / "scaling", tmp_path / "conf")
    for name in ("student_baseline.yaml", "student_kd.yaml"):
        conf = yaml.safe_load((confs / name).read_text())
        conf["train"].update(max_steps=12, dev_every_steps=4)
        (confs / name).write_text(yaml.safe_dump(conf))
    data, exp = tmp_path / "data", tmp_path / "exp"
    args = ["--profile", "tiny", "--pool-utts", "300", "--multiples", "1.5 4.5", "--dev-unl-utts", "20",
            "--data", str(data), "--exp", str(exp), "--conf", str(confs), "--nj", "1"]
    early = run("recipes/synth/scaling.sh", *args, "--stage", "5", cwd=tmp_path)
    assert early.returncode == 1 and "stage 1 (subsets) has not run" in early.stderr
    proc = run("recipes/synth/scaling.sh", *args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    small, large = (set(read_data_dir(data / f"unl_{m}x").utt_ids) for m in ("1.5", "4.5"))
    assert small < large
    study = json.loads((exp / "scaling.json").read_text())
    assert [p["multiple"] for p in study["points"]] == [1.5, 4.5]
    for p in study["points"]:
        assert p["unlabeled_hours"] > 0 and p["kd"]["test_wer"] is not None and p["kd"]["dev_wer"] is not None
        assert set(p["kd"]["test_wer_by_condition"]) >= {"seen_voice", "unseen_accent"}
    assert [r["seed"] for r in study["points"][-1]["kd"]["seeds"]] == [0, 1]
    assert len(study["baseline"]["seeds"]) == 2 and study["baseline"]["step"]
    assert {"prepare", "teacher", "label", "students"} <= set(study["seconds"])
    assert (exp / "scaling.png").is_file()
    again = run("recipes/synth/scaling.sh", *args, "--stop-stage", "6", cwd=tmp_path)
    assert again.returncode == 0 and again.stderr.count("done before, skipping") == 7
    too_small = run("recipes/synth/scaling.sh", *args, "--multiples", "1.5 400", "--stage", "1", "--stop-stage", "1",
                    "--force", cwd=tmp_path)
    assert too_small.returncode != 0
    assert "requested but the dir holds" in too_small.stderr and f"{_hours(data / 'train_unlabeled'):.2f} h" in too_small.stderr
