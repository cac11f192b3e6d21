"""CTC decoding: greedy on hand-made posteriors, beam search vs greedy and vs exhaustive search."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from asr_kd.decode.beam import BeamSearchDecoder, flashlight_available, prefix_beam_search
from asr_kd.decode.greedy import GreedyCTCStream, greedy_ctc
from asr_kd.errors import ConfigError

torch.set_num_threads(1)


def posteriors(rows: list[list[float]]) -> torch.Tensor:
    """(T, V) probabilities -> (T, V) log-probabilities."""
    p = torch.tensor(rows, dtype=torch.float64)
    return (p / p.sum(-1, keepdim=True)).log()


def one_hot_path(path: list[int], vocab: int = 4) -> torch.Tensor:
    lp = torch.full((len(path), vocab), -10.0)
    lp[torch.arange(len(path)), torch.tensor(path)] = 0.0
    return lp.log_softmax(-1)


def test_greedy_collapses_repeats_and_drops_blanks():
    lp = one_hot_path([0, 1, 1, 0, 1, 2, 2, 0, 3, 3]).unsqueeze(0)
    assert greedy_ctc(lp) == [[1, 1, 2, 3]]  # blank between the two 1s keeps both


def test_greedy_honours_lengths_per_utterance():
    a = one_hot_path([1, 1, 2, 0, 3, 3])
    b = one_hot_path([2, 0, 2, 3, 3, 3])
    out = greedy_ctc(torch.stack([a, b]), torch.tensor([4, 6]))
    assert out == [[1, 2], [2, 2, 3]]  # frames past utterance 0's length (3, 3) are ignored


def test_incremental_greedy_collapses_across_chunk_boundaries():
    path = [1, 1, 1, 0, 2, 2, 3, 3, 3, 0, 0, 1]
    lp = one_hot_path(path)
    stream = GreedyCTCStream()
    emitted = [stream.accept(lp[s:s + 2]) for s in range(0, len(path), 2)]
    assert stream.ids == greedy_ctc(lp.unsqueeze(0))[0] == [1, 2, 3, 1]
    assert emitted[1] == []  # the "1" continuing from chunk 0 is not emitted again
    stream.reset()
    assert stream.ids == []


def test_prefix_beam_beats_greedy_when_best_path_is_not_best_sequence():
    # blank 0.6 / "a" 0.4 on both frames: best path is blank-blank (0.36) -> "", but the sequence "a"
    # has paths aa, a-, -a = 0.16 + 0.24 + 0.24 = 0.64.
    lp = posteriors([[0.6, 0.4, 0.0001], [0.6, 0.4, 0.0001]])
    assert greedy_ctc(lp.unsqueeze(0)) == [[]]
    (best, score), *_ = prefix_beam_search(lp, beam_size=4)
    assert best == [1]
    assert score == pytest.approx(math.log(0.64), abs=1e-3)


def _exhaustive_best(lp: torch.Tensor) -> tuple[list[int], float]:
    """Sum path probabilities per collapsed sequence over all V^T alignments."""
    totals: dict[tuple[int, ...], float] = {}
    t_len, vocab = lp.shape
    for path in itertools.product(range(vocab), repeat=t_len):
        seq = tuple(k for k, _ in itertools.groupby(path) if k != 0)
        totals[seq] = totals.get(seq, 0.0) + math.exp(sum(lp[t, k].item() for t, k in enumerate(path)))
    seq, p = max(totals.items(), key=lambda kv: kv[1])
    return list(seq), math.log(p)


@pytest.mark.parametrize("seed", range(5))
def test_prefix_beam_matches_exhaustive_search(seed):
    gen = torch.Generator().manual_seed(seed)
    lp = (torch.randn(6, 3, generator=gen, dtype=torch.float64) * 1.5).log_softmax(-1)
    expected, expected_score = _exhaustive_best(lp)
    (best, score), *_ = prefix_beam_search(lp, beam_size=50)
    assert best == expected
    assert score == pytest.approx(expected_score, abs=1e-9)


class Units:
    """Minimal unit inventory (symbols / blank_id / decode), as asr_kd.data.units.Tokenizer provides."""

    symbols = ["<blk>", "<unk>", "▁", "a", "b", "c"]
    blank_id = 0

    def decode(self, ids):
        return "".join(self.symbols[i] for i in ids).replace("▁", " ").strip()


def test_beam_decoder_agrees_with_greedy_on_peaked_posteriors():
    torch.manual_seed(0)
    paths = torch.randint(0, 6, (3, 30))
    lp = torch.full((3, 30, 6), -12.0).scatter(2, paths.unsqueeze(-1), 0.0).log_softmax(-1)
    lens = torch.tensor([30, 22, 9])
    decoder = BeamSearchDecoder(Units(), beam_size=5)
    assert decoder.decode(lp, lens) == greedy_ctc(lp, lens)
    texts = decoder.decode_text(lp, lens)
    assert texts == [Units().decode(ids) for ids in greedy_ctc(lp, lens)]


def test_beam_decoder_batch_beats_greedy_on_crafted_case():
    lp = posteriors([[0.6, 0.01, 0.01, 0.38, 0.0001, 0.0001]] * 2).unsqueeze(0).float()
    assert greedy_ctc(lp) == [[]]
    assert BeamSearchDecoder(Units(), beam_size=4).decode(lp) == [[3]]


ARPA = """\\data\\
ngram 1=4
ngram 2=2

