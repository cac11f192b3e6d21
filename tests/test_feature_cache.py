"""Feature cache (``asr-kd data fbank``): Kaldi-readable feats.scp/ark equal to on-the-fly fbank, used
by training while audio and fbank config are unchanged, ignored (recomputed) when either changes, and
unreadable audio still rejected with its reason."""

from __future__ import annotations

import os
import time

import numpy as np
import torch

from asr_kd.cli import main as cli_main
from asr_kd.data.feature_cache import FeatureCache
from asr_kd.data.features import FbankConfig
from asr_kd.targets.kaldi import _kaldi_io
from asr_kd.train.batching import BatchPlanItem
from asr_kd.train.data import UtteranceTable, _PlannedBatches
from factories import add_bad_audio, make_data


def _batch(table: UtteranceTable, utts: list[str], cfg: FbankConfig):
    return _PlannedBatches(table, [("x", BatchPlanItem(tuple(utts), 0))], cfg, False)[0]


def test_cache_is_kaldi_readable_and_equal_to_on_the_fly_features(tmp_path):
    data = make_data(tmp_path / "c", 5)
    assert cli_main(["data", "fbank", str(data), "--no-progress"]) == 0
    cfg = FbankConfig()
    fresh = UtteranceTable()
    fresh.add_dir(str(data), cfg, None, False, 0.0, 100.0)
    utts = sorted(fresh.utts)
    fresh.caches.clear()  # on the fly
    want = _batch(fresh, utts, cfg)
    kaldi = dict(_kaldi_io().read_mat_scp(str(data / "feats.scp")))  # what a Kaldi user reads
    assert sorted(kaldi) == utts
    for i, utt in enumerate(utts):
        n = int(want.feat_lens[i])
        assert kaldi[utt].shape == (n, 80)
        assert np.array_equal(kaldi[utt], want.feats[i, :n].numpy()), utt


def test_training_reads_the_cache_until_the_audio_or_config_changes(tmp_path):
    data = make_data(tmp_path / "c", 3)
    assert cli_main(["data", "fbank", str(data), "--no-progress"]) == 0
    cfg = FbankConfig()
    table = UtteranceTable()
    table.add_dir(str(data), cfg, None, False, 0.0, 100.0)
    utt = sorted(table.utts)[0]
    # overwrite the cached matrix of `utt` in place with a marker value: if training reads the cache,
    # it sees the marker; if it recomputed from audio, it would not
    cache = table.caches[id(table.dirs[0])]
    ark, offset = cache.scp[utt].rsplit(":", 1)
    original = _batch(table, [utt], cfg).feats[0]
    with open(ark, "r+b") as fh:
        fh.seek(int(offset) + 15)  # past the binary header ("\0B" FM ' ' + two int32 dims)
        fh.write(np.full(4, 123.0, dtype=np.float32).tobytes())
    marked = _batch(table, [utt], cfg).feats[0]
    assert (marked == 123.0).sum() == 4 and not torch.equal(marked, original)

    # the audio file changes (new mtime): its features come from audio again
    wav = table.dirs[0].source(utt).path
    later = time.time() + 5
    os.utime(wav, (later, later))
    assert torch.equal(_batch(table, [utt], cfg).feats[0], original)

    # another fbank config: the whole cache is ignored
    assert FeatureCache.open(data, FbankConfig(num_mel_bins=40)) is None
    assert FeatureCache.open(data, FbankConfig()) is not None


def test_unreadable_audio_is_listed_and_still_rejected_in_training(tmp_path):
    data = make_data(tmp_path / "c", 4)
    add_bad_audio(data, tmp_path / "bad_audio", long_seconds=2.0)
    assert cli_main(["data", "fbank", str(data), "--no-progress"]) == 0
    listed = dict(line.split("\t", 1) for line in (data / "fbank" / "rejects.tsv").read_text().splitlines())
    assert sorted(listed) == ["bad-corrupt", "bad-empty", "bad-missing", "bad-nan"]
    assert "bad-rate8k" in (data / "feats.scp").read_text()  # resampled, like training does
    table = UtteranceTable()
    table.add_dir(str(data), FbankConfig(), None, False, 0.0, 100.0)
    assert {"bad-missing", "bad-empty", "bad-corrupt"} <= set(dict(table.rejects))  # no readable header
    good = sorted(u for u in table.utts if not u.startswith("bad-"))[0]
    batch = _batch(table, ["bad-nan", good], FbankConfig())  # not cached: read from audio, rejected there
    assert batch.utt_ids == [good] and [u for u, _ in batch.rejects] == ["bad-nan"]
    assert "nan" in batch.rejects[0][1].lower()


def test_a_truncated_ark_warns_with_a_reason_and_falls_back_to_audio(tmp_path, caplog):
    """A cache whose ark was cut short: the warning names the utterance and a non-empty reason, and the
    cache gives None (training then computes the features from audio). (Mutation caught: the bare
    exception text, which kaldi-io leaves empty: 'unreadable ()'.)"""
    import logging

    data = make_data(tmp_path / "c", 2)
    assert cli_main(["data", "fbank", str(data), "--no-progress"]) == 0
    from asr_kd.data.datadir import read_data_dir

    cfg = FbankConfig()
    d = read_data_dir(data)
    cache = FeatureCache.open(data, cfg)
    last = d.utt_ids[-1]
    ark = data / "fbank" / "feats.ark"
    offset = int(cache.scp[last].rsplit(":", 1)[1])
    ark.write_bytes(ark.read_bytes()[:offset])  # cut where the last matrix starts: kaldi-io's bare AssertionError
    with caplog.at_level(logging.WARNING, logger="asr_kd.data.feature_cache"):
        assert cache.get(last, d.source(last)) is None
    message = next(r.getMessage() for r in caplog.records if last in r.getMessage())
    reason = message.split("unreadable (", 1)[1].split(")", 1)[0]
    assert reason.strip(), message
