"""The trainer's bookkeeping on tiny data (seconds each, one CPU thread): checkpoint rotation, best-by-dev
ranking, ``final: best``, the LR schedules at their boundaries, a non-finite gradient skipped, the
temperature-mismatch refusal, ``kd.kd_on_labeled`` and ``train.init_from``.

Each test names the mutation of the library it was checked against (broken on purpose, seen failing,
restored). Checkpoint *averaging* and the CTC/KD loss weighting are deliberately not pinned here.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import yaml

from asr_kd.config import load_config
from asr_kd.errors import AsrKdError, StoreError
from asr_kd.label.pipeline import LabelOptions, label_local
from asr_kd.train.config import TrainConfig
from asr_kd.train.loop import Trainer
from asr_kd.train.schedule import lr_lambda
from factories import make_data, make_teacher, tiny_train_config

pytestmark = pytest.mark.timeout(300)


def _data(root: Path, n: int = 12, with_text: bool = True, prefix: str = "") -> Path:
    # 1.2-1.8 s: long enough for CTC to align every transcript at 40 ms frames
    return make_data(root, n, with_text=with_text, prefix=prefix, min_s=1.2, step_s=0.1)


def _config(tmp_path: Path, name: str, train: list[str], **kw) -> TrainConfig:
    return load_config(tiny_train_config(tmp_path / f"{name}.yaml", train, **kw), TrainConfig)


def _metrics(model_dir: Path, kind: str = "train") -> list[dict[str, str]]:
    lines = (model_dir / "metrics.csv").read_text().splitlines()
    header = lines[0].split(",")
    rows = [dict(zip(header, line.split(","))) for line in lines[1:]]
    return [r for r in rows if r["kind"] == kind]


def _model(path: Path) -> dict[str, torch.Tensor]:
    state = torch.load(path, map_location="cpu", weights_only=True)
    return state["model"] if "model" in state and isinstance(state["model"], dict) else state


# ------------------------------------------------------------------------------ checkpoints
def test_step_checkpoints_rotate_and_epochs_are_ranked_by_dev_wer(tmp_path):
    """keep_last_checkpoints step files survive, oldest deleted first; best.tsv orders epochs by dev WER
    (ties by name), the keep_best best ones stay on disk, best_path() is the lowest WER and ``latest``
    the newest file. (Mutations caught: rotation keeping the oldest, ranking sorted descending.)"""
    data = _data(tmp_path / "d", 3)
    cfg = _config(tmp_path, "c", [str(data)], extra={"train.keep_last_checkpoints": 2, "train.keep_best": 2})
    ckpt = Trainer(cfg, tmp_path / "m", progress=False).ckpt
    for step in range(1, 6):
        ckpt.save_step({"model": {"w": torch.tensor(float(step))}}, step)
    assert sorted(p.name for p in ckpt.dir.glob("step-*.pt")) == ["step-00000004.pt", "step-00000005.pt"]
    assert ckpt.latest().name == "step-00000005.pt"
    wers = {1: 50.0, 2: 30.0, 3: 40.0, 4: 60.0, 5: 35.0}
    for epoch, wer in wers.items():
        ckpt.save_epoch({"model": {"w": torch.tensor(float(epoch))}}, epoch, wer)
    assert ckpt.ranking() == [("epoch-002.pt", 30.0), ("epoch-005.pt", 35.0), ("epoch-003.pt", 40.0),
                              ("epoch-001.pt", 50.0), ("epoch-004.pt", 60.0)]
    assert (ckpt.dir / "epoch-002.pt").is_file() and (ckpt.dir / "epoch-005.pt").is_file()
    assert ckpt.best_path().name == "epoch-002.pt"
    assert _model(ckpt.best_path())["w"].item() == 2.0
    assert ckpt.latest().name == "epoch-005.pt"


def test_final_best_writes_the_best_dev_checkpoint_and_the_lr_follows_the_schedule(tmp_path):
    """A real run with a dev set and ``train.final: best``: model.pt holds exactly the weights of the epoch
    checkpoint ranked first in best.tsv (which is not the last epoch's), and the learning rate logged at
    every step is lr x lr_lambda(step). (Mutations caught: final=best ignored -> the last/averaged
    weights; warmup off by one step.)"""
    data = _data(tmp_path / "d", 6)
    dev = _data(tmp_path / "dev", 3, prefix="dev")
    cfg = _config(tmp_path, "c", [str(data)], max_steps=None, max_frames=500,
                  extra={"train.max_epochs": 3, "train.final": "best", "train.keep_best": 1, "train.log_every_steps": 1,
                         "data.dev": str(dev), "optim.lr": 5e-3, "optim.warmup_steps": 3})
    trainer = Trainer(cfg, tmp_path / "m", progress=False)
    result = trainer.run()
    ranking = trainer.ckpt.ranking()
    assert [name for name, _ in ranking] and len(ranking) == 3
    best = ranking[0][0]
    assert ranking == sorted(ranking, key=lambda r: (r[1], r[0]))
    last = _model(tmp_path / "m" / "checkpoints" / "epoch-003.pt")
    final = _model(tmp_path / "m" / "model.pt")
    want = _model(tmp_path / "m" / "checkpoints" / best)
    assert final.keys() == want.keys()
    assert all(torch.equal(final[k], want[k]) for k in want)
    if best != "epoch-003.pt":  # the check has teeth only if the best is not also the last
        assert any(not torch.equal(final[k], last[k]) for k in last)
    else:
        pytest.fail(f"the last epoch is also the best ({ranking}); pick data where they differ")
    import json
    assert json.loads((tmp_path / "m" / "meta.json").read_text())["weights_from"] == [best]
    f = lr_lambda(cfg, trainer.total_steps)
    for row in _metrics(tmp_path / "m"):
        step = int(row["step"])
        assert float(row["lr"]) == pytest.approx(5e-3 * f(step), rel=1e-6), row
    assert result.steps == trainer.total_steps


# ------------------------------------------------------------------------------ LR schedules
def _schedule(tmp_path: Path, schedule: str, warmup: int, min_lr_ratio: float = 0.05):
    data = _data(tmp_path / "d", 3)
    cfg = _config(tmp_path, f"{schedule}{warmup}", [str(data)],
                  extra={"optim.schedule": schedule, "optim.warmup_steps": warmup, "optim.min_lr_ratio": min_lr_ratio})
    return lr_lambda(cfg, 100)


def test_lr_schedules_at_their_boundaries(tmp_path):
    """Warmup is linear from 1/W at the first step to 1 at step W-1; cosine is 1 at the end of warmup, halfway
    between 1 and the floor at mid-run, the floor at the last step and after it; noam decays as
    sqrt(W / (step + 1)) from the end of warmup; constant stays 1. (Mutations caught: cosine floor not
    applied, noam exponent 1 instead of 1/2, warmup starting at 0.)"""
    cos = _schedule(tmp_path, "cosine", 10, min_lr_ratio=0.1)
    assert cos(0) == pytest.approx(0.1) and cos(4) == pytest.approx(0.5) and cos(9) == pytest.approx(1.0)
    assert cos(10) == pytest.approx(1.0)
    assert cos(55) == pytest.approx(0.1 + 0.9 * 0.5)
    assert cos(100) == pytest.approx(0.1) and cos(150) == pytest.approx(0.1)
    assert all(cos(s) >= cos(s + 1) for s in range(10, 120))
    noam = _schedule(tmp_path, "noam", 10)
    assert noam(9) == pytest.approx(1.0)
    assert noam(10) == pytest.approx(math.sqrt(10 / 11))
    assert noam(39) == pytest.approx(0.5) and noam(159) == pytest.approx(0.25)
    const = _schedule(tmp_path, "constant", 4)
    assert [const(s) for s in (0, 3, 4, 1000)] == pytest.approx([0.25, 1.0, 1.0, 1.0])
    no_warmup = _schedule(tmp_path, "cosine", 0, min_lr_ratio=0.0)
    assert no_warmup(0) == pytest.approx(1.0) and no_warmup(50) == pytest.approx(0.5) and no_warmup(100) == pytest.approx(0.0)


# ------------------------------------------------------------------------------ non-finite gradient
class _NanGradientAtStep(Trainer):
    """The real trainer with a backward hook that turns one step's gradient of one weight into NaN (the
    hook stands in for an overflowing batch; everything else is the library's code)."""

    nan_at_step = 3  # the optimizer step (1-based) whose gradient is poisoned

    def _setup(self) -> None:
        super()._setup()
        weight = next(p for p in self.core.parameters() if p.requires_grad)
        weight.register_hook(lambda g: torch.full_like(g, float("nan")) if self.step + 1 == self.nan_at_step else g)


def test_non_finite_gradient_skips_the_update_and_training_goes_on(tmp_path):
    """Step 3's gradient is NaN: its update is skipped (weights and optimizer moments of step 3 equal those
    of step 2), grad_norm is logged as nan, and step 4 updates again with finite weights.
    (Mutation caught: the isfinite(grad_norm) guard removed -> NaN weights from step 3 on.)"""
    data = _data(tmp_path / "d", 6)
    cfg = _config(tmp_path, "c", [str(data)], max_steps=5, checkpoint_every=1,
                  extra={"train.keep_last_checkpoints": 10, "train.log_every_steps": 1})
    _NanGradientAtStep(cfg, tmp_path / "m", progress=False).run()
    ck = tmp_path / "m" / "checkpoints"
    s2, s3, s4 = (torch.load(ck / f"step-{i:08d}.pt", weights_only=True) for i in (2, 3, 4))
    for k in s2["model"]:
        assert torch.equal(s2["model"][k], s3["model"][k]), k
    assert any(not torch.equal(s3["model"][k], s4["model"][k]) for k in s3["model"])
    assert all(torch.isfinite(v).all() for v in s4["model"].values() if v.is_floating_point())
    for pid, st in s2["optimizer"]["state"].items():
        assert torch.equal(st["exp_avg"], s3["optimizer"]["state"][pid]["exp_avg"]), pid
    norms = {int(r["step"]): r["grad_norm"] for r in _metrics(tmp_path / "m")}
    assert math.isnan(float(norms[3])) and all(math.isfinite(float(norms[s])) for s in (1, 2, 4, 5))


# ------------------------------------------------------------------------------ distillation options
@pytest.fixture(scope="module")
def kd_parts(tmp_path_factory):
    """A teacher and a labeled set whose utterances are also in a soft-target store (made at T = 1)."""
    root = tmp_path_factory.mktemp("kdloop")
    teacher = make_teacher(root / "teacher")
    labeled = _data(root / "lab", 6)
    store = root / "store"
    label_local([str(teacher)], str(labeled), str(store), LabelOptions(top_k=4, shard_size=3, progress=False))
    return root, teacher, labeled, store


def test_store_made_at_another_temperature_is_refused(kd_parts, tmp_path):
    """(Mutation caught: the temperature comparison removed -> training starts on mis-tempered targets.)"""
    root, teacher, labeled, store = kd_parts
    cfg = _config(tmp_path, "kd", [str(labeled)], store=str(store), from_model=str(teacher), max_steps=1,
                  extra={"kd.temperature": 2.0})
    with pytest.raises(StoreError, match=r"temperature 1\.0 but kd\.temperature is 2\.0"):
        Trainer(cfg, tmp_path / "m", progress=False)._setup()
    ok = _config(tmp_path, "kd1", [str(labeled)], store=str(store), from_model=str(teacher), max_steps=1)
    Trainer(ok, tmp_path / "m1", progress=False)._setup()  # the store's own temperature is accepted


def test_store_of_another_teacher_is_refused_unless_allowed(kd_parts, tmp_path, capsys):
    """units.from_model names a model dir with the same units but other weights than the teacher that made
    the store: training and 'targets verify --student-config' refuse it naming both fingerprints;
    kd.allow_other_teacher lets it train. (Mutation caught: the fingerprint comparison removed.)"""
    from asr_kd.cli import main
    from asr_kd.models.model_dir import read_fingerprint

    root, teacher, labeled, store = kd_parts
    other = make_teacher(tmp_path / "other_teacher", seed=9)
    assert read_fingerprint(other) != read_fingerprint(teacher)
    cfg = _config(tmp_path, "kd", [str(labeled)], store=str(store), from_model=str(other), max_steps=1)
    want = (rf"made by teacher .*teacher \({read_fingerprint(teacher)}\), but units\.from_model names .*other_teacher "
            rf"\(fingerprint {read_fingerprint(other)}\).*kd\.allow_other_teacher")
    with pytest.raises(StoreError, match=want):
        Trainer(cfg, tmp_path / "m", progress=False)._setup()
    allowed = _config(tmp_path, "kd2", [str(labeled)], store=str(store), from_model=str(other), max_steps=1,
                      extra={"kd.allow_other_teacher": True})
    Trainer(allowed, tmp_path / "m2", progress=False)._setup()
    conf = tmp_path / "student.yaml"
    conf.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    assert main(["targets", "verify", str(store), "--student-config", str(conf)]) == 1
    assert f"units.from_model names {other}" in capsys.readouterr().err


@pytest.mark.parametrize("kd_on_labeled", [True, False])
def test_kd_on_labeled_decides_whether_labeled_utterances_get_a_kd_term(kd_parts, tmp_path, kd_on_labeled):
    """Only labeled data, all of it in the store: every step has a KD loss with kd_on_labeled, none without,
    and the CTC loss is there either way. (Mutation caught: the kd_on_labeled condition dropped.)"""
    root, teacher, labeled, store = kd_parts
    cfg = _config(tmp_path, "kd", [str(labeled)], store=str(store), from_model=str(teacher), max_steps=3,
                  extra={"kd.kd_on_labeled": kd_on_labeled, "train.log_every_steps": 1})
    Trainer(cfg, tmp_path / "m", progress=False).run()
    rows = _metrics(tmp_path / "m")
    assert len(rows) == 3 and all(r["ctc_loss"] not in ("", "nan") for r in rows)
    has_kd = [r["kd_loss"] not in ("", "nan") for r in rows]
    assert has_kd == [kd_on_labeled] * 3, rows


# ------------------------------------------------------------------------------ train.init_from
def test_init_from_starts_from_the_model_dirs_weights_and_cmvn(tmp_path):
    """A run with ``train.init_from`` and a zero learning rate ends exactly at the source model's weights
    and keeps its CMVN, though its own data would give other statistics. (Mutations caught: init_from
    ignored -> random weights; CMVN re-estimated from the new data.)"""
    data = _data(tmp_path / "d", 4)
    src = tmp_path / "src"
    Trainer(_config(tmp_path, "a", [str(data)], max_steps=4), src, progress=False).run()
    other = make_data(tmp_path / "other", 4, with_text=True, min_s=1.3, step_s=0.3, prefix="o", seed=7)  # other audio, other statistics
    cfg = _config(tmp_path, "b", [str(other)], max_steps=2, from_model=str(src),
                  extra={"train.init_from": str(src), "optim.lr": 1e-30, "optim.weight_decay": 0.0})
    Trainer(cfg, tmp_path / "b", progress=False).run()
    want, got = _model(src / "model.pt"), _model(tmp_path / "b" / "model.pt")
    assert want.keys() == got.keys()
    assert all(torch.allclose(want[k], got[k], atol=1e-6) for k in want)
    import json
    assert json.loads((tmp_path / "b" / "cmvn.json").read_text()) == json.loads((src / "cmvn.json").read_text())


def test_init_from_a_model_of_another_shape_or_unit_set_is_refused(tmp_path):
    """Another ``model`` section (d_model) or another unit set: refused before training, naming what
    differs and where to fix it. (Mutation caught: only the weight shapes compared -> a unit-set change
    with the same vocabulary size would load.)"""
    data = _data(tmp_path / "d", 4)
    src = tmp_path / "src"
    Trainer(_config(tmp_path, "a", [str(data)], max_steps=2), src, progress=False).run()
    bigger = _config(tmp_path, "b", [str(data)], from_model=str(src),
                     extra={"train.init_from": str(src), "model.d_model": 48})
    with pytest.raises(AsrKdError, match=r"init_from=.*d_model: 32 there, 48 here"):
        Trainer(bigger, tmp_path / "b", progress=False).run()
    other_text = _data(tmp_path / "o", 4, prefix="o")
    text = other_text / "text"  # the same audio with transcripts of other characters: another unit set
    text.write_text("".join(f"{line.split()[0]} zebra quiz vex\n" for line in text.read_text().splitlines()))
    other_units = _config(tmp_path, "c", [str(other_text)], extra={"train.init_from": str(src)})
    with pytest.raises(AsrKdError, match=r"init_from=.*units .* there, .* here \(set units.from_model="):
        Trainer(other_units, tmp_path / "c", progress=False).run()


def test_dev_wer_scores_every_dev_utterance_as_evaluate_does(tmp_path):
    """A dev set with one missing audio file (its duration in utt2dur, so it fails when read): training's
    dev WER scores it as an empty hypothesis, lists it in rejects_dev.tsv, and equals ``asr-kd
    evaluate`` on the same weights (final: last: the last epoch's dev score is the final model's).
    (Mutation caught: the old loop scored only the utterances it decoded -> a lower WER than evaluate.)"""
    import json

    from asr_kd.cli import main
    from asr_kd.data.datadir import read_data_dir, write_data_dir

    data = _data(tmp_path / "d", 6)
    dev = _data(tmp_path / "dev", 3, prefix="dev")
    d = read_data_dir(dev)
    d.wav_scp["devspk9-gone"], d.utt2spk["devspk9-gone"], d.text["devspk9-gone"] = str(tmp_path / "gone.wav"), "devspk9", "a b c"
    d.utt2dur = dict(d.utt2dur or {u: 1.5 for u in d.utt_ids}) | {"devspk9-gone": 1.5}
    write_data_dir(d, dev)
    cfg = _config(tmp_path, "c", [str(data)], max_steps=None, max_frames=500,
                  extra={"train.max_epochs": 40, "train.final": "last", "data.dev": str(dev), "optim.lr": 5e-3,
                         "optim.warmup_steps": 3})
    Trainer(cfg, tmp_path / "m", progress=False).run()
    logged = float(_metrics(tmp_path / "m", "dev")[-1]["dev_wer"])
    assert logged < 100.0  # the model emits words: leaving the unread utterance out would lower the WER
    rejects = (tmp_path / "m" / "rejects_dev.tsv").read_text()
    assert "devspk9-gone" in rejects
    assert main(["evaluate", "--model", str(tmp_path / "m"), "--data", str(dev), "--out", str(tmp_path / "e"),
                 "--no-progress"]) == 0
    evaluated = json.loads((tmp_path / "e" / "wer.json").read_text())
    assert evaluated["num_utts"] == 4 and evaluated["rejects"] == 1
    assert logged == pytest.approx(evaluated["wer"], abs=0.01)
