"""``asr-kd label --precision``: the teachers' forward under autocast, recorded in the store's meta."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from asr_kd.errors import AsrKdError
from asr_kd.label.pipeline import LabelOptions, label, label_local
from asr_kd.label.teacher import TeacherEnsemble
from asr_kd.errors import StoreError
from asr_kd.targets.reader import StoreReader
from test_label import make_data, make_teacher


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("precision")
    return root, make_teacher(root / "teacher"), make_data(root / "corpus", 12)


def opts(**kw) -> LabelOptions:
    base = dict(top_k=4, top_p=1.0, shard_size=6, actors=2, actor_num_cpus=0.5, read_batch_size=4, progress=False,
                quantization="float16")
    base.update(kw)
    return LabelOptions(**base)


def dense_probs(reader: StoreReader, utt: str, vocab: int) -> np.ndarray:
    ids, probs = reader.get_sparse(utt)
    out = np.zeros((ids.shape[0], vocab))
    np.put_along_axis(out, ids.astype(np.int64), probs.astype(np.float64), axis=1)
    return out


def test_bf16_store_is_close_to_fp32_not_equal_and_says_so_in_its_meta(setup, ray_cluster):
    """The Ray pipeline at bf16 writes the precision into meta.json and targets within bf16's rounding of
    the fp32 store's (but not identical: autocast really ran); an fp32 meta.json leaves the key out so
    that stores read by older asr-kd releases are unchanged."""
    root, teacher, data = setup
    label_local([str(teacher)], str(data), str(root / "fp32"), opts())
    label([str(teacher)], str(data), str(root / "bf16"), opts(precision="bf16"))
    assert "teacher_precision" not in json.loads((root / "fp32" / "meta.json").read_text())
    assert json.loads((root / "bf16" / "meta.json").read_text())["teacher_precision"] == "bf16"
    a, b = StoreReader(root / "fp32"), StoreReader(root / "bf16")
    assert a.utt_ids == b.utt_ids and len(a.utt_ids) == 12
    vocab = a.meta.vocab_size
    pa = np.concatenate([dense_probs(a, u, vocab) for u in a.utt_ids])
    pb = np.concatenate([dense_probs(b, u, vocab) for u in a.utt_ids])
    # bf16 keeps 8 bits of mantissa: this teacher's large logits (output layer x8) move by ~1 %, so
    # probabilities move by up to ~0.1 where two units are close, far less on average
    assert 0 < np.abs(pa - pb).max() < 0.2 and np.abs(pa - pb).mean() < 0.01, (np.abs(pa - pb).max(), np.abs(pa - pb).mean())
    assert (pa.argmax(1) == pb.argmax(1)).mean() > 0.95


def test_resuming_a_store_at_another_precision_is_refused(setup, tmp_path):
    root, teacher, data = setup
    out = tmp_path / "store"
    label_local([str(teacher)], str(data), str(out), opts(shard_size=4))
    shards = sorted((out / "shards").glob("shard-*.json"))
    shards[-1].unlink()  # as if the run had stopped before its last shard
    with pytest.raises(StoreError, match="teacher_precision"):
        label_local([str(teacher)], str(data), str(out), opts(shard_size=4, precision="bf16"))


def test_unknown_precision_is_refused_naming_the_choices(setup):
    _, teacher, _ = setup
    with pytest.raises(AsrKdError, match="--precision must be one of fp32, bf16, fp16"):
        TeacherEnsemble([str(teacher)], precision="int8")


def test_autocast_runs_only_around_the_teacher_forward(setup):
    """fbank and the averaged distribution stay float32 at bf16 (only the forward is autocast)."""
    _, teacher, _ = setup
    ens = TeacherEnsemble([str(teacher)], precision="bf16")
    probs, lens, _ = ens.dense([torch.randn(8000) * 0.1, torch.randn(5000) * 0.1])
    assert probs.dtype == torch.float32
    assert torch.allclose(probs[0, : int(lens[0])].sum(-1), torch.ones(int(lens[0])), atol=1e-3)
