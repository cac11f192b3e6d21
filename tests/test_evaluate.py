"""``asr-kd evaluate`` end to end on tiny models: unreadable audio scored as an empty hypothesis, beam search
wired through, and streaming vs offline decoding at the CLI level.

Each test names the mutation of the library it was checked against (broken on purpose, seen failing, restored).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from asr_kd.cli import main as cli_main
from asr_kd.data.audio import load_audio
from asr_kd.data.datadir import read_data_dir, write_data_dir
from asr_kd.data.units import normalize_text
from asr_kd.models.model_dir import load_model_dir
from factories import make_data, make_teacher

pytestmark = pytest.mark.timeout(300)


def _hyps(eval_dir: Path) -> dict[str, str]:
    """``{utt: hypothesis}`` from sclite's trn format (``text (utt)``)."""
    out = {}
    for line in (eval_dir / "hyp.trn").read_text().splitlines():
        text, _, utt = line.rpartition(" (")
        out[utt.rstrip(")")] = text.strip()
    return out


def _decisive(model_dir: Path, scale: float) -> Path:
    """Scale the output layer of a saved random model so its frames are decisive (non-empty hypotheses)."""
    from asr_kd.models.model_dir import save_model_dir

    m = load_model_dir(model_dir)
    with torch.no_grad():
        m.model.output.weight.mul_(scale)
    save_model_dir(model_dir, m.model, m.model_config, m.tokenizer, m.cmvn, m.fbank_config)
    return model_dir


def test_unreadable_audio_is_scored_as_an_empty_hypothesis(tmp_path, capsys):
    """A corrupt file in the test set is not dropped from the score: its hypothesis is empty, so every
    reference word counts as a deletion, and it is listed in rejects.tsv. (Mutation caught: references limited to the readable
    utterances -> the WER is computed without the unreadable one.)"""
    model = make_teacher(tmp_path / "m")
    data = make_data(tmp_path / "d", 3, with_text=True)
    d = read_data_dir(data)
    (tmp_path / "corrupt.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk" * 10)
    d.wav_scp["x-corrupt"], d.utt2spk["x-corrupt"], d.text["x-corrupt"] = str(tmp_path / "corrupt.wav"), "x", "play some music"
    write_data_dir(d, data)
    assert cli_main(["evaluate", "--model", str(model), "--data", str(data), "--out", str(tmp_path / "e"),
                     "--no-progress"]) == 0
    report = json.loads((tmp_path / "e" / "wer.json").read_text())
    assert report["num_utts"] == 4 and report["rejects"] == 1
    assert _hyps(tmp_path / "e")["x-corrupt"] == ""
    assert (tmp_path / "e" / "rejects.tsv").read_text().startswith("x-corrupt\tunreadable")
    per_utt = {line.split("\t")[0]: line.split("\t") for line in (tmp_path / "e" / "per_utt.tsv").read_text().splitlines()}
    header = per_utt.pop("utt")
    row = dict(zip(header, per_utt["x-corrupt"]))
    assert (int(row["words"]), int(row["del"]), int(row["sub"]), int(row["ins"])) == (3, 3, 0, 0)
    assert report["num_words"] == sum(len(t.split()) for t in d.text.values())