\\1-grams:
-0.3\t<s>\t-0.1
-0.3\t</s>
-0.3\tab\t-0.1
-3.0\tca\t-0.1

\\2-grams:
-0.1\t<s> ab
-0.1\tab </s>

\\end\\
"""


def test_kenlm_lexicon_fusion_overrides_ambiguous_acoustics(tmp_path):
    assert flashlight_available(), "flashlight-text is a pinned dependency"
    (tmp_path / "lm.arpa").write_text(ARPA)
    (tmp_path / "lexicon.txt").write_text("ab a b ▁\nca c a ▁\n")
    # 'a' is clear; the second letter is slightly more 'c' than 'b' acoustically
    rows = [[0.05, 0, 0, 0.9, 0.025, 0.025], [0.9, 0, 0, 0.05, 0.025, 0.025],
            [0.1, 0, 0, 0.0, 0.42, 0.48], [0.9, 0, 0.05, 0, 0.025, 0.025]]
    lp = torch.tensor(rows).clamp_min(1e-6).log().log_softmax(-1).unsqueeze(0)
    assert greedy_ctc(lp) == [[3, 5]]  # "ac"
    dec = BeamSearchDecoder(Units(), beam_size=8, lm_path=tmp_path / "lm.arpa",
                            lexicon_path=tmp_path / "lexicon.txt", lm_weight=1.0)
    assert dec.backend == "flashlight"
    assert dec.decode_text(lp) == ["ab"]  # the LM knows "ab", not "ac"
    with pytest.raises(ConfigError, match="not found"):
        BeamSearchDecoder(Units(), lm_path=tmp_path / "missing.arpa")


# ------------------------------------------------------------------ asr-kd transcribe
def test_transcribe_cli_offline_streaming_and_bad_audio(tmp_path, capsys):
    import soundfile as sf

    from asr_kd.cli import main
    from asr_kd.data.cmvn import GlobalCMVN
    from asr_kd.data.features import FbankConfig
    from asr_kd.data.units import CharTokenizer
    from asr_kd.models import PRESETS, build_model, parse_model_config
    from asr_kd.models.model_dir import save_model_dir

    tokenizer = CharTokenizer.build(["abc cab"])
    config = parse_model_config(PRESETS["tiny_streaming_conformer"])
    torch.manual_seed(0)
    model = build_model(config, tokenizer.vocab_size).eval()
    with torch.no_grad():
        model.frontend.out.weight.mul_(30.0)
        model.output.weight.mul_(5.0)
        model.output.bias.zero_()
    cmvn = GlobalCMVN(mean=torch.full((80,), -6.0), std=torch.full((80,), 3.0))
    save_model_dir(tmp_path / "m", model, config, tokenizer, cmvn, FbankConfig(), {})
    gen = torch.Generator().manual_seed(0)
    wav = tmp_path / "a.wav"
    sf.write(wav, (0.1 * torch.randn(16000, generator=gen)).numpy(), 16000, subtype="FLOAT")
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF garbage")

    assert main(["transcribe", "--model", str(tmp_path / "m"), str(wav)]) == 0
    offline = capsys.readouterr().out.strip().split("\n")
    assert len(offline) == 1 and offline[0].startswith(f"{wav}\t")
    # two empty transcripts would also be "equal": the offline text must not be empty
    # (mutation caught: a recognizer that emits nothing in both modes passed the equality below)
    assert offline[0].split("\t", 1)[1].strip(), offline

    assert main(["transcribe", "--model", str(tmp_path / "m"), "--streaming", str(wav), str(bad)]) == 1
    captured = capsys.readouterr()
    assert captured.out.strip() == offline[0]  # streaming final text equals offline
    assert "partial\t" in captured.err and "bad.wav" in captured.err

    assert main(["transcribe", "--model", str(tmp_path / "m"), "--streaming", "--chunk-ms", "100", str(wav)]) == 2
    assert "multiple" in capsys.readouterr().err
