"""Training input checks that happen before the first step: utterances CTC cannot align are rejected
with a reason (not silently zeroed by ``zero_infinity``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf

from asr_kd.data.datadir import DataDir, write_data_dir
from asr_kd.data.features import FbankConfig
from asr_kd.data.units import CharTokenizer
from asr_kd.train.data import UtteranceTable, ctc_min_frames


def test_ctc_min_frames_counts_a_blank_between_repeated_labels():
    assert ctc_min_frames([1, 2, 3]) == 3
    assert ctc_min_frames([1, 1, 2, 2, 2]) == 8  # "aabbb": 5 labels + 3 blanks between equal neighbours
    assert ctc_min_frames([]) == 0


def _data(tmp_path: Path) -> Path:
    audio = tmp_path / "audio"
    audio.mkdir()
    wav, text, spk = {}, {}, {}
    rng = np.random.default_rng(0)
    # 0.5 s = 48 fbank frames (snip_edges) -> 12 frames of 40 ms, 24 of 20 ms; "hello there kenobi" needs 19
    for utt, words in [("u_fits", "hello"), ("u_too_long", "hello there kenobi")]:
        sf.write(audio / f"{utt}.wav", (0.1 * rng.standard_normal(8000)).astype(np.float32), 16000)
        wav[utt], text[utt], spk[utt] = str(audio / f"{utt}.wav"), words, "s"
    write_data_dir(DataDir(wav_scp=wav, utt2spk=spk, text=text), tmp_path / "data")
    return tmp_path / "data"


def test_unalignable_transcript_is_rejected_with_its_reason(tmp_path):
    data = _data(tmp_path)
    tok = CharTokenizer.build(["hello there kenobi"])
    table = UtteranceTable()
    table.add_dir(str(data), FbankConfig(), tok, True, 0.1, 30.0, subsampling=4)
    assert sorted(table.utts) == ["u_fits"]
    [(utt, reason)] = table.rejects
    assert utt == "u_too_long" and reason.startswith("unalignable")
    assert "model.subsampling: 2" in reason and "19 output frames" in reason and "12 frames of 40 ms" in reason

    # at 20 ms output frames the same transcript fits: nothing is rejected
    table20 = UtteranceTable()
    table20.add_dir(str(data), FbankConfig(), tok, True, 0.1, 30.0, subsampling=2)
    assert sorted(table20.utts) == ["u_fits", "u_too_long"] and table20.rejects == []


def test_config_keys_that_would_do_nothing_are_refused():
    import pytest

    from asr_kd.config import validate_config
    from asr_kd.errors import ConfigError
    from asr_kd.train.config import TrainConfig

    base = {"model": {"kind": "conformer", "d_model": 32, "num_layers": 1, "nhead": 2, "d_ffn": 64}, "data": {"train": ["x"]}}
    validate_config({**base, "units": {"kind": "bpe", "bpe_vocab_size": 64}}, TrainConfig)  # used: fine
    with pytest.raises(ConfigError, match="bpe_vocab_size does nothing"):
        validate_config({**base, "units": {"kind": "char", "bpe_vocab_size": 64}}, TrainConfig)
    with pytest.raises(ConfigError, match="average_share does nothing with train.final: best"):
        validate_config({**base, "train": {"final": "best", "average_share": 0.3}}, TrainConfig)
    with pytest.raises(ConfigError, match="pseudo_ctc_weight does nothing without data.unlabeled"):
        validate_config({**base, "kd": {"store": "s", "pseudo_ctc_weight": 0.5}}, TrainConfig)


def test_a_resolved_config_with_every_default_written_validates_again(tmp_path):
    """DDP workers and --resume read the resolved config.yaml back: the do-nothing checks compare with the
    defaults, so a dump holding every default key is accepted (mutation caught: checks on keys given)."""
    from asr_kd.config import dump_config, load_config
    from asr_kd.train.config import TrainConfig

    for overrides in ([], ["train.final=best"], ["train.final=last"]):
        conf = load_config("recipes/synth/conf/teacher.yaml", TrainConfig, overrides)
        dump_config(conf, tmp_path / "resolved.yaml")
        assert load_config(tmp_path / "resolved.yaml", TrainConfig) == conf
