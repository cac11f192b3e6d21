"""Soft-target store format version 2: top-p frames, zstd blocks, v1 compatibility, corruption, bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from asr_kd.errors import StoreError
from asr_kd.targets import codec, quant
from asr_kd.targets.meta import StoreMeta, read_meta
from asr_kd.targets.reader import StoreReader, sparse_to_dense
from asr_kd.targets.stats import kl_dense_vs_stored, store_stats
from asr_kd.targets.verify import store_problems, verify_store
from asr_kd.targets.writer import StoreWriter, topk_from_log_probs

GOLDEN_V1 = Path(__file__).parent / "data" / "store_v1"  # written by the v1-only asr-kd (commit 94da639)


def meta(**kw) -> StoreMeta:
    base = dict(units_hash="units-abc", vocab_size=30, frame_shift_ms=40.0, k=8, teacher_fingerprints=["t1"],
                teacher_weights=[1.0])
    return StoreMeta(**{**base, **kw})


def peaked_log_probs(rng: np.random.Generator, frames: int, vocab: int = 30) -> torch.Tensor:
    """CTC-like: most frames nearly all blank, some with a few competing units."""
    logits = rng.normal(size=(frames, vocab)) * 1.5
    blank = rng.random(frames) < 0.7
    logits[:, 0] += np.where(blank, 12.0, 0.0)
    logits[np.arange(frames), rng.integers(1, vocab, frames)] += np.where(blank, 0.0, 8.0)
    return torch.log_softmax(torch.tensor(logits), -1)


def items_for(rng, n_utts=5, k=8, frames=(3, 60)):
    out = []
    for j in range(n_utts):
        ids, probs = topk_from_log_probs(peaked_log_probs(rng, int(rng.integers(*frames))), k)
        out.append((f"utt{j:02d}", ids, probs))
    return out


def write(path: Path, m: StoreMeta, items, per_shard=3) -> StoreReader:
    writer = StoreWriter(path, m, shard_size_utts=per_shard)
    for s in range(0, len(items), per_shard):
        writer.write_shard(s // per_shard, items[s: s + per_shard])
    writer.finalize()
    return StoreReader(path)


@pytest.mark.parametrize("quantization", ["log8", "float16"])
@pytest.mark.parametrize("block_frames", [1, 40, 2048])
def test_v2_round_trip_equals_v1_content(tmp_path, quantization, block_frames):
    items = items_for(np.random.default_rng(0), n_utts=7)
    v1 = write(tmp_path / "v1", meta(format_version=1, quantization=quantization), items)
    fixed = write(tmp_path / "v2", meta(quantization=quantization, block_frames=block_frames), items)
    ragged = write(tmp_path / "v2p", meta(quantization=quantization, block_frames=block_frames, top_p=0.99), items)
    assert fixed.meta.format_version == 2 and fixed.meta.codec == "zstd"
    for utt, ids, probs in items:
        ids1, p1 = v1.get_sparse(utt)
        ids2, p2 = fixed.get_sparse(utt)
        np.testing.assert_array_equal(ids2, ids1)  # top_p=1: identical to v1, bit for bit after decoding
        np.testing.assert_array_equal(p2, p1)
        assert (np.abs(p2 - probs) <= quant.error_bound(probs, quantization)).all()
        # top-p: each frame keeps the fewest leading entries reaching 0.99 (hand loop as the reference)
        idsp, pp = ragged.get_sparse(utt)
        counts = ragged.get_counts(utt)
        for t in range(ids.shape[0]):
            want = next((i + 1 for i in range(8) if probs[t, : i + 1].sum() >= 0.99 - 1e-9), 8)
            assert counts[t] == want
            np.testing.assert_array_equal(idsp[t, :want], ids1[t, :want])
            np.testing.assert_array_equal(pp[t, :want], p1[t, :want])
            assert (pp[t, want:] == 0).all() and (idsp[t, want:] == 0).all()  # padding
    assert [u for u, *_ in ragged.iter_shards()] == [u for u, *_ in fixed.iter_shards()]
    assert store_problems(ragged) == [] and store_problems(fixed) == []


def test_v2_top_p_store_is_smaller_and_close_to_teacher(tmp_path):
    rng = np.random.default_rng(1)
    dense = {f"u{j}": peaked_log_probs(rng, 200) for j in range(6)}
    items = [(u, *topk_from_log_probs(lp, 8)) for u, lp in dense.items()]
    v1 = write(tmp_path / "v1", meta(format_version=1), items)
    v2 = write(tmp_path / "v2", meta(top_p=0.999), items)
    s1, s2 = store_stats(v1), store_stats(v2)
    assert s1.bytes_per_frame == 16
    assert s2.bytes_per_frame < 0.6 * s1.bytes_per_frame
    assert s2.mean_k < 8 and sum(s2.k_histogram) == s2.frames and s2.k_histogram[0] > 0
    kl2 = np.mean([kl_dense_vs_stored(lp, *v2.get_sparse(u)) for u, lp in dense.items()])
    assert kl2 < 0.01


def test_golden_v1_store_reads_unchanged(tmp_path):
    """A store written by the v1-only asr-kd reads as before: same meta, ids, probs within the log8 bound.
    Read from a copy: the reader caches a compact index (``index/``) in a writable store it opens, and
    the golden store stays as the v1-only asr-kd wrote it (index.tsv only)."""
    import shutil

    exact = json.loads((GOLDEN_V1.parent / "store_v1_exact.json").read_text())
    assert not (GOLDEN_V1 / "index").exists()
    reader = StoreReader(shutil.copytree(GOLDEN_V1, tmp_path / "store_v1"))
    assert (tmp_path / "store_v1" / "index" / "index.json").is_file()  # indexed from index.tsv, cached
    assert reader.meta.format_version == 1 and reader.meta.codec is None and reader.meta.top_p == 1.0
    assert reader.utt_ids == sorted(exact)
    verify_store(reader)
    for utt, want in exact.items():
        ids, probs = reader.get_sparse(utt)
        np.testing.assert_array_equal(ids, want["ids"])
        assert (np.abs(probs - np.array(want["probs"])) <= quant.error_bound(np.array(want["probs"]), "log8")).all()
        assert (reader.get_counts(utt) == 4).all()
    assert store_stats(reader).bytes_per_frame == 8  # 4 x (1-byte id + 1-byte code)


def test_v1_meta_written_today_has_no_v2_keys(tmp_path):
    """A v1 store written by this code stays readable by older asr-kd (whose meta schema forbids unknown keys)."""
    write(tmp_path, meta(format_version=1), items_for(np.random.default_rng(2), n_utts=2))
    keys = set(json.loads((tmp_path / "meta.json").read_text()))
    assert keys == set(json.loads((GOLDEN_V1 / "meta.json").read_text()))


def test_newer_format_refused_clearly(tmp_path):
    shutil.copytree(GOLDEN_V1, tmp_path / "s")
    m = json.loads((tmp_path / "s" / "meta.json").read_text())
    m.update(format_version=3, some_future_field=1)
    (tmp_path / "s" / "meta.json").write_text(json.dumps(m))
    with pytest.raises(StoreError, match=r"meta\.json: store format version 3 is newer than this asr-kd .*upgrade"):
        StoreReader(tmp_path / "s")
    m.update(format_version=1, top_p=0.9)
    m.pop("some_future_field")
    (tmp_path / "s" / "meta.json").write_text(json.dumps(m))
    with pytest.raises(StoreError, match="version 1 store has no top_p"):
        read_meta(tmp_path / "s")


@pytest.mark.parametrize("damage", ["truncate", "bitflip"])
def test_damaged_v2_shard_refused_naming_it_and_redone(tmp_path, damage):
    items = items_for(np.random.default_rng(3), n_utts=6)
    reader = write(tmp_path, meta(top_p=0.99, block_frames=16), items)
    path = tmp_path / "shards" / "shard-00001.bin"
    good = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(good[:-3])
        message = r"shard-00001\.bin: shard is truncated"
    else:
        bad = bytearray(good)
        bad[len(bad) // 2] ^= 0x10
        path.write_bytes(bytes(bad))
        message = r"shard-00001\.bin: sha256 mismatch"
    reader = StoreReader(tmp_path)
    with pytest.raises(StoreError, match=message):
        reader.get_sparse("utt04")  # refused before decoding anything of the shard
    with pytest.raises(StoreError, match=message):
        list(reader.iter_shards())
    assert reader.get_sparse("utt00")[0].shape[1] == 8  # shard 0 still reads
    assert any("shard-00001.bin" in p for p in store_problems(reader))
    rerun = StoreWriter(tmp_path, meta(top_p=0.99, block_frames=16), shard_size_utts=3)
    if damage == "truncate":
        assert rerun.completed_shards() == {0}  # the labeler redoes it
    rerun.write_shard(1, items[3:])
    rerun.finalize()
    assert path.read_bytes() == good  # deterministic: a redone shard has the clean run's bytes
    assert store_problems(StoreReader(tmp_path)) == []


@pytest.mark.parametrize("top_p", [0.0, -0.1, 1.01, float("nan")])
def test_bad_threshold_refused(tmp_path, top_p):
    with pytest.raises(StoreError, match=r"top-p threshold must be in \(0, 1\].*got"):
        codec.check_top_p(top_p, 8)
    with pytest.raises(ValueError, match="top_p"):
        meta(top_p=top_p)


def test_bad_k_max_and_v1_with_top_p_refused():
    with pytest.raises(StoreError, match=r"k_max \(--top-k\) must be an integer >= 1.*got 0"):
        codec.check_top_p(0.99, 0)
    with pytest.raises(ValueError):
        meta(k=0)
    with pytest.raises(ValueError, match="format version 1 stores exactly k"):
        meta(format_version=1, top_p=0.9)


def test_sparse_to_dense_ignores_padding():
    # frame 0 keeps 2 units (blank 0.9, unit 3 0.05), frame 1 keeps 1 (unit 5 0.99); padding id 0 prob 0
    ids = np.array([[0, 3, 0], [5, 0, 0]])
    probs = np.array([[0.9, 0.05, 0.0], [0.99, 0.0, 0.0]])
    dense = sparse_to_dense(ids, probs, 6, fill="zero")
    np.testing.assert_allclose(dense[0], [0.9, 0, 0, 0.05, 0, 0], atol=1e-7)  # blank not overwritten by padding
    np.testing.assert_allclose(dense[1], [0, 0, 0, 0, 0, 0.99], atol=1e-7)
    uni = sparse_to_dense(ids, probs, 6, fill="uniform")
    np.testing.assert_allclose(uni[1], [0.002, 0.002, 0.002, 0.002, 0.002, 0.99], atol=1e-6)
    # KL of an exactly stored frame pair is 0 once the missing mass is spread as the teacher had it
    p = uni.astype(np.float64)
    assert kl_dense_vs_stored(np.log(p), ids, probs) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("quantization", ["log8", "float16"])
def test_encoded_shard_written_by_a_worker_equals_the_writers_own_encoding(tmp_path, quantization):
    """``write_encoded_shard`` (the compact columns labeling actors send back) writes the bytes ``write_shard``
    writes from ids and probabilities, so the store does not depend on where the encoding ran."""
    items = items_for(np.random.default_rng(3), n_utts=3)
    m = meta(quantization=quantization, top_p=0.99)
    plain = StoreWriter(tmp_path / "plain", m, shard_size_utts=3)
    plain.write_shard(0, items)
    encoded = StoreWriter(tmp_path / "encoded", m, shard_size_utts=3)
    encoded.write_encoded_shard(0, [(u, *codec.encode_entries(i, p, **encoded.encoder_params())) for u, i, p in items])
    for name in ("shard-00000.bin", "shard-00000.json"):
        assert (tmp_path / "plain" / "shards" / name).read_bytes() == (tmp_path / "encoded" / "shards" / name).read_bytes()
    counts = codec.encode_entries(items[0][1], items[0][2], **encoded.encoder_params())[0]
    assert counts.dtype == np.uint8 and 1 <= counts.min() and counts.max() <= 8 and (counts < 8).any()  # top-p selected


@pytest.mark.parametrize("damage, message", [
    (lambda c, i, k: (c * 0, i, k), "frame counts must be 1..8"),
    (lambda c, i, k: (c, i[:-1], k[:-1]), "sum to the"),
    (lambda c, i, k: (c, np.full_like(i, 40), k), "out of range 0..29"),
    (lambda c, i, k: (c, i.astype(np.int64), k), "encoded columns must be"),
])
def test_encoded_shard_with_bad_columns_is_refused_naming_the_utterance(tmp_path, damage, message):
    items = items_for(np.random.default_rng(4), n_utts=2)
    writer = StoreWriter(tmp_path / "s", meta(), shard_size_utts=3)
    enc = [(u, *codec.encode_entries(i, p, **writer.encoder_params())) for u, i, p in items]
    enc[1] = (enc[1][0], *damage(*enc[1][1:]))
    with pytest.raises(StoreError, match=message) as err:
        writer.write_encoded_shard(0, enc)
    assert "utt01" in str(err.value)
    assert not (tmp_path / "s" / "shards" / "shard-00000.json").exists()  # nothing half-written
