"""lhotse CutSet manifests as labeling input (``asr-kd label --data cuts.jsonl.gz``).

Claims: a CutSet built by lhotse from the same recordings and spans as a data dir gives the same store
(shards, index, 1-best texts byte-identical; ``rejects.tsv`` the same ids and reason kinds — a cut's
reason names the cut's span, a segment's the segments file), with Ray and without; cuts that cannot be
labeled (recording file missing, supervision outside the cut, multi-channel, beyond the recording,
mixed) are rejected one per cut with the cut id and a reason, and the rest is labeled; a recording
that only lhotse can read (a lhotse resampling transform) is read with ``cut.load_audio()``.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from asr_kd.data.datadir import read_data_dir, write_data_dir
from asr_kd.label.pipeline import label, label_local
from asr_kd.targets.reader import StoreReader
from factories import make_teacher, tone
from test_shards import options, segments_corpus, store_files, whole_file_corpus

lhotse = pytest.importorskip("lhotse")
from lhotse import CutSet, MonoCut, Recording, SupervisionSegment  # noqa: E402
from lhotse.audio import AudioSource  # noqa: E402

pytestmark = pytest.mark.timeout(300)


def cuts_of(data_dir: Path) -> CutSet:
    """The lhotse equivalent of a data dir: a Recording per wav.scp line (``Recording.from_file``), a
    MonoCut per utterance (segment span, or the whole recording) with one supervision covering it."""
    d = read_data_dir(data_dir)
    recs = {rec: Recording.from_file(path, recording_id=rec) for rec, path in d.wav_scp.items()}
    cuts = []
    for utt in d.utt_ids:
        if d.segments is not None:
            seg = d.segments[utt]
            rec, start, duration = recs[seg.recording], seg.start, seg.end - seg.start
        else:
            rec, start, duration = recs[utt], 0.0, recs[utt].duration
        sup = SupervisionSegment(id=utt, recording_id=rec.id, start=0.0, duration=duration, speaker=d.utt2spk[utt])
        cuts.append(MonoCut(id=utt, start=start, duration=duration, channel=0, recording=rec, supervisions=[sup]))
    return CutSet.from_cuts(cuts)


def assert_same_store_but_reject_texts(a: Path, b: Path) -> None:
    fa, fb = store_files(a), store_files(b)
    ra, rb = fa.pop("rejects.tsv", b""), fb.pop("rejects.tsv", b"")
    assert sorted(fa) == sorted(fb)
    differ = [name for name in fa if fa[name] != fb[name]]
    assert not differ, f"files differ between {a} and {b}: {differ}"

    def kinds(raw: bytes) -> dict[str, str]:
        return {u: r.split(":")[0] for u, r in (line.split("\t", 1) for line in raw.decode().splitlines())}

    assert kinds(ra) == kinds(rb)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("lhotse_in")
    teacher = make_teacher(root / "teacher")
    seg = segments_corpus(root / "seg")
    whole = whole_file_corpus(root / "whole")
    # lhotse cannot make a Recording of a missing or corrupt file: the equivalent data dir has none
    # (a manifest whose file went missing later is tested below)
    d = read_data_dir(whole)
    whole = write_data_dir(d.subset(u for u in d.utt_ids if u not in ("bad-missing", "bad-corrupt")), root / "whole_ok")
    label_local([str(teacher)], str(seg), str(root / "store_seg"), options())
    label_local([str(teacher)], str(whole), str(root / "store_whole"), options())
    cuts_of(seg).to_file(root / "seg_cuts.jsonl.gz")
    cuts_of(whole).to_file(root / "whole_cuts.jsonl.gz")
    return root, teacher


@pytest.mark.parametrize("name", ["seg", "whole"])
def test_store_from_cuts_equals_store_from_data_dir(setup, tmp_path, name):
    root, teacher = setup
    s = label_local([str(teacher)], str(root / f"{name}_cuts.jsonl.gz"), str(tmp_path / "store"), options())
    assert s.utterances > 0
    assert_same_store_but_reject_texts(tmp_path / "store", root / f"store_{name}")
    rejects = (tmp_path / "store" / "rejects.tsv").read_text()
    if name == "seg":  # a cut reject names the cut's span and its recording
        assert "recB-late\tsegment_out_of_range: cut spans [2.000, 4.500] s of recording 'recB', which is 2.500 s long" in rejects
    else:
        assert "bad-nan\tnan_or_inf: 100 of 8000 samples are NaN or inf" in rejects


def test_json_manifest_read_eagerly_gives_the_same_store(setup, tmp_path):
    root, teacher = setup
    CutSet.from_file(root / "seg_cuts.jsonl.gz").to_file(tmp_path / "cuts.json")
    label_local([str(teacher)], str(tmp_path / "cuts.json"), str(tmp_path / "store"), options())
    assert_same_store_but_reject_texts(tmp_path / "store", root / "store_seg")


def test_ray_store_from_cuts_equals_store_from_data_dir(setup, tmp_path, ray_cluster):
    root, teacher = setup
    s = label([str(teacher)], str(root / "seg_cuts.jsonl.gz"), str(tmp_path / "store"), options(actors=1, actor_num_cpus=1.0))
    assert (s.utterances, s.rejects) == (6, 1)
    assert_same_store_but_reject_texts(tmp_path / "store", root / "store_seg")


def test_bad_cuts_are_rejected_per_cut_and_the_rest_is_labeled(setup, tmp_path):
    root, teacher = setup
    audio = tmp_path / "audio"
    audio.mkdir()
    sf.write(audio / "good.wav", tone(1.5, 70), 16000, subtype="PCM_16")
    sf.write(audio / "stereo.wav", np.stack([tone(1.0, 71), tone(1.0, 72)], axis=1), 16000, subtype="PCM_16")
    good = Recording.from_file(audio / "good.wav", recording_id="good")
    stereo = Recording.from_file(audio / "stereo.wav", recording_id="stereo")
    missing = Recording(id="gone", sources=[AudioSource(type="file", channels=[0], source=str(audio / "gone.wav"))],
                        sampling_rate=16000, num_samples=16000, duration=1.0)

    def cut(cid, rec, start, duration, sup=(0.0, None), channel=0):
        s = SupervisionSegment(id=f"{cid}-sup", recording_id=rec.id, start=sup[0],
                               duration=duration if sup[1] is None else sup[1])
        return MonoCut(id=cid, start=start, duration=duration, channel=channel, recording=rec, supervisions=[s])

    cuts = [
        cut("ok-a", good, 0.0, 1.0),
        cut("ok-b", good, 0.5, 1.0),
        cut("ok-lhotse-8k", good.resample(8000), 0.25, 1.0),  # a lhotse transform: read by lhotse, resampled back
        cut("bad-missing-file", missing, 0.0, 1.0),
        cut("bad-sup-range", good, 0.0, 1.0, sup=(0.5, 1.0)),  # supervision ends 0.5 s after the cut
        cut("bad-mono-of-stereo", stereo, 0.0, 1.0),
        cut("bad-beyond-recording", good, 1.0, 1.5),  # ends 1 s after the 1.5 s recording
    ]
    multi = stereo.to_cut().with_id("bad-multicut")
    mixed = cut("ok-a", good, 0.0, 1.0).pad(duration=2.0).with_id("bad-mixed")
    path = tmp_path / "cuts.jsonl.gz"
    CutSet.from_cuts(cuts + [multi, mixed]).to_file(path)
    s = label_local([str(teacher)], str(path), str(tmp_path / "store"), options())
    assert (s.utterances, s.rejects) == (3, 6)
    rejects = dict(line.split("\t", 1) for line in (tmp_path / "store" / "rejects.tsv").read_text().splitlines())
    assert rejects["bad-missing-file"].startswith("missing: audio file not found")
    assert rejects["bad-sup-range"] == ("supervision_out_of_range: supervision 'bad-sup-range-sup' spans [0.500, 1.500] s "
                                        "of the cut, outside the cut's [0, 1.000] s")
    assert rejects["bad-mono-of-stereo"].startswith("multi_channel: recording 'stereo' has 2 channels")
    assert rejects["bad-multicut"].startswith("multi_channel: cut is a MultiCut of channels [0, 1]")
    assert rejects["bad-beyond-recording"].startswith("segment_out_of_range: cut spans [1.000, 2.500] s of recording 'good'")
    assert rejects["bad-mixed"].startswith("unsupported_cut: cut is a MixedCut")
    reader = StoreReader(tmp_path / "store")
    assert reader.utt_ids == ["ok-a", "ok-b", "ok-lhotse-8k"]
    # the lhotse-read cut went through lhotse (its rows say so), and 1 s of audio gave 25 frames of 40 ms
    with gzip.open(path, "rt") as fh:
        row = next(json.loads(line) for line in fh if '"ok-lhotse-8k"' in line)
    assert row["recording"]["transforms"], "the test cut must carry a lhotse transform"
    assert abs(reader.num_frames("ok-lhotse-8k") - reader.num_frames("ok-b")) <= 1


def test_a_cut_read_by_lhotse_gives_lhotse_samples(setup, tmp_path):
    """``load_cut_audio`` returns what ``cut.load_audio()`` returns (resampled to the teacher's rate only
    when the cut's rate differs), and names the cut when lhotse fails."""
    from asr_kd.data.lhotse_input import cut_item, load_cut_audio
    from asr_kd.errors import AudioError

    sf.write(tmp_path / "a.wav", tone(1.0, 80), 16000, subtype="PCM_16")
    rec = Recording.from_file(tmp_path / "a.wav", recording_id="a")
    c = MonoCut(id="c", start=0.25, duration=0.5, channel=0, recording=rec.perturb_volume(0.5))
    item, seconds = cut_item(c)
    assert seconds == 0.5 and "cut" in item[4]
    wave = load_cut_audio(item[4]["cut"], "c", 16000, None)
    np.testing.assert_array_equal(wave, c.load_audio()[0])
    (tmp_path / "a.wav").unlink()
    with pytest.raises(AudioError, match="utterance 'c', file \"cut 'c'\"") as err:
        load_cut_audio(item[4]["cut"], "c", 16000, None)
    assert err.value.reason in ("missing", "unreadable")


def test_unreadable_or_missing_manifest_is_a_clear_error(setup, tmp_path):
    from asr_kd.errors import AsrKdError

    root, teacher = setup
    bad = tmp_path / "cuts.jsonl.gz"
    with gzip.open(bad, "wt") as fh:
        fh.write('{"id": "x", "this is": "not a cut"}\n')
    with pytest.raises(AsrKdError, match=r"cuts\.jsonl\.gz: not a readable lhotse CutSet manifest"):
        label_local([str(teacher)], str(bad), str(tmp_path / "store"), options())
    with pytest.raises(AsrKdError, match=r"nope\.jsonl\.gz: lhotse CutSet manifest not found"):
        label_local([str(teacher)], str(tmp_path / "nope.jsonl.gz"), str(tmp_path / "store"), options())
    assert not (tmp_path / "store").exists()
