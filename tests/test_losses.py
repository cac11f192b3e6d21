"""KD loss equals a hand computation (top-k renormalization, temperature); target delay shifts frames."""

from __future__ import annotations

import math

import numpy as np

import pytest
import torch

from asr_kd.errors import StoreError
from asr_kd.train.losses import ctc_loss, delay_targets, kd_loss, pad_targets


def test_kd_loss_matches_hand_computation_with_renormalization_and_temperature():
    T = 2.0
    # one utterance, two frames, V = 4 units; the student's temperature-1 log-probs
    student_logits = torch.tensor([[[1.0, 2.0, 0.5, -1.0], [0.0, 0.0, 3.0, 1.0]]])
    student_log_probs = torch.log_softmax(student_logits, dim=-1)
    # stored top-2 at temperature T: ids and probs that do not sum to 1 (missing mass 0.1 and 0.3)
    ids = torch.tensor([[[1, 0], [2, 3]]])
    probs = torch.tensor([[[0.6, 0.3], [0.5, 0.2]]])
    mask = torch.tensor([[True, True]])
    got = kd_loss(student_log_probs, ids, probs, mask, temperature=T)

    expected = 0.0
    for t, (frame_ids, frame_p) in enumerate([([1, 0], [0.6, 0.3]), ([2, 3], [0.5, 0.2])]):
        z = [x / T for x in student_logits[0, t].tolist()]
        lse = math.log(sum(math.exp(v) for v in z))
        s = sum(frame_p)
        for i, p in zip(frame_ids, frame_p):
            p_norm = p / s
            expected += p_norm * (math.log(p_norm) - (z[i] - lse))
    expected = expected * T * T  # summed over the utterance's two frames, one utterance
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_kd_loss_is_zero_when_student_matches_renormalized_teacher():
    p = torch.tensor([0.7, 0.2, 0.1, 0.0])
    student = torch.log(p.clamp_min(1e-12)).view(1, 1, 4)
    ids = torch.tensor([[[0, 1, 2]]])
    probs = torch.tensor([[[0.7, 0.2, 0.1]]])
    assert kd_loss(student, ids, probs, torch.ones(1, 1, dtype=torch.bool)).item() == pytest.approx(0.0, abs=1e-6)


def test_kd_loss_sums_frames_and_averages_utterances():
    student = torch.log_softmax(torch.zeros(2, 3, 4), -1)  # uniform: KL to a one-hot target = log 4 per frame
    ids = torch.zeros(2, 3, 1, dtype=torch.long)
    probs = torch.ones(2, 3, 1)
    mask = torch.tensor([[True, True, True], [True, False, False]])
    assert kd_loss(student, ids, probs, mask).item() == pytest.approx((3 + 1) * math.log(4) / 2, rel=1e-6)


def test_kd_loss_ignores_masked_frames():
    student = torch.log_softmax(torch.randn(1, 3, 5, generator=torch.Generator().manual_seed(0)), -1)
    ids = torch.tensor([[[0], [1], [2]]])
    probs = torch.ones(1, 3, 1)
    only_first = kd_loss(student, ids, probs, torch.tensor([[True, False, False]]))
    assert only_first.item() == pytest.approx(-student[0, 0, 0].item(), rel=1e-5)


def test_target_delay_shifts_frames_and_masks_the_start():
    ids = torch.arange(5).view(5, 1)
    probs = torch.linspace(0.1, 0.5, 5).view(5, 1)
    d_ids, d_probs, valid = delay_targets(ids, probs, 2)
    assert valid.tolist() == [False, False, True, True, True]
    assert d_ids[2:, 0].tolist() == [0, 1, 2]  # student frame t learns teacher frame t - 2
    assert torch.allclose(d_probs[2:, 0], probs[:3, 0])
    same_ids, _, all_valid = delay_targets(ids, probs, 0)
    assert torch.equal(same_ids, ids) and bool(all_valid.all())
    with pytest.raises(ValueError):
        delay_targets(ids, probs, -1)


def test_pad_targets_tolerates_one_frame_and_refuses_more():
    items = [(torch.zeros(10, 2, dtype=torch.long), torch.full((10, 2), 0.5)), (torch.zeros(7, 2, dtype=torch.long), torch.full((7, 2), 0.5))]
    ids, probs, mask = pad_targets(items, torch.tensor([11, 7]), ["a", "b"])
    assert ids.shape == (2, 11, 2)
    assert mask.sum(1).tolist() == [10, 7]
    with pytest.raises(StoreError, match="'b'.*7 frames but the student produces 12"):
        pad_targets(items, torch.tensor([10, 12]), ["a", "b"])


