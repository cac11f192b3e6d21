"""Soft-target store format version 1: round trips, quantization bounds, atomic shards and resume, corruption detection."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from asr_kd.errors import StoreError
from asr_kd.targets import quant
from asr_kd.targets.layout import read_rejects
from asr_kd.targets.meta import StoreMeta, check_compatible
from asr_kd.targets.reader import StoreReader, sparse_to_dense
from asr_kd.targets.stats import expected_frames, kl_dense_vs_stored, stored_entropy
from asr_kd.targets.verify import store_problems, verify_store
from asr_kd.targets.writer import StoreWriter, topk_from_log_probs


def make_meta(vocab: int = 30, k: int = 8, quantization: str = "log8", temperature: float = 1.0, **kw) -> StoreMeta:
    """A format version 1 meta (this file tests v1 stores, which must keep reading unchanged; v2 in
    tests/test_store_v2.py)."""
    kw.setdefault("format_version", 1)
    return StoreMeta(units_hash="units-abc", vocab_size=vocab, frame_shift_ms=40.0, subsampling=4, k=k,
                     quantization=quantization, temperature=temperature, teacher_fingerprints=["teacher-1"],
                     teacher_weights=[1.0], fbank={"sample_rate": 16000, "frame_length_ms": 25.0, "frame_shift_ms": 10.0},
                     **kw)


def random_log_probs(rng: np.random.Generator, frames: int, vocab: int, sharpness: float = 3.0) -> torch.Tensor:
    return torch.log_softmax(torch.tensor(rng.normal(size=(frames, vocab)) * sharpness), dim=-1)


def write_store(path: Path, meta: StoreMeta, shards: int = 3, per_shard: int = 4, seed: int = 0,
                frames: tuple[int, int] = (5, 30)) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """A finalized store with ids ``u<shard><j>``; returns the exact (unquantized) top-k written."""
    rng = np.random.default_rng(seed)
    writer = StoreWriter(path, meta, shard_size_utts=per_shard)
    written = {}
    for s in range(shards):
        items = []
        for j in range(per_shard):
            utt = f"u{s}{j}"
            ids, probs = writer.topk(random_log_probs(rng, int(rng.integers(*frames)), meta.vocab_size))
            items.append((utt, ids, probs))
            written[utt] = (ids, probs)
        writer.write_shard(s, items)
    writer.finalize()
    return written


@pytest.mark.parametrize("quantization", ["log8", "float16"])
@pytest.mark.parametrize("vocab", [30, 500])
@pytest.mark.parametrize("k", [1, 4, 8])
def test_round_trip_within_quantization_bound(tmp_path, k, vocab, quantization):
    meta = make_meta(vocab=vocab, k=k, quantization=quantization)
    written = write_store(tmp_path, meta, shards=2, per_shard=3, seed=k + vocab)
    reader = StoreReader(tmp_path)
    assert reader.utt_ids == sorted(written)
    rec = meta.record_dtype
    assert rec["ids"].base == (np.dtype("u1") if vocab <= 256 else np.dtype("<u2"))
    frames = 0
    for utt, (ids, probs) in written.items():
        got_ids, got_probs = reader.get_sparse(utt)
        assert got_ids.dtype == np.int64 and got_probs.dtype == np.float32
        np.testing.assert_array_equal(got_ids, ids)
        err = np.abs(got_probs.astype(np.float64) - probs)
        assert (err <= quant.error_bound(probs, quantization)).all()
        assert reader.num_frames(utt) == ids.shape[0]
        frames += ids.shape[0]
    id_bytes = 1 if vocab <= 256 else 2
    code_bytes = 1 if quantization == "log8" else 2
    assert reader.payload_bytes() == frames * k * (id_bytes + code_bytes)


def test_log8_relative_precision_at_both_ends():
    # small p: relative error of p; p near 1: relative error of 1 - p (the tail mass); both <= 7.5 %
    h = (quant.LOG8_RANGE[1] - quant.LOG8_RANGE[0]) / 255 / 2
    p = np.geomspace(1e-10, 0.5, 20001)
    got = quant.decode(quant.encode(p, "log8"), "log8").astype(np.float64)
    rel = np.abs(got / p - 1)
    assert rel.max() <= math.expm1(h) + 1e-6 and rel.max() > 0.07  # tight, not vacuous
    tail = np.geomspace(1e-4, 0.5, 2001)
    got = quant.decode(quant.encode(1 - tail, "log8"), "log8").astype(np.float64)
    assert (np.abs((1 - got) / tail - 1) <= math.expm1(h) + 1e-3).all()  # 1e-3: float32 spacing near 1 is 6e-8
    assert quant.decode(quant.encode(np.array([0.0, 1e-30]), "log8"), "log8") == pytest.approx([1e-10, 1e-10])
    assert np.all(quant.error_bound(p, "log8") >= np.abs(quant.decode(quant.encode(p, "log8"), "log8") - p))


def test_temperature_applied_and_recorded(tmp_path):
    rng = np.random.default_rng(1)
    logits = torch.tensor(rng.normal(size=(6, 30)) * 4)
    ids_t1, p_t1 = topk_from_log_probs(logits, 5, temperature=1.0)
    ids_t2, p_t2 = topk_from_log_probs(logits, 5, temperature=2.0)
    expected = torch.softmax(logits / 2.0, dim=-1).numpy()
    np.testing.assert_allclose(p_t2, np.take_along_axis(expected, ids_t2, axis=1), rtol=1e-6)
    np.testing.assert_array_equal(ids_t1, ids_t2)  # temperature keeps the order ...
    assert (p_t2[:, 0] < p_t1[:, 0]).all()  # ... but flattens the distribution
    # log-probs and logits give the same targets (softmax is shift invariant)
    _, p_lp = topk_from_log_probs(torch.log_softmax(logits, -1), 5, temperature=2.0)
    np.testing.assert_allclose(p_lp, p_t2, rtol=1e-6)
    # the writer's topk uses the store's temperature, and meta.json records it
    writer = StoreWriter(tmp_path, make_meta(temperature=2.0))
    np.testing.assert_allclose(writer.topk(logits)[1], topk_from_log_probs(logits, 8, 2.0)[1])
    assert json.loads((tmp_path / "meta.json").read_text())["temperature"] == 2.0


def test_bytes_per_frame_top8_log8_is_16(tmp_path):
    write_store(tmp_path, make_meta(vocab=30, k=8), shards=2, per_shard=5)
    reader = StoreReader(tmp_path)
    assert reader.payload_bytes() == 16 * reader.total_frames
    # overhead outside the frame records: the per-shard JSON index and index.tsv, ~30-40 bytes per utterance
    overhead = sum(p.stat().st_size for p in (tmp_path / "shards").glob("*.json")) + (tmp_path / "index.tsv").stat().st_size
    assert overhead / len(reader) < 120


def test_kl_small_for_peaked_distribution_at_top8():
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(200, 60)) * 1.0
    logits[np.arange(200), rng.integers(0, 60, 200)] += 9.0  # one dominant unit per frame (CTC-like)
    lp = torch.log_softmax(torch.tensor(logits), -1)
    ids, probs = topk_from_log_probs(lp, 8)
    stored = quant.decode(quant.encode(probs, "log8"), "log8")
    kl = kl_dense_vs_stored(lp, ids, stored)
    assert 0 < kl < 0.01
    # more truncation costs more; nothing lost costs nothing
    ids2, probs2 = topk_from_log_probs(lp, 2)
    assert kl_dense_vs_stored(lp, ids2, probs2) > kl
    ids_all, probs_all = topk_from_log_probs(lp, 60)
    assert kl_dense_vs_stored(lp, ids_all, probs_all) == pytest.approx(0.0, abs=1e-9)


def test_kl_matches_hand_computation():
    # V=3, k=1: stored top-1 p=0.5 -> q = [0.5, 0.25, 0.25]; KL(p || q) for p = [0.5, 0.3, 0.2]
    p = np.array([[0.5, 0.3, 0.2]])
    expected = 0.5 * math.log(1) + 0.3 * math.log(0.3 / 0.25) + 0.2 * math.log(0.2 / 0.25)
    assert kl_dense_vs_stored(np.log(p), np.array([[0]]), np.array([[0.5]])) == pytest.approx(expected, rel=1e-9)


def test_dense_zero_and_uniform(tmp_path):
    written = write_store(tmp_path, make_meta(vocab=30, k=4), shards=1, per_shard=2)
    reader = StoreReader(tmp_path)
    ids, probs = reader.get_sparse("u00")
    zero = reader.get_dense("u00")
    assert zero.shape == (ids.shape[0], 30)
    np.testing.assert_allclose(zero.sum(1), probs.sum(1), rtol=1e-5)
    np.testing.assert_allclose(np.take_along_axis(zero, ids, 1), probs)
    uni = reader.get_dense("u00", fill="uniform")
    np.testing.assert_allclose(uni.sum(1), 1.0, rtol=1e-5)
    others = np.ones_like(uni, dtype=bool)
    np.put_along_axis(others, ids, False, axis=1)
    rest = uni[others].reshape(ids.shape[0], 26)
    assert np.allclose(rest, rest[:, :1])  # missing mass spread evenly
    assert reader.get_dense("u00", vocab_size=40).shape[1] == 40
    assert sparse_to_dense(written["u00"][0], written["u00"][1], 30).shape == zero.shape


def test_interrupted_write_is_not_complete_and_is_redone(tmp_path, monkeypatch):
    meta = make_meta()
    rng = np.random.default_rng(3)
    writer = StoreWriter(tmp_path, meta, shard_size_utts=2)

    def items(s):
        return [(f"u{s}{j}", *writer.topk(random_log_probs(rng, 7, 30))) for j in range(2)]

    writer.write_shard(0, items(0))
    # crash (power loss / kill) while writing shard 1: the .bin lands, the marker rename never happens
    real_replace = os.replace

    def crash_on_marker(src, dst):
        if str(dst).endswith(".json"):
            raise KeyboardInterrupt("killed")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", crash_on_marker)
    with pytest.raises(KeyboardInterrupt):
        writer.write_shard(1, items(1))
    monkeypatch.setattr(os, "replace", real_replace)
    assert (tmp_path / "shards" / "shard-00001.bin").exists()
    assert (tmp_path / "shards" / "shard-00001.json.tmp").exists()

    resumed = StoreWriter(tmp_path, meta, shard_size_utts=2)  # a rerun of the labeler
    assert resumed.completed_shards() == {0}
    assert not list((tmp_path / "shards").glob("*.tmp"))  # leftovers cleaned
    with pytest.raises(StoreError, match="not finalized"):
        StoreReader(tmp_path)
    with pytest.raises(StoreError, match=r"shards \[1\] are missing"):
        resumed.finalize(expected_shards=2)
    resumed.write_shard(1, items(1))
    assert resumed.completed_shards() == {0, 1}
    resumed.finalize(expected_shards=2)
    assert StoreReader(tmp_path).utt_ids == ["u00", "u01", "u10", "u11"]


def test_truncated_bin_with_marker_is_redone_and_refused_by_reader(tmp_path):
    written = write_store(tmp_path, make_meta(), shards=2, per_shard=2)
    path = tmp_path / "shards" / "shard-00001.bin"
    good_bytes = path.read_bytes()
    path.write_bytes(good_bytes[:-5])
    reader = StoreReader(tmp_path)
    with pytest.raises(StoreError, match=r"shard-00001\.bin: shard is truncated"):
        reader.get_sparse("u10")
    assert reader.get_sparse("u00")[0].shape[1] == 8  # other shards stay readable
    problems = store_problems(reader)
    assert len(problems) == 1 and "shard-00001.bin" in problems[0] and "truncated" in problems[0]
    # a rerun of the labeler redoes the truncated shard (and only it): the store is whole again
    # (mutation caught: completed_shards() trusting a marker whose .bin is truncated, or a redo that is
    # never checked -- the test used to stop at the line below without redoing anything)
    rerun = StoreWriter(tmp_path, make_meta(), shard_size_utts=2)
    assert rerun.completed_shards() == {0}
    rerun.write_shard(1, [(u, *written[u]) for u in ("u10", "u11")])
    rerun.finalize(expected_shards=2)
    assert path.read_bytes() == good_bytes
    redone = StoreReader(tmp_path)
    verify_store(redone)
    assert store_problems(redone) == []
    np.testing.assert_array_equal(redone.get_sparse("u10")[0], written["u10"][0])


def test_bit_flip_fails_checksum_naming_the_shard(tmp_path):
    write_store(tmp_path, make_meta(), shards=2, per_shard=2)
    path = tmp_path / "shards" / "shard-00000.bin"
    data = bytearray(path.read_bytes())
    data[10] ^= 0x01
    path.write_bytes(bytes(data))
    reader = StoreReader(tmp_path)
    assert store_problems(reader, checksums=False) == []  # same size: only the checksum can tell
    with pytest.raises(StoreError, match=r"shard-00000\.bin: sha256 mismatch"):
        verify_store(reader)


def test_missing_index_entry_and_unknown_utterance(tmp_path):
    write_store(tmp_path, make_meta(), shards=2, per_shard=2)
    index = tmp_path / "index.tsv"
    lines = index.read_text().splitlines()
    index.write_text("".join(line + "\n" for line in lines if not line.startswith("u01\t")))
    reader = StoreReader(tmp_path)
    assert "u01" not in reader
    with pytest.raises(StoreError, match="'u01' is not in the store index"):
        reader.get_sparse("u01")
    problems = store_problems(reader)
    assert any("'u01' is in shard-00000 but missing from index.tsv" in p for p in problems)
    with pytest.raises(StoreError, match="'nope' is not in the store"):
        reader.num_frames("nope")


def test_unknown_rejected_utterance_says_why(tmp_path):
    meta = make_meta()
    writer = StoreWriter(tmp_path, meta)
    writer.write_rejects([("bad", "too_long: 75.0 s > 60 s")])
    writer.write_shard(0, [("good", *writer.topk(random_log_probs(np.random.default_rng(0), 4, 30)))])
    writer.finalize()
    with pytest.raises(StoreError, match="'bad'.*rejected by the labeler: too_long"):
        StoreReader(tmp_path).get_sparse("bad")


def test_duplicate_utterance_across_shards_refused(tmp_path):
    meta = make_meta()
    rng = np.random.default_rng(4)
    writer = StoreWriter(tmp_path, meta)
    writer.write_shard(0, [("a", *writer.topk(random_log_probs(rng, 3, 30))), ("dup", *writer.topk(random_log_probs(rng, 3, 30)))])
    writer.write_shard(1, [("dup", *writer.topk(random_log_probs(rng, 3, 30)))])
    with pytest.raises(StoreError, match=r"'dup' is stored in two shards \(shard-00000 and shard-00001\)"):
        writer.finalize()
    with pytest.raises(StoreError, match="'x' appears twice"):
        writer.write_shard(2, [("x", *writer.topk(random_log_probs(rng, 3, 30)))] * 2)


def test_bad_items_refused_naming_the_utterance(tmp_path):
    writer = StoreWriter(tmp_path, make_meta(vocab=30, k=2), shard_size_utts=2)
    ok_ids, ok_p = np.array([[1, 2]]), np.array([[0.6, 0.3]])
    with pytest.raises(StoreError, match="'u1'.*out of range"):
        writer.write_shard(0, [("u1", np.array([[1, 30]]), ok_p)])
    with pytest.raises(StoreError, match="'u2'.*finite"):
        writer.write_shard(0, [("u2", ok_ids, np.array([[np.nan, 0.1]]))])
    with pytest.raises(StoreError, match="'u3'.*k=2"):
        writer.write_shard(0, [("u3", np.array([[1, 2, 3]]), np.array([[0.5, 0.2, 0.1]]))])
    with pytest.raises(StoreError, match="whitespace"):
        writer.write_shard(0, [("u 4", ok_ids, ok_p)])
    with pytest.raises(StoreError, match="more than the planned 2"):
        writer.write_shard(0, [("a", ok_ids, ok_p), ("b", ok_ids, ok_p), ("c", ok_ids, ok_p)])
    assert writer.completed_shards() == set()


def test_iter_shards_yields_each_once_in_shard_order(tmp_path):
    write_store(tmp_path, make_meta(), shards=4, per_shard=5, frames=(2, 5))
    reader = StoreReader(tmp_path)
    sequential = [u for u, _, _ in reader.iter_shards()]
    assert sequential == [f"u{s}{j}" for s in range(4) for j in range(5)]
    assert [u for u, _, _ in reader.iter_shards(shards=[2, 0])] == [f"u{s}{j}" for s in (2, 0) for j in range(5)]
    for utt, ids, probs in reader.iter_shards():
        np.testing.assert_array_equal(ids, reader.get_sparse(utt)[0])
        np.testing.assert_array_equal(probs, reader.get_sparse(utt)[1])


def test_incompatible_units_or_frame_rate_refused():
    meta = make_meta()
    check_compatible(meta, "units-abc", 40.0, 30)
    with pytest.raises(StoreError, match="units_hash units-abc, model other"):
        check_compatible(meta, "other", 40.0, 30)
    with pytest.raises(StoreError, match="store 40 ms, model 20 ms"):
        check_compatible(meta, "units-abc", 20.0, 30)
    with pytest.raises(StoreError, match="store 30, model 31"):
        check_compatible(meta, "units-abc", 40.0, 31)


def test_feature_framing_must_match_the_teachers_other_fbank_options_may_differ():
    from asr_kd.data.features import FbankConfig

    teacher = FbankConfig().model_dump(mode="json")
    meta = make_meta().model_copy(update={"fbank": teacher})
    assert check_compatible(meta, "units-abc", 40.0, 30, fbank=dict(teacher)) == []
    for key, value in (("frame_shift_ms", 12.5), ("frame_length_ms", 32.0), ("sample_rate", 8000), ("snip_edges", False)):
        with pytest.raises(StoreError, match=f"fbank.{key} is {teacher[key]} in the store, {value} in the model"):
            check_compatible(meta, "units-abc", 40.0, 30, fbank={**teacher, key: value})
    notes = check_compatible(meta, "units-abc", 40.0, 30, fbank={**teacher, "num_mel_bins": 64})
    assert notes == ["fbank.num_mel_bins: teacher 80, student 64"]
    no_fbank = make_meta().model_copy(update={"fbank": {}})  # a store that did not record its features
    assert check_compatible(no_fbank, "units-abc", 40.0, 30, fbank={**teacher, "frame_shift_ms": 12.5}) == []


def test_resume_with_other_settings_refused(tmp_path):
    StoreWriter(tmp_path, make_meta(k=8))
    StoreWriter(tmp_path, make_meta(k=8))  # same settings: resumes
    with pytest.raises(StoreError, match="k: store 8 vs now 4"):
        StoreWriter(tmp_path, make_meta(k=4))


def test_meta_validation():
    with pytest.raises(ValueError, match="exceeds vocab_size"):
        make_meta(vocab=4, k=8)
    with pytest.raises(ValueError):
        make_meta(k=65)
    with pytest.raises(ValueError, match="teacher_weights"):
        StoreMeta(units_hash="x", vocab_size=30, frame_shift_ms=40, k=2, teacher_fingerprints=["a"], teacher_weights=[0.5, 0.5])
    with pytest.raises(StoreError, match="16-bit"):
        quant.id_dtype(70000)


def test_rejects_merge_across_resumes_and_relabeled_ones_dropped(tmp_path):
    meta = make_meta()
    rng = np.random.default_rng(5)
    w = StoreWriter(tmp_path, meta)
    w.write_rejects([("a", "unreadable: bad header"), ("b", "too_long:\t70 s")])
    w2 = StoreWriter(tmp_path, meta)
    w2.write_rejects([("c", "empty")])
    assert read_rejects(tmp_path / "rejects.tsv") == {"a": "unreadable: bad header", "b": "too_long: 70 s", "c": "empty"}
    w2.write_shard(0, [("a", *w2.topk(random_log_probs(rng, 3, 30)))])  # "a" was fixed and labeled later
    w2.finalize()
    assert StoreReader(tmp_path).rejects() == {"b": "too_long: 70 s", "c": "empty"}


def test_expected_frames_kaldi_rule():
    assert expected_frames(1.0) == (1 + (16000 - 400) // 160) // 4 == 24
    assert expected_frames(0.02) == 0  # shorter than one 25 ms window
    assert expected_frames(0.025) == 0  # one fbank frame, not enough for one 40 ms output frame
    assert expected_frames(0.055) == 1  # 880 samples -> 4 fbank frames -> 1 output frame
    assert expected_frames(1.0, subsampling=1) == 98
    assert expected_frames(1.0, subsampling=1, snip_edges=False) == 100


def test_stored_entropy():
    h = stored_entropy(np.array([[1.0, 0.0], [0.25, 0.25], [0.5, 0.25]]))
    assert h[0] == pytest.approx(0.0)
    assert h[1] == pytest.approx(math.log(2))
    assert h[2] == pytest.approx(-(2 / 3) * math.log(2 / 3) - (1 / 3) * math.log(1 / 3))


def test_rejects_are_appended_and_a_torn_last_line_is_cut_before_the_next_append(tmp_path, caplog):
    """A shard's rejects are appended (not the whole file rewritten per shard). A run killed mid-append
    leaves a torn last line: readers ignore it, the next append cuts it off, finalize sorts the file."""
    meta = make_meta()
    w = StoreWriter(tmp_path, meta)
    w.write_rejects([("z", "empty")])
    w.write_rejects([("a", "unreadable: bad header")])
    path = tmp_path / "rejects.tsv"
    assert path.read_text() == "z\tempty\na\tunreadable: bad header\n"  # appended in order, not merged
    with open(path, "a") as fh:
        fh.write("b\ttoo_lo")  # killed mid-append
    assert read_rejects(path) == {"z": "empty", "a": "unreadable: bad header"}
    w.write_rejects([("b", "too_long: 70 s"), ("z", "unreadable: now")])  # the rerun redoes b's shard
    assert path.read_text().splitlines() == ["z\tempty", "a\tunreadable: bad header", "b\ttoo_long: 70 s", "z\tunreadable: now"]
    w.finalize(expected_shards=0)
    assert path.read_text() == "a\tunreadable: bad header\nb\ttoo_long: 70 s\nz\tunreadable: now\n"  # latest wins, sorted
