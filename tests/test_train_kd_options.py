"""Training options that decide what a distilled student is: the weight average over the same share
of optimizer steps for every model, and CTC toward the teacher's 1-best (``kd.pseudo_ctc_weight``)."""

from __future__ import annotations

import json

import pytest
import torch

from asr_kd.config import load_config
from asr_kd.errors import StoreError
from asr_kd.label.pipeline import LabelOptions, label_local
from asr_kd.train.config import TrainConfig
from asr_kd.train.loop import Trainer
from factories import make_data, make_teacher, tiny_train_config

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("kdopt")
    teacher = make_teacher(root / "teacher")
    # >= 1 s per utterance: every transcript fits its 40 ms frames (none rejected as unalignable)
    labeled = make_data(root / "lab", 6, with_text=True, min_s=1.0)
    unlabeled = make_data(root / "unl", 8, prefix="u", min_s=1.0)
    store = root / "store"
    label_local([str(teacher)], str(unlabeled), str(store), LabelOptions(top_k=4, shard_size=4, progress=False))
    return root, teacher, labeled, unlabeled, store


def test_final_average_is_the_mean_of_the_weights_over_the_last_share_of_steps(setup, tmp_path):
    root, teacher, labeled, _, _ = setup
    conf = tiny_train_config(tmp_path / "c.yaml", [str(labeled)], max_steps=8, checkpoint_every=1, max_frames=250,
                             extra={"train.keep_last_checkpoints": 20, "train.final": "average",
                                    "train.average_share": 0.5, "train.average_every_steps": 2})
    out = tmp_path / "m"
    Trainer(load_config(conf, TrainConfig), out, progress=False).run()
    # window: the last 4 of 8 steps = steps 5..8, a snapshot every 2 steps from its start: 5, 7 and the last (8)
    snaps = [torch.load(out / "checkpoints" / f"step-{s:08d}.pt", weights_only=True)["model"] for s in (5, 7, 8)]
    final = torch.load(out / "model.pt", weights_only=True)
    for key, value in final.items():
        if value.is_floating_point():
            expected = sum(s[key].double() for s in snaps) / 3
            assert torch.allclose(value.double(), expected, atol=1e-6), key
    assert not torch.equal(final["output.weight"], snaps[-1]["output.weight"])  # not simply the last weights
    meta = json.loads((out / "meta.json").read_text())
    assert "average of 3 snapshots, steps 5-8" in meta["weights_from"][0]


def test_pseudo_ctc_trains_toward_the_teachers_1best_and_needs_text_pseudo(setup, tmp_path, caplog):
    root, teacher, labeled, unlabeled, store = setup
    pseudo = (store / "text.pseudo").read_text().splitlines()
    assert len(pseudo) == 8
    conf = tiny_train_config(tmp_path / "c.yaml", [str(labeled)], unlabeled=[str(unlabeled)], store=str(store),
                             from_model=str(teacher), max_steps=2, extra={"kd.pseudo_ctc_weight": 0.5})
    trainer = Trainer(load_config(conf, TrainConfig), tmp_path / "m", progress=False)
    with caplog.at_level("INFO"):
        trainer.run()
    usable = sum(1 for line in pseudo if line.partition(" ")[2].strip())
    assert len(trainer.pseudo_tokens) == usable and usable > 0  # a random teacher's 1-best is rarely empty
    assert f"teacher 1-best for {usable} of 8 unlabeled" in caplog.text
    assert trainer.loss_weights["pseudo"] > 0

    # the store without text.pseudo: refused up front, naming the file and the fix
    copy = tmp_path / "store_copy"
    import shutil

    shutil.copytree(store, copy)
    (copy / "text.pseudo").unlink()
    conf2 = tiny_train_config(tmp_path / "c2.yaml", [str(labeled)], unlabeled=[str(unlabeled)], store=str(copy),
                              from_model=str(teacher), max_steps=2, extra={"kd.pseudo_ctc_weight": 0.5})
    with pytest.raises(StoreError, match="text.pseudo is missing.*pseudo_ctc_weight=0"):
        Trainer(load_config(conf2, TrainConfig), tmp_path / "m2", progress=False).run()


def test_kd_loss_weights_give_ctc_its_share_of_the_epoch(setup, tmp_path):
    root, teacher, labeled, unlabeled, store = setup
    conf = tiny_train_config(tmp_path / "c.yaml", [str(labeled)], unlabeled=[str(unlabeled)], store=str(store),
                             from_model=str(teacher), max_steps=1, max_frames=250,
                             extra={"kd.unlabeled_per_labeled": 4.0, "kd.ctc_weight": 0.3, "kd.kd_on_labeled": False})
    trainer = Trainer(load_config(conf, TrainConfig), tmp_path / "m", progress=False)
    trainer.run()
    plan = trainer._plan(0)
    n_lab = sum(1 for src, _ in plan if src == "labeled")
    n_unl = len(plan) - n_lab
    assert n_lab >= 1 and n_unl >= 1
    # CTC only on labeled batches, KD only on unlabeled ones (kd_on_labeled false): each term gets its
    # share of the epoch, 0.3 and 0.7, whatever the mix
    assert trainer.loss_weights["ctc"] == pytest.approx(0.3 * len(plan) / n_lab)
    assert trainer.loss_weights["kd"] == pytest.approx(0.7 * len(plan) / n_unl)
