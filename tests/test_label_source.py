"""The data dir as ``asr-kd label`` reads it: streamed and compact, with the same plan, items and errors
as the in-memory ``DataDir``."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from asr_kd.data.audio import utterance_seconds
from asr_kd.data.datadir import read_data_dir
from asr_kd.data.sources import DataDirSource, IdTable
from asr_kd.errors import DataDirError
from asr_kd.label.pipeline import LabelOptions
from asr_kd.label.plan import ShardPlan, plan_only, plan_shards, shard_rows, unpack_items


def write_dir(root: Path, n: int = 40, segments: bool = False, utt2dur: bool = True) -> Path:
    """Utterances with many equal durations (ties are broken by id), some audio files on disk."""
    audio = root / "audio"
    audio.mkdir(parents=True, exist_ok=True)
    d = root / "data"
    d.mkdir()
    recs = sorted(f"rec{i:03d}" for i in range(max(n // 4, 1) if segments else n))
    for r in recs:
        sf.write(audio / f"{r}.wav", np.zeros(16000 * (1 + int(r[3:]) % 3), np.float32), 16000, subtype="PCM_16")
    (d / "wav.scp").write_text("".join(f"{r} {audio / r}.wav\n" for r in recs))
    if segments:
        utts = [(f"{r}-{j:02d}", r, 0.25 * j, 0.25 * j + 0.5 + 0.25 * (j % 2)) for r in recs for j in range(4)]
        (d / "segments").write_text("".join(f"{u} {r} {a:.2f} {b:.2f}\n" for u, r, a, b in utts))
        ids = [u for u, *_ in utts]
    else:
        ids = recs
    (d / "utt2spk").write_text("".join(f"{u} {u[:6]}\n" for u in ids))
    if utt2dur:
        (d / "utt2dur").write_text("".join(f"{u} {1.0 + (i % 3) * 0.5:.2f}\n" for i, u in enumerate(ids)))
    return d


@pytest.mark.parametrize("segments, utt2dur", [(False, True), (False, False), (True, False), (True, True)])
def test_compact_source_plans_and_items_like_the_data_dir(tmp_path, segments, utt2dur):
    d = write_dir(tmp_path, segments=segments, utt2dur=utt2dur)
    src, dd = DataDirSource(d), read_data_dir(d)
    assert list(src.utt_ids) == dd.utt_ids and len(src) == len(dd)
    want = {u: utterance_seconds(dd, u) for u in dd.utt_ids}
    assert dict(src.seconds()) == want
    for u in dd.utt_ids:
        a = dd.source(u)
        assert src.item(u) == [u, a.path, a.start, a.end, None]
    plan = plan_shards(src, 7, src.seconds())
    assert isinstance(plan, ShardPlan)
    assert [list(s) for s in plan] == plan_shards(dd, 7, want)  # (duration, id) order, ties by id
    rows = shard_rows(src, plan, range(len(plan)), src.seconds(), 4, 40000)
    items = [item for row in rows for batch in unpack_items(row["batches"]) for item in batch]
    assert sorted(i[0] for i in items) == dd.utt_ids  # every utterance planned once, with its item


@pytest.mark.parametrize("segments", [False, True])
def test_plan_keeps_consecutive_ids_together_and_sorts_each_shard_by_duration(tmp_path, segments):
    """Locality: shard s holds ids s*7 .. s*7+6 of the sorted ids (a recording's segments stay together),
    ordered by (duration, id) for batching; the compact plan and the list plan agree."""
    d = write_dir(tmp_path, segments=segments)
    src = DataDirSource(d)
    secs, ids = src.seconds(), list(src.utt_ids)
    plan = plan_shards(src, 7, secs)
    assert [sorted(s) for s in plan] == [ids[i: i + 7] for i in range(0, len(ids), 7)]
    assert all(list(s) == sorted(s, key=lambda u: (secs[u], u)) for s in plan)
    assert len({secs[u] for u in plan[0]}) > 1 and list(plan[0]) != sorted(plan[0])  # the durations did reorder it
    assert [list(s) for s in plan] == plan_shards(read_data_dir(d), 7, dict(secs))
    if segments:  # 4 segments per recording, 7 per shard: no recording spans more than two neighbouring shards
        spans = {}
        for k, shard in enumerate(plan):
            for u in shard:
                spans.setdefault(u.split("-")[0], set()).add(k)
        assert all(max(v) - min(v) <= 1 for v in spans.values())


def test_compact_source_holds_a_few_dozen_bytes_per_utterance(tmp_path):
    d = write_dir(tmp_path, n=400)
    src = DataDirSource(d)
    longest = max(len(u) for u in src.utt_ids)
    assert src.nbytes <= len(src) * (longest + 24) + 8  # id + 8 (offset) + 8 (line) + 8 (seconds)
    ids = IdTable.build(iter(["a", "bb", "c"]))
    assert ids.index("bb") == 1 and "c" in ids and "d" not in ids and ids[-1] == "c" and ids[0:2] == ["a", "bb"]
    with pytest.raises(KeyError):
        ids.index("b")


@pytest.mark.parametrize("damage, message, where", [
    (lambda d: (d / "wav.scp").write_text("b /x.wav\na /y.wav\n"), "not sorted", "wav.scp:2"),
    (lambda d: (d / "wav.scp").write_text("a /x.wav\na /y.wav\n"), "duplicate id 'a' (first on line 1)", "wav.scp:2"),
    (lambda d: (d / "wav.scp").write_text("a sox x.wav -t wav - |\n"), "pipe command", "wav.scp:1"),
    (lambda d: (d / "utt2dur").write_text("rec000 1.0\nrec002 1.0\n"), "'rec001' of wav.scp has no line here", "utt2dur:2"),
    (lambda d: (d / "utt2dur").write_text("rec000 1.0\nrec000a 2\n"), "'rec000a' is absent from wav.scp", "utt2dur:2"),
    (lambda d: (d / "utt2dur").write_text("rec000 0\n"), "duration must be > 0", "utt2dur:1"),
    (lambda d: (d / "segments").write_text("s1 nope 0 1\n"), "recording 'nope' is absent from wav.scp", "segments:1"),
])
def test_bad_data_dir_lines_are_refused_naming_file_and_line(tmp_path, damage, message, where):
    d = write_dir(tmp_path, n=3)
    damage(d)
    with pytest.raises(DataDirError, match=re.escape(message)) as err:
        DataDirSource(d)
    assert where in str(err.value)


def test_dry_run_reports_the_plan_and_writes_nothing(tmp_path):
    d = write_dir(tmp_path, n=40)
    out = tmp_path / "store"
    summary = plan_only(str(d), str(out), LabelOptions(shard_size=16))
    assert (summary.utterances, summary.shards, summary.shards_done, summary.rows) == (40, 3, 0, 3)
    assert summary.batches == 3  # 16 utterances of <= 2 s fit one teacher batch
    assert abs(summary.hours - sum(1.0 + (i % 3) * 0.5 for i in range(40)) / 3600) < 1e-9
    assert "nothing was labeled or written" in summary.line()
    assert not out.exists()
