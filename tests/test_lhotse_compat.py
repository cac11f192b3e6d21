"""Our data dirs load in lhotse (``lhotse.kaldi.load_kaldi_data_dir``) with the same content."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import soundfile as sf

from asr_kd.data.datadir import DataDir, Segment, read_data_dir, write_data_dir
from data_prep.librilight import SegmentOptions, prepare_librilight
from data_prep.synth.generate import generate_corpus
from data_prep.synth.profiles import TINY, SplitSizes, VoiceCounts

lhotse_kaldi = pytest.importorskip("lhotse.kaldi")

MICRO = TINY.model_copy(update={
    "name": "micro",
    "sizes": SplitSizes(train_labeled=6, train_unlabeled=6, dev=2, test=4),
    "voices": VoiceCounts(labeled=3, unlabeled_new=1, unlabeled_accent=1, test_seen=1, test_new=1,
                          test_unlabeled_accent=1, test_unseen_accent=1),
})


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    out = tmp_path_factory.mktemp("lhotse") / "data"
    generate_corpus(out, MICRO, seed=2, jobs=1, progress=False)
    return out


def test_labeled_dir_loads_with_text(synth):
    ours = read_data_dir(synth / "train_labeled")
    recs, sups, _ = lhotse_kaldi.load_kaldi_data_dir(synth / "train_labeled", sampling_rate=16000)
    assert sorted(recs.ids) == ours.utt_ids
    assert len(sups) == len(ours)
    for sup in sups:
        assert sup.text == ours.text[sup.id]
        assert sup.speaker == ours.utt2spk[sup.id]
        assert sup.start == 0.0
        assert sup.duration == pytest.approx(ours.utt2dur[sup.id], abs=1e-3)
        # lhotse derives num_samples from a duration rounded to 1 ms (16 samples)
        assert abs(recs[sup.recording_id].num_samples - sf.info(ours.wav_scp[sup.id]).frames) <= 16


def test_unlabeled_dir_loads_without_text(synth):
    ours = read_data_dir(synth / "train_unlabeled")
    recs, sups, _ = lhotse_kaldi.load_kaldi_data_dir(synth / "train_unlabeled", sampling_rate=16000)
    assert len(recs) == len(ours) == MICRO.sizes.train_unlabeled
    assert all(s.text is None for s in sups)
    assert sum(r.duration for r in recs) == pytest.approx(ours.total_seconds(), abs=0.01)


def _long_recording(synth, tmp_path):
    """A LibriLight-style long recording made of the labeled synth wavs with 2 s pauses; returns its
    path and the ``(start, end, text)`` of each wav inside it (seconds)."""
    labeled = read_data_dir(synth / "train_labeled")
    parts, spans, t = [np.zeros(32000, np.float32)], [], 2.0
    for utt in labeled.utt_ids:
        w = sf.read(labeled.wav_scp[utt], dtype="float32")[0]
        spans.append((t, t + len(w) / 16000, labeled.text[utt]))
        parts += [w, np.zeros(32000, np.float32)]
        t += len(w) / 16000 + 2.0
    book = tmp_path / "ll" / "small" / "42" / "some_book"
    book.mkdir(parents=True)
    path = book / "chapter_01.flac"
    sf.write(path, np.concatenate(parts), 16000, subtype="PCM_16")
    return path, spans


def test_labeled_segments_dir_loads(synth, tmp_path):
    path, spans = _long_recording(synth, tmp_path)
    segs = {f"42-rec-{i:03d}": Segment("42-rec", round(a, 3), round(b, 3)) for i, (a, b, _) in enumerate(spans)}
    data = DataDir(wav_scp={"42-rec": str(path)}, utt2spk={u: "42" for u in segs}, segments=segs,
                   text={f"42-rec-{i:03d}": t for i, (_, _, t) in enumerate(spans)},
                   utt2dur={u: s.end - s.start for u, s in segs.items()})
    write_data_dir(data, tmp_path / "seg")
    ours = read_data_dir(tmp_path / "seg")
    recs, sups, _ = lhotse_kaldi.load_kaldi_data_dir(tmp_path / "seg", sampling_rate=16000)
    assert len(recs) == 1 and recs[0].duration == pytest.approx(sf.info(str(path)).duration, abs=1e-3)
    assert sorted(s.id for s in sups) == ours.utt_ids
    for sup in sups:
        seg = ours.segments[sup.id]
        assert (sup.recording_id, sup.speaker, sup.text) == (seg.recording, "42", ours.text[sup.id])
        assert sup.start == pytest.approx(seg.start, abs=1e-3)
        assert sup.duration == pytest.approx(ours.utt2dur[sup.id], abs=1e-3)


def test_librilight_segments_dir_loads(synth, tmp_path):
    """lhotse 1.33 reads a segments dir only with a ``text`` file; for our unlabeled (text-less)
    librilight output, a ``text`` of bare ids (empty transcripts) is the documented workaround."""
    path, spans = _long_recording(synth, tmp_path)
    ours, _ = prepare_librilight(tmp_path / "ll", tmp_path / "seg", SegmentOptions(max_seconds=8, max_pause=0.5),
                                 jobs=1, progress=False)
    assert ours.segments is not None and len(ours) >= 2
    view = tmp_path / "seg_lhotse"
    shutil.copytree(tmp_path / "seg", view)
    (view / "text").write_text("".join(f"{u}\n" for u in ours.utt_ids))
    recs, sups, _ = lhotse_kaldi.load_kaldi_data_dir(view, sampling_rate=16000)
    assert len(recs) == 1 and recs[0].duration == pytest.approx(sf.info(str(path)).duration, abs=1e-3)
    assert sorted(s.id for s in sups) == ours.utt_ids
    for sup in sups:
        seg = ours.segments[sup.id]
        assert sup.recording_id == seg.recording and sup.speaker == "42"
        assert sup.start == pytest.approx(seg.start, abs=1e-3)
        assert sup.duration == pytest.approx(ours.utt2dur[sup.id], abs=1e-3)
    # every synthesized utterance (its middle) lies inside one of the segments found by energy
    for a, b, _ in spans:
        mid = (a + b) / 2
        assert any(s.start <= mid <= s.end for s in ours.segments.values())
