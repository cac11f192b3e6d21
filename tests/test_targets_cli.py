"""``asr-kd targets``: stats, verify (OK and failures), Kaldi export/import round trips, plot."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from asr_kd.cli import main
from asr_kd.data.datadir import DataDir, write_data_dir
from asr_kd.targets.meta import StoreMeta
from asr_kd.targets.reader import StoreReader
from asr_kd.targets.stats import expected_frames
from asr_kd.targets.verify import store_problems
from asr_kd.targets.writer import StoreWriter

REPO = Path(__file__).resolve().parents[1]
DURATIONS = {"spk1-a": 1.0, "spk1-b": 1.52, "spk2-c": 0.73, "spk2-d": 2.2, "spk2-e": 0.5}


def make_store(path: Path, durations: dict[str, float] = DURATIONS, k: int = 4, quantization: str = "log8",
               format_version: int = 1, top_p: float = 1.0) -> Path:
    """A finalized store whose frame counts follow the Kaldi rule for ``durations`` (2 utts per shard);
    format version 1 unless asked (the byte counts below are v1's fixed records)."""
    meta = StoreMeta(units_hash="u-hash", vocab_size=30, frame_shift_ms=40.0, subsampling=4, k=k, quantization=quantization,
                     fbank={"sample_rate": 16000, "frame_length_ms": 25.0, "frame_shift_ms": 10.0, "snip_edges": True},
                     teacher_fingerprints=["t1"], teacher_weights=[1.0], format_version=format_version,
                     **({"top_p": top_p} if format_version >= 2 else {}))
    writer = StoreWriter(path, meta, shard_size_utts=2)
    rng = np.random.default_rng(0)
    utts = sorted(durations)
    for s, start in enumerate(range(0, len(utts), 2)):
        items = []
        for utt in utts[start: start + 2]:
            logits = torch.tensor(rng.normal(size=(expected_frames(durations[utt]), 30)) * 3)
            items.append((utt, *writer.topk(logits)))
        writer.write_shard(s, items)
    writer.write_rejects([("spk3-x", "unreadable: not a wav file")])
    writer.finalize()
    return path


def make_data(path: Path, durations: dict[str, float]) -> Path:
    data = DataDir(wav_scp={u: f"/audio/{u}.wav" for u in durations}, utt2spk={u: u.split("-")[0] for u in durations},
                   utt2dur=dict(durations))
    return write_data_dir(data, path)


@pytest.fixture
def store(tmp_path) -> Path:
    return make_store(tmp_path / "store")


def test_stats_json(store, capsys):
    assert main(["targets", "stats", str(store), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert list(out)[:6] == ["utterances", "frames", "hours", "bytes_per_frame", "mean_topk_mass", "kl_nats"]
    reader = StoreReader(store)
    frames = sum(expected_frames(d) for d in DURATIONS.values())
    assert out["utterances"] == 5 and out["frames"] == frames == reader.total_frames
    assert out["hours"] == pytest.approx(frames * 0.04 / 3600)
    assert out["bytes_per_frame"] == 8.0  # top-4, 1-byte ids + 1-byte codes
    assert out["bytes_per_audio_second"] == pytest.approx(200.0)
    mass = np.concatenate([reader.get_sparse(u)[1].sum(1) for u in reader.utt_ids]).mean()
    assert out["mean_topk_mass"] == pytest.approx(float(mass), rel=1e-5)
    assert out["kl_nats"] is None
    assert sum(out["entropy_histogram"]["counts"]) == frames
    assert out["rejects"] == 1


def test_stats_text(store, capsys):
    assert main(["targets", "stats", str(store)]) == 0
    text = capsys.readouterr().out
    assert "8.00 B/frame" in text and "200.0 B per audio-second" in text
    assert "entropy histogram" in text and "#" in text


def test_verify_ok_with_data_dir(store, tmp_path, capsys):
    data = make_data(tmp_path / "data", {**DURATIONS, "spk3-x": 1.0})  # spk3-x: a reject, not a problem
    assert main(["targets", "verify", str(store), "--data", str(data)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("OK ") and "checksums verified" in out and "1 rejected" in out and "+-1" in out


def test_verify_reports_id_and_frame_differences(store, tmp_path, capsys):
    durations = dict(DURATIONS)
    del durations["spk2-e"]  # stored but not in the data dir
    durations["spk4-new"] = 1.0  # in the data dir, never labeled
    durations["spk1-b"] = 3.0  # stored frames no longer match the duration
    durations["spk2-c"] = 0.73 + 0.04  # one output frame more: within tolerance
    data = make_data(tmp_path / "data", durations)
    assert main(["targets", "verify", str(store), "--data", str(data)]) == 1
    err = capsys.readouterr().err
    assert "FAILED" in err and "3 problem(s)" in err
    assert "no targets and are not in rejects.tsv: spk4-new" in err
    assert "not in " in err and "spk2-e" in err
    assert f"spk1-b (stored {expected_frames(1.52)}, expected {expected_frames(3.0)}" in err
    assert "spk2-c" not in err


def test_verify_detects_corruption(store, capsys):
    shard = store / "shards" / "shard-00001.bin"
    data = bytearray(shard.read_bytes())
    data[0] ^= 0xFF
    shard.write_bytes(bytes(data))
    assert main(["targets", "verify", str(store), "--no-checksums"]) == 0  # sizes still agree
    capsys.readouterr()
    assert main(["targets", "verify", str(store)]) == 1
    err = capsys.readouterr().err
    assert "shard-00001.bin: sha256 mismatch" in err and "delete shard-00001.json" in err


def test_verify_refuses_unfinalized_store(store, capsys):
    (store / "index.tsv").unlink()
    assert main(["targets", "verify", str(store)]) == 1
    assert "not finalized" in capsys.readouterr().err


def test_export_kaldi_reads_back_with_kaldi_io(store, tmp_path, capsys):
    os.environ.setdefault("KALDI_ROOT", "/tmp")
    import kaldi_io

    out = tmp_path / "kaldi"
    assert main(["targets", "export-kaldi", str(store), "--out", str(out)]) == 0
    reader = StoreReader(store)
    from_scp = dict(kaldi_io.read_post_scp(str(out / "post.scp")))
    from_ark = dict(kaldi_io.read_post_ark(str(out / "post.ark")))
    assert sorted(from_scp) == sorted(from_ark) == reader.utt_ids
    for utt in reader.utt_ids:
        ids, probs = reader.get_sparse(utt)
        for post in (from_scp[utt], from_ark[utt]):
            assert len(post) == ids.shape[0]
            got_ids = np.array([[i for i, _ in frame] for frame in post])
            got_p = np.array([[p for _, p in frame] for frame in post], dtype=np.float32)
            np.testing.assert_array_equal(got_ids, ids)
            np.testing.assert_array_equal(got_p, probs)


@pytest.mark.parametrize("quantization,format_version,top_p", [("log8", 1, 1.0), ("float16", 1, 1.0),
                                                                 ("log8", 2, 0.9), ("float16", 2, 0.9)])
def test_import_kaldi_round_trip(tmp_path, capsys, quantization, format_version, top_p):
    """Export then import (scp and ark) gives the same targets; v2 top-p stores export ragged frames."""
    store = make_store(tmp_path / "store", quantization=quantization, format_version=format_version, top_p=top_p)
    if format_version == 2:
        counts = np.concatenate([StoreReader(store).get_counts(u) for u in StoreReader(store).utt_ids])
        assert counts.min() < counts.max()  # really ragged
    assert main(["targets", "export-kaldi", str(store), "--out", str(tmp_path / "kaldi")]) == 0
    new = tmp_path / "imported"
    for src in ("post.scp", "post.ark"):
        target = new.with_name(f"imported-{src}")
        assert main(["targets", "import-kaldi", str(tmp_path / "kaldi" / src), "--out", str(target),
                     "--meta-from", str(store / "meta.json"), "--shard-size", "3"]) == 0
        a, b = StoreReader(store), StoreReader(target)
        assert b.utt_ids == a.utt_ids and b.meta.num_shards == 2 and b.meta.settings() == a.meta.settings()
        for utt in a.utt_ids:
            np.testing.assert_array_equal(b.get_sparse(utt)[0], a.get_sparse(utt)[0])
            np.testing.assert_array_equal(b.get_sparse(utt)[1], a.get_sparse(utt)[1])
        assert store_problems(b) == []


def test_import_kaldi_refuses_wrong_k(store, tmp_path, capsys):
    assert main(["targets", "export-kaldi", str(store), "--out", str(tmp_path / "kaldi")]) == 0
    other = make_store(tmp_path / "k8", k=8)
    rc = main(["targets", "import-kaldi", str(tmp_path / "kaldi" / "post.ark"), "--out", str(tmp_path / "bad"),
               "--meta-from", str(other)])
    assert rc == 2
    assert "frame 0: 4 (id, prob) pairs, the store keeps exactly k=8" in capsys.readouterr().err


def test_plot_writes_png_with_token_labels(store, tmp_path, capsys):
    tokens = tmp_path / "tokens.txt"
    tokens.write_text("".join(f"{s} {i}\n" for i, s in enumerate(["<blk>", "▁"] + [chr(ord("a") + i) for i in range(28)])))
    png = tmp_path / "plot.png"
    assert main(["targets", "plot", str(store), "--utt", "spk1-a", "--out", str(png), "--tokens", str(tokens)]) == 0
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    assert main(["targets", "plot", str(store), "--utt", "missing-utt", "--out", str(png)]) == 2
    assert "'missing-utt' is not in the store" in capsys.readouterr().err


def test_plot_tool_wrapper(store, tmp_path):
    png = tmp_path / "tool.png"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "plot_posteriorgram.py"), str(store), "--utt", "spk2-d",
                           "--out", str(png)], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert png.read_bytes()[:4] == b"\x89PNG"


SYMBOLS = ["<blk>", "<unk>", "▁", "'"] + [chr(ord("a") + i) for i in range(26)]  # the store's 30 units


def _tokens(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{s} {i}\n" for i, s in enumerate(SYMBOLS)), encoding="utf-8")
    return path


def _row_labels(fig) -> list[str]:
    return [t.get_text() for t in fig.axes[0].get_yticklabels()]


def test_plot_rows_are_labeled_with_unit_symbols(store, tmp_path, caplog):
    from asr_kd.targets.plot import posteriorgram_figure

    reader = StoreReader(store)
    ids, _ = reader.get_sparse("spk2-e")
    present = [SYMBOLS[u] for u in np.unique(ids)]  # only the units in the utterance's top-k, in id order
    assert 4 < len(present) < 30
    # --tokens as a file, and as a model dir (the teacher's) holding tokens.txt
    fig = posteriorgram_figure(reader, "spk2-e", tokens=_tokens(tmp_path / "teacher" / "tokens.txt"))
    assert _row_labels(fig) == present and fig.axes[0].get_ylabel() == "unit"
    assert _row_labels(posteriorgram_figure(reader, "spk2-e", tokens=tmp_path / "teacher")) == present
    # this store's units hash is a placeholder: a real tokens.txt of other units is named in a warning
    assert "differs from the store's u-hash" in caplog.text
    # no tokens given: STORE/tokens.txt when present, else ids with a hint
    assert _row_labels(posteriorgram_figure(reader, "spk2-e")) == [str(u) for u in np.unique(ids)]
    assert "--tokens" in posteriorgram_figure(reader, "spk2-e").axes[0].get_ylabel()
    _tokens(store / "tokens.txt")
    assert _row_labels(posteriorgram_figure(reader, "spk2-e")) == present


def test_plot_shows_at_most_max_rows_units_the_strongest(store, tmp_path):
    from asr_kd.targets.plot import posteriorgram_figure

    reader = StoreReader(store)
    ids, probs = reader.get_sparse("spk2-d")
    peak = {int(u): float(probs[ids == u].max()) for u in np.unique(ids)}
    strongest = sorted(sorted(peak, key=lambda u: -peak[u])[:6])
    fig = posteriorgram_figure(reader, "spk2-d", tokens=_tokens(tmp_path / "tokens.txt"), max_rows=6)
    assert _row_labels(fig) == [SYMBOLS[u] for u in strongest]
    assert f"({len(peak) - 6} weaker units not shown)" in fig.axes[0].get_ylabel()


def test_plot_title_stays_inside_the_figure(tmp_path):
    from asr_kd.targets.plot import posteriorgram_figure

    utt = "speaker0042-accent_unseen-voice_new-synthetic_corpus_utterance_000042_with_a_long_id"
    reader = StoreReader(make_store(tmp_path / "long", {utt: 0.6}))
    fig = posteriorgram_figure(reader, utt, tokens=_tokens(tmp_path / "tokens.txt"))
    renderer = fig.canvas.get_renderer()
    fig.draw(renderer)
    title = fig.axes[0].title
    box = title.get_window_extent(renderer)
    assert 0 <= box.x0 and box.x1 <= fig.bbox.x1 and box.y1 <= fig.bbox.y1, (box, fig.bbox)
    text = title.get_text()
    assert text.replace("\n", "").startswith(utt) and "top-4 soft targets" in text


def test_verify_against_student_config(store, tmp_path, capsys):
    conf = tmp_path / "student.yaml"
    conf.write_text(
        "model: {kind: lstm, d_model: 32, hidden_size: 48, num_layers: 2, frontend_channels: 8}\n"
        "fbank: {frame_shift_ms: 20.0}\n"
        f"data: {{unlabeled: [{tmp_path / 'data'}]}}\n"
        f"kd: {{store: {store}, temperature: 2.0}}\n")
    assert main(["targets", "verify", str(store), "--student-config", str(conf)]) == 1
    err = capsys.readouterr().err
    assert "output frame shift differs: store 40 ms vs config 80 ms" in err
    assert "temperature differs: store 1 vs kd.temperature 2" in err
    assert "units.from_model is not set" in err


def test_export_kaldi_ragged_frames_read_back_with_kaldi_io(tmp_path, capsys):
    os.environ.setdefault("KALDI_ROOT", "/tmp")
    import kaldi_io

    store = make_store(tmp_path / "store", format_version=2, top_p=0.9)
    out = tmp_path / "kaldi"
    assert main(["targets", "export-kaldi", str(store), "--out", str(out)]) == 0
    reader = StoreReader(store)
    from_scp = dict(kaldi_io.read_post_scp(str(out / "post.scp")))
    for utt in reader.utt_ids:
        ids, probs = reader.get_sparse(utt)
        counts = reader.get_counts(utt)
        post = from_scp[utt]
        assert [len(frame) for frame in post] == counts.tolist()  # no padding pairs exported
        for t, frame in enumerate(post):
            np.testing.assert_array_equal([i for i, _ in frame], ids[t, : counts[t]])
            np.testing.assert_array_equal(np.array([p for _, p in frame], dtype=np.float32), probs[t, : counts[t]])


def test_stats_of_a_top_p_store_report_k_histogram_and_bytes(tmp_path, capsys):
    store = make_store(tmp_path / "store", format_version=2, top_p=0.9)
    assert main(["targets", "stats", str(store), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    reader = StoreReader(store)
    counts = np.concatenate([reader.get_counts(u) for u in reader.utt_ids])
    assert out["k_histogram"] == {str(k): int((counts == k).sum()) for k in range(1, 5)}
    assert out["mean_k"] == pytest.approx(counts.mean())
    assert out["format_version"] == 2 and out["top_p"] == 0.9 and out["codec"] == "zstd"
    assert out["bytes_per_frame"] == pytest.approx(reader.payload_bytes() / counts.size)
    assert out["bytes_per_audio_second"] == pytest.approx(out["bytes_per_frame"] * 25)
    assert main(["targets", "stats", str(store)]) == 0
    text = capsys.readouterr().out
    assert "top-p 0.9, k <= 4, log8, format v2, zstd" in text and "units per frame" in text