def test_ctc_loss_is_lower_for_the_right_transcript():
    V = 6
    logits = torch.full((1, 8, V), -5.0)
    path = [1, 1, 0, 2, 0, 3, 3, 0]
    for t, u in enumerate(path):
        logits[0, t, u] = 5.0
    lp = torch.log_softmax(logits, -1)
    good = ctc_loss(lp, torch.tensor([8]), [[1, 2, 3]])
    bad = ctc_loss(lp, torch.tensor([8]), [[4, 5, 1]])
    assert good.item() < 0.1 < bad.item()


def test_epoch_loss_weights_give_each_term_its_share_of_the_epoch():
    from asr_kd.train.losses import epoch_loss_weights

    # 10 batches: 2 labeled (CTC + KD), 8 unlabeled (KD); alpha = 0.3
    w = epoch_loss_weights({"ctc": 2, "kd": 10, "pseudo": 0}, 10, {"ctc": 0.3, "kd": 0.7, "pseudo": 0.5})
    assert w == pytest.approx({"ctc": 1.5, "kd": 0.7, "pseudo": 0.0})
    # epoch mean of the loss with every CTC value c and KD value k: 0.3 c + 0.7 k (not 2*0.3c/10 + ...)
    c, k = 4.0, 2.0
    per_batch = [w["ctc"] * c + w["kd"] * k] * 2 + [w["kd"] * k] * 8
    assert sum(per_batch) / 10 == pytest.approx(0.3 * c + 0.7 * k)


def test_ragged_store_frames_through_the_loss_equal_hand_computation(tmp_path):
    """A v2 (top-p) store keeps 1, 2 and 3 units in three frames; read back, padded and batched with
    a one-frame utterance, the KD loss equals the sum over the kept units only."""
    from asr_kd.targets.meta import StoreMeta
    from asr_kd.targets.reader import StoreReader
    from asr_kd.targets.writer import StoreWriter

    meta = StoreMeta(units_hash="u", vocab_size=5, frame_shift_ms=40.0, k=3, top_p=0.9, quantization="float16")
    writer = StoreWriter(tmp_path, meta, shard_size_utts=2)
    teacher = {"a": [([0, 2, 1], [0.95, 0.03, 0.02]), ([3, 0, 4], [0.5, 0.45, 0.05]), ([1, 2, 3], [0.4, 0.3, 0.3])],
               "b": [([4, 0, 1], [0.99, 0.005, 0.005])]}
    writer.write_shard(0, [(u, np.array([f[0] for f in fr]), np.array([f[1] for f in fr])) for u, fr in teacher.items()])
    writer.finalize()
    reader = StoreReader(tmp_path)
    np.testing.assert_array_equal(reader.get_counts("a"), [1, 2, 3])
    kept = {"a": [([0], [0.95]), ([3, 0], [0.5, 0.45]), ([1, 2, 3], [0.4, 0.3, 0.3])], "b": [([4], [0.99])]}
    student_logits = torch.tensor([[[1.0, 2.0, 0.5, -1.0, 0.2], [0.0, 0.0, 3.0, 1.0, 0.5], [0.3, -0.2, 0.1, 2.0, 0.0]],
                                   [[0.5, 0.1, 0.1, 0.1, 1.5], [0.0] * 5, [0.0] * 5]])
    items = [tuple(torch.from_numpy(x) for x in reader.get_sparse(u)) for u in ("a", "b")]
    ids, probs, mask = pad_targets(items, torch.tensor([3, 1]), ["a", "b"])
    got = kd_loss(torch.log_softmax(student_logits, -1), ids, probs, mask)

    expected = 0.0
    for b, utt in enumerate(("a", "b")):
        for t, (frame_ids, frame_p) in enumerate(kept[utt]):
            z = student_logits[b, t].tolist()
            lse = math.log(sum(math.exp(v) for v in z))
            s = sum(frame_p)
            expected += sum(p / s * (math.log(p / s) - (z[i] - lse)) for i, p in zip(frame_ids, frame_p))
    assert got.item() == pytest.approx(expected / 2, rel=2e-3)  # float16 codes: <= 2**-11 relative per prob
