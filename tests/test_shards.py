"""Audio shards (``asr-kd data shard``) and labeling from them (``asr-kd label --data SHARD_DIR``).

Claims: the per-shard index agrees with the tar as ``tarfile`` reads it; a recording's segments stay in
one shard; packing is deterministic and resumes shard by shard; bad audio is listed in ``rejects.tsv``,
never dropped; the store labeled from the shards is byte-identical (every file but ``meta.json``, whose
creation time is compared apart) to the store labeled from the data dir, with Ray and without; a
truncated tar or a member that disagrees with its index stops labeling with an error naming the shard
and the member, and after the shard is rewritten the rerun completes the same store.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from asr_kd.cli import main as cli_main
from asr_kd.data.datadir import DataDir, Segment, read_data_dir, write_data_dir
from asr_kd.data.shards import ShardIntegrityError, ShardSource, write_shards
from asr_kd.errors import AsrKdError
from asr_kd.label.pipeline import LabelOptions, label, label_local
from factories import make_data, make_teacher, tone

pytestmark = pytest.mark.timeout(300)


def options(**kw) -> LabelOptions:
    base = dict(top_k=4, shard_size=5, actors=2, actor_num_cpus=0.5, read_batch_size=4, progress=False)
    base.update(kw)
    return LabelOptions(**base)


def store_files(store: Path) -> dict[str, bytes]:
    """Every file of a store but ``meta.json`` (it holds a creation time)."""
    return {p.relative_to(store).as_posix(): p.read_bytes() for p in sorted(store.rglob("*"))
            if p.is_file() and p.name != "meta.json"}


def assert_same_store(a: Path, b: Path) -> None:
    fa, fb = store_files(a), store_files(b)
    assert sorted(fa) == sorted(fb)
    differ = [name for name in fa if fa[name] != fb[name]]
    assert not differ, f"files differ between {a} and {b}: {differ}"
    ma, mb = (json.loads((s / "meta.json").read_text()) for s in (a, b))
    ma.pop("created", None), mb.pop("created", None)
    assert ma == mb


def whole_file_corpus(root: Path) -> Path:
    """10 tone wavs plus a FLAC, a float WAV, an 8 kHz wav (resampled when labeled) and three bad files."""
    data = make_data(root, 10)
    d = read_data_dir(data)
    audio = root / "audio"
    wav_scp, utt2spk = dict(d.wav_scp), dict(d.utt2spk)

    def add(utt: str, path: Path) -> None:
        wav_scp[utt], utt2spk[utt] = str(path), "extra"

    sf.write(audio / "flac.flac", tone(0.9, 50), 16000, subtype="PCM_16")
    add("extra-flac", audio / "flac.flac")
    sf.write(audio / "float.wav", tone(0.7, 51), 16000, subtype="FLOAT")
    add("extra-float", audio / "float.wav")
    sf.write(audio / "rate8k.wav", tone(0.8, 52, sr=8000), 8000, subtype="PCM_16")
    add("extra-rate8k", audio / "rate8k.wav")
    add("bad-missing", audio / "does-not-exist.wav")
    (audio / "corrupt.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunkjunkjunk" * 10)
    add("bad-corrupt", audio / "corrupt.wav")
    nan = tone(0.5, 53)
    nan[100:200] = np.nan
    sf.write(audio / "nan.wav", nan, 16000, subtype="FLOAT")
    add("bad-nan", audio / "nan.wav")
    write_data_dir(DataDir(wav_scp=wav_scp, utt2spk=utt2spk), data)
    return data


def segments_corpus(root: Path) -> Path:
    """Two recordings (16-bit WAV, 3 s; 24-bit FLAC, 2.5 s) cut into 3 segments each (times exact in
    binary), plus a segment that ends 2 s after its recording (rejected as segment_out_of_range)."""
    audio = root / "audio"
    audio.mkdir(parents=True, exist_ok=True)
    sf.write(audio / "recA.wav", tone(3.0, 60), 16000, subtype="PCM_16")
    sf.write(audio / "recB.flac", tone(2.5, 61), 16000, subtype="PCM_24")
    spans = {"recA": [(0.0, 0.75), (0.75, 1.875), (2.0, 3.0)], "recB": [(0.25, 1.0), (1.0, 1.625), (1.75, 2.5)]}
    segments = {f"{rec}-{i}": Segment(rec, a, b) for rec, ss in spans.items() for i, (a, b) in enumerate(ss)}
    segments["recB-late"] = Segment("recB", 2.0, 4.5)
    data = DataDir(wav_scp={"recA": str(audio / "recA.wav"), "recB": str(audio / "recB.flac")},
                   utt2spk={u: "s" for u in segments}, segments=segments)
    return write_data_dir(data, root / "data")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    teacher = make_teacher(root / "teacher")
    data = whole_file_corpus(root / "whole")
    seg = segments_corpus(root / "seg")
    return root, teacher, data, seg


@pytest.fixture(scope="module")
def reference(corpus):
    """Stores labeled from the data dirs with the plain loop (the references for every equality)."""
    root, teacher, data, seg = corpus
    label_local([str(teacher)], str(data), str(root / "store_data"), options())
    label_local([str(teacher)], str(seg), str(root / "store_seg"), options())
    return root / "store_data", root / "store_seg"


def test_index_agrees_with_the_tar_and_members_hold_the_audio(corpus, tmp_path):
    root, _, data, seg = corpus
    out = tmp_path / "sh"
    summary = write_shards(data, out, shard_size=4, progress=False)
    assert (summary.utterances, summary.rejects, summary.shards_written) == (13, 3, 4)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["format"] == "asr-kd-audio-shards" and manifest["format_version"] == 1
    assert manifest["source"] == str(Path(data).resolve()) and manifest["utts"] == 13 and manifest["rejects"] == 3
    d = read_data_dir(data)
    seen = []
    for entry in manifest["shards"]:
        idx = json.loads((out / entry["index"]).read_text())
        with tarfile.open(out / entry["tar"]) as tf:
            infos = tf.getmembers()
            assert [i.name for i in infos] == [m["member"] for m in idx["members"]]  # tar order = index order
            for info, m in zip(infos, idx["members"]):
                assert (info.offset_data, info.size, info.mtime, info.uid) == (m["offset"], m["size"], 0, 0)
                payload = tf.extractfile(info).read()
                assert __import__("hashlib").sha256(payload).hexdigest() == m["sha256"]
                if m["utt"] in ("extra-float", "extra-rate8k") or m["utt"].startswith("spk"):
                    assert payload == Path(d.wav_scp[m["utt"]]).read_bytes()  # whole WAV: the original bytes
                samples, rate = sf.read(io.BytesIO(payload))
                assert rate == m["sample_rate"] and len(samples) == m["num_samples"]
        members = [m["utt"] for m in idx["members"]]
        assert members == sorted(members)
        seen += members + [r["utt"] for r in idx["rejects"]]
    assert sorted(seen) == d.utt_ids  # nothing dropped, nothing twice
    rejects = dict(line.split("\t") for line in (out / "rejects.tsv").read_text().splitlines())
    assert sorted(rejects) == ["bad-corrupt", "bad-missing", "bad-nan"]
    assert rejects["bad-missing"].startswith("missing:") and rejects["bad-corrupt"].startswith("unreadable:")
    assert rejects["bad-nan"].startswith("nan_or_inf:")
    # a segment is re-encoded losslessly: FLAC of the recording's 24-bit samples of exactly that span
    seg_out = tmp_path / "seg"
    write_shards(seg, seg_out, shard_size=10, progress=False)
    src = ShardSource(seg_out)
    from asr_kd.data.shards import member_array

    rec, rate = sf.read(read_data_dir(seg).wav_scp["recB"], dtype="float32")
    got, got_rate = member_array(src.item("recB-1")[4])
    assert src.item("recB-1")[4]["member"] == "recB-1.flac" and got_rate == rate == 16000
    np.testing.assert_array_equal(got, rec[16000:26000])
    assert src.seconds()["recB-1"] == 0.625


def test_shard_source_is_compact_and_its_items_are_the_index_entries(corpus, tmp_path):
    """The driver holds arrays, not a dict per utterance: ids and member names as blobs plus ~76 bytes; each
    item, built when asked, is the index's entry (or the packing's reject reason)."""
    _, _, data, _ = corpus
    out = tmp_path / "sh"
    write_shards(data, out, shard_size=4, progress=False)
    src = ShardSource(out)
    entries = {}
    for p in sorted(out.glob("*.index.json")):
        idx = json.loads(p.read_text())
        for m in idx["members"]:
            entries[m["utt"]] = ("member", str(out / idx["tar"]), m)
        for r in idx["rejects"]:
            entries[r["utt"]] = ("reject", None, r)
    assert list(src.utt_ids) == sorted(entries) and len(src) == 16
    for utt, (kind, tar, e) in entries.items():
        item = src.item(utt)
        assert src.seconds()[utt] == e["seconds"]
        if kind == "reject":
            assert item == [utt, None, None, None, {"error": e["reason"]}]
        else:
            assert item == [utt, f"{tar}:{e['member']}", None, None, {"tar": tar, "member": e["member"], "offset": e["offset"],
                                                                      "size": e["size"], "sha256": e["sha256"]}]
    longest = max(len(u) for u in entries) + max(len(e["member"]) for _, _, e in entries.values() if "member" in e)
    assert src.nbytes <= len(src) * (longest + 76) + 16


def test_shard_source_sorts_shards_listed_out_of_order_and_refuses_an_utterance_in_two(corpus, tmp_path):
    _, _, data, _ = corpus
    out = tmp_path / "sh"
    write_shards(data, out, shard_size=4, progress=False)
    in_order = ShardSource(out)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["shards"].reverse()  # (a hand-made dir, or shards from another tool)
    (out / "manifest.json").write_text(json.dumps(manifest))
    reordered = ShardSource(out)
    assert list(reordered.utt_ids) == list(in_order.utt_ids)
    assert [reordered.item(u) for u in in_order.utt_ids] == [in_order.item(u) for u in in_order.utt_ids]
    assert list(reordered.seconds().values()) == list(in_order.seconds().values())
    first, last = (json.loads((out / manifest["shards"][i]["index"]).read_text()) for i in (-1, 0))
    dup = dict(first["members"][0])  # the first shard's first utterance, also listed by the last shard
    last["members"].append(dup)
    (out / manifest["shards"][0]["index"]).write_text(json.dumps(last))
    manifest["utts"] += 1
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ShardIntegrityError, match=rf"utterance '{dup['utt']}' is in two shards of .*shard-00000.*shard-0000"):
        ShardSource(out)


def test_recordings_stay_in_one_shard(corpus, tmp_path):
    _, _, _, seg = corpus
    write_shards(seg, tmp_path / "a", shard_size=2, progress=False)  # a recording (3-4 segments) exceeds 2: one shard each
    idx = [json.loads(p.read_text()) for p in sorted((tmp_path / "a").glob("*.index.json"))]
    assert [sorted([m["utt"] for m in i["members"]] + [r["utt"] for r in i["rejects"]]) for i in idx] == [
        ["recA-0", "recA-1", "recA-2"], ["recB-0", "recB-1", "recB-2", "recB-late"]]
    assert idx[1]["rejects"][0]["utt"] == "recB-late" and idx[1]["rejects"][0]["reason"].startswith("segment_out_of_range")
    write_shards(seg, tmp_path / "b", shard_seconds=100.0, progress=False)  # both recordings fit one shard
    assert len(list((tmp_path / "b").glob("*.tar"))) == 1


def test_packing_is_deterministic_and_resumes_shard_by_shard(corpus, tmp_path):
    _, _, data, _ = corpus
    write_shards(data, tmp_path / "a", shard_size=4, progress=False)
    write_shards(data, tmp_path / "b", shard_size=4, progress=False)
    files_a = {p.name: p.read_bytes() for p in (tmp_path / "a").iterdir()}
    files_b = {p.name: p.read_bytes() for p in (tmp_path / "b").iterdir()}
    files_a.pop("manifest.json"), files_b.pop("manifest.json")  # names its source (the same here) and nothing else
    assert files_a == files_b
    # an interrupted run: shard 2 has no index (only its tar, or a half-written .tmp), no manifest
    (tmp_path / "b" / "shard-000002.index.json").unlink()
    (tmp_path / "b" / "shard-000003.index.json").unlink()
    (tmp_path / "b" / "shard-000003.tar").rename(tmp_path / "b" / "shard-000003.tar.tmp")
    (tmp_path / "b" / "manifest.json").unlink()
    from asr_kd.data.sources import open_source

    with pytest.raises(AsrKdError, match="without manifest.json"):  # labeling refuses an unfinished shard dir
        open_source(tmp_path / "b")
    before = (tmp_path / "b" / "shard-000000.tar").stat().st_mtime_ns
    summary = write_shards(data, tmp_path / "b", shard_size=4, progress=False)
    assert (summary.shards_written, summary.shards_skipped) == (2, 2)
    assert (tmp_path / "b" / "shard-000000.tar").stat().st_mtime_ns == before  # a finished shard is not rewritten
    files_b = {p.name: p.read_bytes() for p in (tmp_path / "b").iterdir() if p.name != "manifest.json"}
    assert files_a == files_b  # the .tmp was replaced, not left behind
    # another plan for the same dir is refused instead of mixing two plans
    with pytest.raises(AsrKdError, match="other utterances than the plan"):
        write_shards(data, tmp_path / "b", shard_size=3, progress=False)
    # a dir that holds something else is not written into
    with pytest.raises(AsrKdError, match="is not an audio shard dir"):
        write_shards(data, data, progress=False)


def test_store_from_shards_equals_store_from_data_dir(corpus, reference, tmp_path):
    """Whole files (WAV, FLAC, float WAV, an 8 kHz file, three bad files) and segments of a 16- and a
    24-bit recording: the stores are byte-identical, rejects included."""
    root, teacher, data, seg = corpus
    store_data, store_seg = reference
    for src, ref, size in ((data, store_data, 4), (seg, store_seg, 2)):
        shards = tmp_path / f"sh_{ref.name}"
        write_shards(src, shards, shard_size=size, progress=False)
        out = tmp_path / f"store_{ref.name}"
        s = label_local([str(teacher)], str(shards), str(out), options())
        assert s.utterances > 0
        assert_same_store(out, ref)
    rejects = (store_data / "rejects.tsv").read_text()
    assert "bad-missing\tmissing:" in rejects and "bad-nan\tnan_or_inf:" in rejects


def test_ray_store_from_shards_equals_store_from_data_dir(corpus, reference, tmp_path, ray_cluster):
    root, teacher, data, _ = corpus
    write_shards(data, tmp_path / "sh", shard_size=5, progress=False)
    s = label([str(teacher)], str(tmp_path / "sh"), str(tmp_path / "store"), options(actors=1, actor_num_cpus=1.0))
    assert (s.utterances, s.rejects) == (13, 3)
    assert_same_store(tmp_path / "store", reference[0])


def test_truncated_tar_is_refused_naming_the_shard(corpus, tmp_path, capsys):
    _, teacher, data, _ = corpus
    shards = tmp_path / "sh"
    write_shards(data, shards, shard_size=4, progress=False)
    tar = shards / "shard-000001.tar"
    tar.write_bytes(tar.read_bytes()[:5000])
    with pytest.raises(ShardIntegrityError, match=r"shard-000001\.tar: 5000 bytes, its index shard-000001\.index\.json says"):
        label_local([str(teacher)], str(shards), str(tmp_path / "store"), options())
    rc = cli_main(["label", "--model", str(teacher), "--data", str(shards), "--out", str(tmp_path / "store2"),
                   "--local", "--no-progress"])
    assert rc == 2 and "shard-000001.tar" in capsys.readouterr().err
    assert not (tmp_path / "store2").exists()  # refused before anything was written


@pytest.mark.parametrize("damage, message", [
    ("flip", r"member spk0-utt003\.wav: sha256 .* differs from the index"),
    ("size", r"member spk0-utt003\.wav: the tar header .* the index does not match its tar"),
])
def test_member_that_disagrees_with_its_index_stops_the_run_then_rerun_completes(corpus, reference, tmp_path, damage, message):
    _, teacher, data, _ = corpus
    shards = tmp_path / "sh"
    write_shards(data, shards, shard_size=4, progress=False)
    ipath = next(p for p in sorted(shards.glob("*.index.json")) if '"spk0-utt003"' in p.read_text())
    idx = json.loads(ipath.read_text())
    m = next(m for m in idx["members"] if m["utt"] == "spk0-utt003")
    tar = shards / idx["tar"]
    if damage == "flip":  # same size: only the checksum can tell
        raw = bytearray(tar.read_bytes())
        raw[m["offset"] + 100] ^= 0x5A
        tar.write_bytes(bytes(raw))
    else:  # the index points at the right place but claims another size
        m["size"] -= 2
        ipath.write_text(json.dumps(idx))
    with pytest.raises(AsrKdError, match=message) as err:
        label_local([str(teacher)], str(shards), str(tmp_path / "store"), options(shard_size=5))
    assert str(shards / idx["tar"]) in str(err.value)
    # rewrite the damaged shard (delete it and its index, pack again), rerun: the store completes, equal to the reference
    ipath.unlink()
    tar.unlink()
    write_shards(data, shards, shard_size=4, progress=False)
    label_local([str(teacher)], str(shards), str(tmp_path / "store"), options(shard_size=5))
    assert_same_store(tmp_path / "store", reference[0])


def test_ray_run_stops_with_the_shard_and_member_named(corpus, tmp_path, ray_cluster):
    from asr_kd.label import pipeline

    _, teacher, data, _ = corpus
    shards = tmp_path / "sh"
    write_shards(data, shards, shard_size=4, progress=False)
    idx = json.loads((shards / "shard-000002.index.json").read_text())
    m = idx["members"][0]
    raw = bytearray((shards / idx["tar"]).read_bytes())
    raw[m["offset"] + 50] ^= 0xFF
    (shards / idx["tar"]).write_bytes(bytes(raw))
    with pytest.raises(AsrKdError, match=rf"shard-000002\.tar, member {m['member']}: sha256"):
        pipeline.label([str(teacher)], str(shards), str(tmp_path / "store"), options(actors=1, actor_num_cpus=1.0))


def test_cli_data_shard_then_label(corpus, reference, tmp_path, capsys):
    _, teacher, _, seg = corpus
    assert cli_main(["data", "shard", str(seg), "--out", str(tmp_path / "sh"), "--shard-seconds", "3", "--no-progress"]) == 0
    line = capsys.readouterr().out
    assert "6 utterances" in line and "1 rejects" in line and "rejects.tsv" in line
    assert cli_main(["label", "--model", str(teacher), "--data", str(tmp_path / "sh"), "--out", str(tmp_path / "store"),
                     "--local", "--no-progress", "--top-k", "4", "--shard-size", "5"]) == 0
    label_local([str(teacher)], str(seg), str(tmp_path / "ref"), options(read_batch_size=16))  # the CLI's batches
    assert_same_store(tmp_path / "store", tmp_path / "ref")


def test_pipe_entries_run_once_when_packing(corpus, tmp_path):
    """With --allow-pipes a 'command |' entry runs while packing (its output re-encoded as FLAC), and the
    shards label to the store of the data dir labeled with --allow-pipes; labeling the shards runs nothing."""
    _, teacher, data, _ = corpus
    d = read_data_dir(data)
    keep = [u for u in d.utt_ids if u.startswith("spk")][:4]
    sub = d.subset(keep)
    sub.wav_scp[keep[0]] = f"cat {sub.wav_scp[keep[0]]} |"
    piped = write_data_dir(sub, tmp_path / "piped")
    write_shards(piped, tmp_path / "sh", shard_size=10, allow_pipes=True, progress=False)
    idx = json.loads((tmp_path / "sh" / "shard-000000.index.json").read_text())
    assert [m["member"] for m in idx["members"]][0] == f"{keep[0]}.flac" and not idx["rejects"]
    label_local([str(teacher)], str(piped), str(tmp_path / "ref"), options(allow_pipes=True))
    label_local([str(teacher)], str(tmp_path / "sh"), str(tmp_path / "store"), options())
    assert_same_store(tmp_path / "store", tmp_path / "ref")


def test_targets_verify_and_stats_take_the_shard_dir(corpus, reference, tmp_path, capsys):
    """'asr-kd targets verify STORE --data SHARD_DIR' compares ids and frame counts with the shard index;
    'targets stats --teacher --data SHARD_DIR' reruns the teacher on the shards' audio (KL ~ quantization)."""
    _, teacher, data, _ = corpus
    write_shards(data, tmp_path / "sh", shard_size=4, progress=False)
    assert cli_main(["targets", "verify", str(reference[0]), "--data", str(tmp_path / "sh")]) == 0
    assert "frame counts match" in capsys.readouterr().out
    assert cli_main(["targets", "stats", str(reference[0]), "--json", "--teacher", str(teacher), "--data",
                     str(tmp_path / "sh"), "--sample", "5"]) == 0
    kl = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["kl_nats"]
    assert 0 <= kl < 0.5
    # a shard dir of other utterances is a mismatch
    d = read_data_dir(data)
    write_shards(write_data_dir(d.subset(d.utt_ids[:5]), tmp_path / "small"), tmp_path / "sh_small", progress=False)
    assert cli_main(["targets", "verify", str(reference[0]), "--data", str(tmp_path / "sh_small")]) == 1
    assert "stored utterance(s) are not in" in capsys.readouterr().err