def test_beam_search_hypotheses_are_the_beam_decoders(tmp_path):
    """``--beam 4`` scores what BeamSearchDecoder(beam_size=4) makes of the model's outputs, computed here by
    hand, and on this near-uniform random model that differs from greedy for some utterance (so the check
    has teeth). (Mutation caught: evaluate decoding greedily whatever --beam says.)"""
    from asr_kd.decode import BeamSearchDecoder, greedy_ctc

    model = make_teacher(tmp_path / "m")
    data = make_data(tmp_path / "d", 6, with_text=True)
    assert cli_main(["evaluate", "--model", str(model), "--data", str(data), "--out", str(tmp_path / "e"), "--beam", "4",
                     "--no-progress"]) == 0
    assert json.loads((tmp_path / "e" / "wer.json").read_text())["decoder"] == "beam4"
    loaded = load_model_dir(model)
    beam = BeamSearchDecoder(loaded.tokenizer, beam_size=4)
    d = read_data_dir(data)
    want, greedy = {}, {}
    for utt in d.utt_ids:
        wave = load_audio(d.source(utt), sample_rate=16000)
        with torch.no_grad():
            feats, lens = loaded.featurize(wave[None], torch.tensor([wave.numel()]))
            log_probs, out_lens = loaded.model(feats, lens)
        want[utt] = normalize_text(loaded.tokenizer.decode(beam.decode(log_probs, out_lens)[0]))
        greedy[utt] = normalize_text(loaded.tokenizer.decode(greedy_ctc(log_probs, out_lens)[0]))
    assert want != greedy, "beam and greedy agree on every utterance: pick a model where they differ"
    got = {u: normalize_text(h) for u, h in _hyps(tmp_path / "e").items()}
    assert got == want


def test_streaming_and_offline_evaluation_agree_at_the_cli(tmp_path):
    """``asr-kd evaluate --streaming`` on a streaming student writes the same hypotheses as offline decoding
    (chunk-masked training makes them equal), non-empty ones, and reports its algorithmic latency.
    (Mutation caught: the recognizer not reset between utterances -> state leaks into the next one.
    Not caught: dropping the last partial chunk in ``finalize`` -- on these random models the tail frames
    add no new unit, so both decodes lose it alike.)"""
    model = _decisive(make_teacher(tmp_path / "m", preset="tiny_streaming_conformer"), 6.0)
    data = make_data(tmp_path / "d", 4, with_text=True, min_s=1.0, step_s=0.33)
    for mode in ("offline", "streaming"):
        args = ["evaluate", "--model", str(model), "--data", str(data), "--out", str(tmp_path / mode), "--no-progress"]
        assert cli_main(args + (["--streaming"] if mode == "streaming" else [])) == 0
    offline, streaming = _hyps(tmp_path / "offline"), _hyps(tmp_path / "streaming")
    assert offline == streaming
    assert all(len(h.replace(" ", "")) >= 3 for h in offline.values()), offline
    reports = {m: json.loads((tmp_path / m / "wer.json").read_text()) for m in ("offline", "streaming")}
    assert reports["streaming"]["streaming"] is True and reports["offline"]["streaming"] is False
    chunk = load_model_dir(model).model.chunk_size
    assert reports["streaming"]["latency_ms"] == chunk * 40 + 15
    assert reports["streaming"]["wer"] == reports["offline"]["wer"]


def test_device_cuda_without_a_usable_gpu_is_refused_and_auto_decodes_as_cpu(tmp_path, capsys):
    """``--device cuda`` on a machine where CUDA cannot be used fails with the device error (never a silent
    CPU run); ``--device auto`` with no GPU present decodes on the CPU, hypothesis for hypothesis as ``cpu``,
    and says so in wer.json and the summary line. A GPU machine runs ``recipes/librispeech/gpu_smoke.sh``.
    (Mutation caught: --device ignored -> the cuda run succeeds on the CPU.)"""
    if torch.cuda.is_available():
        pytest.skip("a usable GPU is present: the refusal cannot be shown here")
    model = _decisive(make_teacher(tmp_path / "m"), 30.0)
    data = make_data(tmp_path / "d", 3, with_text=True)
    assert cli_main(["evaluate", "--model", str(model), "--data", str(data), "--out", str(tmp_path / "gpu"),
                     "--device", "cuda", "--no-progress"]) != 0
    assert "CUDA cannot be used" in capsys.readouterr().err
    assert not (tmp_path / "gpu" / "wer.json").exists()
    for device in ("cpu", "auto"):
        assert cli_main(["evaluate", "--model", str(model), "--data", str(data), "--out", str(tmp_path / device),
                         "--device", device, "--no-progress"]) == 0
        assert json.loads((tmp_path / device / "wer.json").read_text())["device"] == "cpu"
    assert _hyps(tmp_path / "cpu") == _hyps(tmp_path / "auto")
    assert "(cpu, 1 thread)" in capsys.readouterr().out
