"""Stores at scale (issue 16, item 7): the compact memory-mapped index, a list of stores (kd.store=[A,B]),
checksums as their own step ('asr-kd targets verify', not training start-up) and a store that does not
grow (labeling a changed data dir is refused with directions)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from asr_kd.cli import main as cli_main
from asr_kd.config import load_config
from asr_kd.errors import StoreError
from asr_kd.targets import index as compact
from asr_kd.targets.meta import StoreMeta
from asr_kd.targets.reader import StoreReader
from asr_kd.targets.storeset import StoreSet
from asr_kd.targets.verify import store_problems
from asr_kd.targets.writer import StoreWriter
from asr_kd.train.config import TrainConfig
from asr_kd.train.loop import Trainer
from factories import make_data, make_teacher, tiny_train_config


def make_meta(version: int = 2, **kw) -> StoreMeta:
    base = dict(units_hash="units-abc", vocab_size=30, frame_shift_ms=40.0, subsampling=4, k=8, temperature=1.0,
                teacher_fingerprints=["teacher-1"], teacher_weights=[1.0],
                fbank={"sample_rate": 16000, "frame_length_ms": 25.0, "frame_shift_ms": 10.0}, format_version=version)
    if version == 2:
        base.update(top_p=0.99, codec="zstd")
    return StoreMeta(**{**base, **kw})


def make_store(path: Path, meta: StoreMeta, prefix: str = "u", shards: int = 3, per_shard: int = 4, seed: int = 0,
               ids: list[str] | None = None) -> StoreReader:
    """A finalized store of random peaked distributions; utterance ids ``<prefix><shard>-<j>`` unless ``ids``."""
    rng = np.random.default_rng(seed)
    writer = StoreWriter(path, meta, shard_size_utts=per_shard)
    names = ids or [f"{prefix}{s}-{j}" for s in range(shards) for j in range(per_shard)]
    for s in range(0, len(names), per_shard):
        items = []
        for utt in names[s: s + per_shard]:
            logits = torch.tensor(rng.normal(size=(int(rng.integers(3, 40)), meta.vocab_size)) * 3.0)
            items.append((utt, *writer.topk(torch.log_softmax(logits, dim=-1))))
        writer.write_shard(s // per_shard, items)
    writer.finalize()
    return StoreReader(path)


def tsv_entries(store: Path) -> dict[str, tuple[int, int, int]]:
    out = {}
    for line in (store / "index.tsv").read_text().splitlines():
        u, s, o, f = line.split("\t")
        out[u] = (int(s), int(o), int(f))
    return out


def assert_lookups_equal_tsv(reader: StoreReader, store: Path) -> None:
    want = tsv_entries(store)
    assert len(reader) == len(want) and list(reader.utt_ids) == sorted(want)
    for utt, entry in want.items():
        assert utt in reader
        assert reader._entry(utt) == entry, utt
    for absent in ("", "u", "zzz", "u0-", "u0-00", "a" * 300, 7, None):
        assert absent not in reader
    assert reader.total_frames == sum(f for _, _, f in want.values())


# ----------------------------------------------------------------------------------- compact index
@pytest.mark.parametrize("version", [1, 2])
def test_compact_index_lookups_equal_index_tsv_and_older_stores_get_one(tmp_path, version, monkeypatch):
    store = tmp_path / "s"
    # ids of different lengths and a non-ASCII one: the fixed-width bytes order must be index.tsv's order
    ids = ["a", "a-1", "a-10", "a-2", "b", "bb", "ünï-1", "z" * 40, "A", "0", "a-1x", "a-"]
    reader = make_store(store, make_meta(version), ids=ids, per_shard=5)
    assert (store / "index" / "index.json").is_file()  # written by finalize
    assert_lookups_equal_tsv(reader, store)
    before = {u: reader.get_sparse(u) for u in ids}

    # an older store (index.tsv only): indexed from index.tsv on open and cached in the store
    shutil.rmtree(store / "index")
    again = StoreReader(store)
    assert_lookups_equal_tsv(again, store)
    assert (store / "index" / "index.json").is_file()
    for u in ids:
        ids2, probs2 = again.get_sparse(u)
        assert np.array_equal(ids2, before[u][0]) and np.array_equal(probs2, before[u][1])

    # a read-only store: built in memory, nothing written
    shutil.rmtree(store / "index")
    monkeypatch.setattr(compact, "writable", lambda d: False)
    ro = StoreReader(store)
    assert not (store / "index").exists()
    assert_lookups_equal_tsv(ro, store)
    assert "in memory" in ro._index.source

    # an index.tsv edited after the compact index was written: the compact index is not used (stale)
    monkeypatch.undo()
    StoreReader(store)
    lines = (store / "index.tsv").read_text().splitlines()
    (store / "index.tsv").write_text("".join(line + "\n" for line in lines if not line.startswith("bb\t")))
    edited = StoreReader(store)
    assert "bb" not in edited and len(edited) == len(ids) - 1
    assert any("'bb' is in shard-" in p and "missing from index.tsv" in p for p in store_problems(edited))


def test_index_tsv_errors_name_file_and_line(tmp_path):
    store = tmp_path / "s"
    make_store(store, make_meta(1), shards=2, per_shard=2)
    shutil.rmtree(store / "index")
    lines = (store / "index.tsv").read_text().splitlines()
    (store / "index.tsv").write_text("\n".join([lines[0], lines[0], *lines[1:]]) + "\n")
    with pytest.raises(StoreError, match=r"'u0-0' is listed twice"):
        StoreReader(store)
    (store / "index.tsv").write_text("\n".join([lines[0], "u9\t1\tx\t3", *lines[1:]]) + "\n")
    with pytest.raises(StoreError, match=r"index\.tsv:2: expected 'utt<TAB>shard<TAB>offset<TAB>frames'"):
        StoreReader(store)


def test_reader_holds_no_per_utterance_python_objects(tmp_path):
    store = tmp_path / "s"
    reader = make_store(store, make_meta(1), shards=4, per_shard=50)
    # arrays, memory-mapped from STORE/index/: no dict, no list of ids
    assert reader._index.mapped and not reader._index.ids.flags.owndata and not reader._index.frames.flags.owndata
    assert not any(isinstance(v, (dict, list, set)) and len(v) >= len(reader) for v in vars(reader).values())
    assert reader.index_nbytes() <= len(reader) * (len("u3-49") + 16)


# ----------------------------------------------------------------------------------- a list of stores
def test_store_list_reads_both_and_pads_k(tmp_path):
    a = make_store(tmp_path / "a", make_meta(2), prefix="a")
    b = make_store(tmp_path / "b", make_meta(1, k=4), prefix="b", seed=1)  # last month: format 1, top-4
    both = StoreSet([tmp_path / "a", tmp_path / "b"])
    assert len(both) == len(a) + len(b) and both.meta.k == 8
    assert "a1-2" in both and "b1-2" in both and "c1-2" not in both
    ids, probs = both.get_sparse("b1-2")
    want_ids, want_probs = b.get_sparse("b1-2")
    assert ids.shape == (want_ids.shape[0], 8)
    assert np.array_equal(ids[:, :4], want_ids) and np.array_equal(probs[:, :4], want_probs)
    assert not ids[:, 4:].any() and not probs[:, 4:].any()  # padding: id 0, probability 0
    assert np.array_equal(both.get_sparse("a0-0")[1], a.get_sparse("a0-0")[1])
    with pytest.raises(StoreError, match="'c1-2' is in none of the stores"):
        both.get_sparse("c1-2")
    one = StoreSet(str(tmp_path / "a"))  # the single-path form is one store
    assert len(one) == len(a) and one.meta == a.meta


def test_store_list_refuses_duplicates_and_differing_settings(tmp_path):
    make_store(tmp_path / "a", make_meta(2), prefix="a")
    make_store(tmp_path / "dup", make_meta(2), ids=["x0", "a1-3", "x2"], per_shard=3)
    with pytest.raises(StoreError) as info:
        StoreSet([tmp_path / "a", tmp_path / "dup"])
    msg = str(info.value)
    assert "'a1-3'" in msg and str(tmp_path / "a") in msg and str(tmp_path / "dup") in msg, msg
    for name, kw, field in [("t2", {"temperature": 2.0}, "temperature"), ("units", {"units_hash": "other"}, "units_hash"),
                            ("teacher", {"teacher_fingerprints": ["teacher-2"]}, "teacher_fingerprints"),
                            ("rate", {"frame_shift_ms": 20.0, "subsampling": 2}, "frame_shift_ms")]:
        make_store(tmp_path / name, make_meta(2, **kw), prefix=name)
        with pytest.raises(StoreError) as info:
            StoreSet([tmp_path / "a", tmp_path / name])
        msg = str(info.value)
        assert f"{field} differs" in msg and str(tmp_path / "a") in msg and str(tmp_path / name) in msg, msg
    with pytest.raises(StoreError, match="listed twice"):
        StoreSet([tmp_path / "a", tmp_path / "a"])


def test_kd_store_config_takes_a_path_or_a_list(tmp_path):
    conf = tiny_train_config(tmp_path / "c.yaml", ["d"], store="one")
    assert load_config(conf, TrainConfig).kd.stores == ["one"]
    listed = load_config(conf, TrainConfig, ["kd.store=[s1,s2]"])
    assert listed.kd.stores == ["s1", "s2"] and listed.kd.store_label == "s1,s2"
    with pytest.raises(Exception, match="kd.store"):
        load_config(conf, TrainConfig, ["kd.store=[]"])


# ----------------------------------------------------------------------------------- verify, start-up
def _verify(capsys, *args: str) -> tuple[int, str]:
    capsys.readouterr()
    rc = cli_main(["targets", "verify", "--no-progress", *map(str, args)])
    cap = capsys.readouterr()
    return rc, cap.out + cap.err


def _flip(path: Path, at: float = 0.5) -> None:
    raw = bytearray(path.read_bytes())
    raw[int(len(raw) * at)] ^= 0x10
    path.write_bytes(bytes(raw))


def test_targets_verify_hashes_every_shard_and_names_the_bad_one(tmp_path, capsys):
    make_store(tmp_path / "a", make_meta(2), prefix="a")
    make_store(tmp_path / "b", make_meta(1), prefix="b")
    rc, out = _verify(capsys, tmp_path / "a", tmp_path / "b")
    assert rc == 0 and out.startswith("OK") and "2 store(s), 24 utterances" in out and "checksums verified" in out, out
    _flip(tmp_path / "b" / "shards" / "shard-00001.bin")
    rc, out = _verify(capsys, tmp_path / "a", tmp_path / "b")
    assert rc == 1 and "FAILED" in out, out
    bad = [line for line in out.splitlines() if line.startswith("  - ")]
    assert len(bad) == 1 and "b/shards/shard-00001.bin: sha256 mismatch" in bad[0], out
    assert _verify(capsys, tmp_path / "a", tmp_path / "b", "--no-checksums")[0] == 0  # same size: only hashing sees it
    make_store(tmp_path / "dup", make_meta(2), ids=["a0-1", "z"], per_shard=2)
    rc, out = _verify(capsys, tmp_path / "a", tmp_path / "dup")
    assert rc == 1 and "'a0-1'" in out and "in both" in out, out


@pytest.fixture(scope="module")
def kd_two_stores(tmp_path_factory):
    """A teacher, a labeled set and two unlabeled sets labeled into two stores (last month's, this month's)."""
    from asr_kd.label.pipeline import LabelOptions, label_local

    root = tmp_path_factory.mktemp("two")
    teacher = make_teacher(root / "teacher")
    labeled = make_data(root / "lab", 6, with_text=True)
    unl_a = make_data(root / "unl_a", 6, prefix="a")
    unl_b = make_data(root / "unl_b", 6, prefix="b", seed=50)
    opts = LabelOptions(top_k=4, shard_size=2, progress=False)
    label_local([str(teacher)], str(unl_a), str(root / "store_a"), opts)
    label_local([str(teacher)], str(unl_b), str(root / "store_b"), LabelOptions(top_k=4, shard_size=3, format_version=1,
                                                                               top_p=1.0, progress=False))
    conf = tiny_train_config(root / "kd.yaml", [str(labeled)], unlabeled=[str(unl_a), str(unl_b)],
                             store=str(root / "store_a"), from_model=str(teacher), max_steps=3, checkpoint_every=10)
    return root, teacher, unl_a, unl_b, conf


def test_trainer_distills_from_a_list_of_stores(kd_two_stores, tmp_path, monkeypatch):
    from asr_kd.train.loop import train

    root, _, unl_a, unl_b, conf = kd_two_stores
    read_from: list[str] = []
    real = StoreReader.get_sparse

    def spy(self, utt):
        read_from.append(self.store_dir.name)
        return real(self, utt)

    monkeypatch.setattr(StoreReader, "get_sparse", spy)
    config = load_config(conf, TrainConfig, [f"kd.store=[{root / 'store_a'},{root / 'store_b'}]",
                                             "kd.unlabeled_per_labeled=4"])
    result = train(config, tmp_path / "m", progress=False)
    assert result.steps == 3
    assert {"store_a", "store_b"} <= set(read_from), read_from  # both stores fed the KD loss
    # one store alone cannot cover both unlabeled sets: the error names what is missing and the remedy
    with pytest.raises(StoreError, match=r"have no soft targets.*kd.store=\[OLD,NEW\]"):
        Trainer(load_config(conf, TrainConfig), tmp_path / "m1", progress=False)._setup()


def test_training_start_does_not_hash_the_store_but_verify_does(kd_two_stores, tmp_path, capsys):
    root, *_ , conf = kd_two_stores
    bad = tmp_path / "store_b"
    shutil.copytree(root / "store_b", bad)
    shards = sorted((bad / "shards").glob("shard-*.bin"))
    for shard in shards:  # every shard damaged, every size unchanged
        _flip(shard)
    stores = f"kd.store=[{root / 'store_a'},{bad}]"
    trainer = Trainer(load_config(conf, TrainConfig, [stores]), tmp_path / "m", progress=False)
    trainer._setup()  # start-up reads no shard bytes: the damage is not seen here
    assert len(trainer.unlabeled_ids) == 12
    rc, out = _verify(capsys, root / "store_a", bad)
    assert rc == 1 and all(f"{s}: sha256 mismatch" in out for s in shards), out
    # a truncated shard changes the size: start-up (one stat per shard) refuses it, naming it
    victim = bad / "shards" / "shard-00001.bin"
    victim.write_bytes(victim.read_bytes()[:-3])
    with pytest.raises(StoreError, match=r"shard-00001\.bin: \d+ bytes, its index says \d+ \(truncated\)"):
        Trainer(load_config(conf, TrainConfig, [stores]), tmp_path / "m2", progress=False)._setup()


def test_v2_shard_is_still_hashed_when_first_read(tmp_path):
    reader = make_store(tmp_path / "a", make_meta(2), prefix="a")
    _flip(tmp_path / "a" / "shards" / "shard-00002.bin")
    fresh = StoreReader(tmp_path / "a")  # opening reads no shard
    fresh.get_sparse("a0-0")
    with pytest.raises(StoreError, match=r"shard-00002\.bin: sha256 mismatch"):
        fresh.get_sparse("a2-0")
    assert reader is not None


# ----------------------------------------------------------------------------------- a store does not grow
def test_labeling_a_changed_data_dir_into_a_finished_store_is_refused_with_directions(tmp_path):
    from asr_kd.label.pipeline import LabelOptions, label_local

    teacher = make_teacher(tmp_path / "teacher")
    data = make_data(tmp_path / "d", 5, prefix="g")
    store = tmp_path / "store"
    opts = LabelOptions(top_k=4, shard_size=2, progress=False)
    label_local([str(teacher)], str(data), str(store), opts)
    index_before = (store / "index.tsv").read_text()
    label_local([str(teacher)], str(data), str(store), opts)  # same data: a no-op, no error
    grown = make_data(tmp_path / "d", 8, prefix="g")  # three more utterances, same dir
    with pytest.raises(StoreError) as info:
        label_local([str(teacher)], str(grown), str(store), opts)
    msg = str(info.value)
    assert f"{grown} changed since this store was made" in msg and "3 utterance(s) are not in the store" in msg, msg
    assert "kd.store=[" in msg and "asr-kd data subset --utt-list" in msg, msg
    listing = Path(re.search(r"listed in (\S+):", msg).group(1))
    assert listing.read_text().split() == ["gspk0-utt006", "gspk1-utt007", "gspk2-utt005"]
    # the store was not touched: still finalized, same index
    assert (store / "index.tsv").read_text() == index_before and len(StoreReader(store)) == 5
    listing.unlink()
