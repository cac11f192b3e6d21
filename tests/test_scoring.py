"""WER/CER scoring agrees with the real NIST sclite; report files have sclite's formats."""

from __future__ import annotations

import json
import math
import random
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from asr_kd.scoring import ScoringError, align_words, char_counts, jiwer_errors, pralign_lines, score, write_report

SCLITE = shutil.which("sclite") or "/usr/lib/sctk/bin/sclite"

# substitutions, insertions, deletions, an empty hypothesis, a missing one, and a case where sclite's
# weighted alignment (3 del + 3 ins) disagrees with unit-cost Levenshtein (5 sub)
REFS = {
    "spk1-u01": "the cat sat on the mat",
    "spk1-u02": "a quick brown fox",
    "spk1-u03": "hello world",
    "spk2-u04": "nothing was said here",
    "spk2-u05": "this one has no hypothesis",
    "spk2-u06": "p q r a b",
    "spk2-u07": "exactly right",
}
HYPS = {
    "spk1-u01": "the cat sat in a the mat",  # sub on->in, ins a
    "spk1-u02": "a brown fox jumps",  # del quick, ins jumps
    "spk1-u03": "hello word",  # sub
    "spk2-u04": "",  # empty hypothesis: 4 deletions
    "spk2-u06": "a b x y z",
    "spk2-u07": "exactly right",
}


def _have_sclite() -> bool:
    return Path(SCLITE).is_file()


def _run_sclite(out: Path, *extra: str) -> str:
    proc = subprocess.run([SCLITE, "-r", str(out / "ref.trn"), "trn", "-h", str(out / "hyp.trn"), "trn", "-i", "rm",
                           *extra, "-o", "sum", "pralign", "stdout"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def _sclite_counts(stdout: str) -> dict[str, tuple[int, int, int, int]]:
    """Per-utterance (#C, #S, #D, #I) from sclite's pralign report."""
    pat = r"id: \((\S+)\)\nScores: \(#C #S #D #I\) (\d+) (\d+) (\d+) (\d+)"
    return {m.group(1): tuple(int(x) for x in m.groups()[1:]) for m in re.finditer(pat, stdout)}


def _sclite_sum(stdout: str) -> dict[str, float]:
    """The ``Sum/Avg`` row of sclite's sum report: #Snt #Wrd Corr Sub Del Ins Err S.Err."""
    line = next(line for line in stdout.splitlines() if "Sum/Avg" in line)
    nums = [float(x) for x in re.findall(r"[-\d.]+", line)]
    return dict(zip(["snt", "wrd", "corr", "sub", "del", "ins", "err", "serr"], nums))


def test_counts_and_missing_hypothesis_listed():
    rep = score(REFS, HYPS)
    assert rep.missing == ["spk2-u05"]
    assert rep.utts["spk2-u05"].missing and rep.utts["spk2-u05"].words.dels == 5
    assert rep.num_utts == 7
    assert rep.num_words == sum(len(t.split()) for t in REFS.values()) == 28
    u1 = rep.utts["spk1-u01"].words
    assert (u1.cor, u1.sub, u1.dels, u1.ins) == (5, 1, 0, 1)
    u4 = rep.utts["spk2-u04"].words
    assert (u4.cor, u4.sub, u4.dels, u4.ins) == (0, 0, 4, 0)
    # sclite's weighting: 3 deletions + 3 insertions (cost 18) beat 5 substitutions (cost 20)
    u6 = rep.utts["spk2-u06"].words
    assert (u6.cor, u6.sub, u6.dels, u6.ins) == (2, 0, 3, 3)
    assert jiwer_errors(REFS["spk2-u06"], HYPS["spk2-u06"]) == 5 < u6.errors
    assert rep.errors == rep.sub + rep.dels + rep.ins
    assert rep.wer == pytest.approx(100.0 * rep.errors / 28)


def test_unknown_hypothesis_id_is_an_error_naming_it():
    with pytest.raises(ScoringError, match="no-such-utt"):
        score(REFS, {**HYPS, "no-such-utt": "x"})


def test_empty_references_refused():
    with pytest.raises(ScoringError, match="empty"):
        score({"a-1": "", "a-2": " "}, {})


def test_normalize_applies_to_both_sides():
    rep = score({"s-1": "Hello World"}, {"s-1": "HELLO world"}, normalize=str.lower)
    assert rep.wer == 0.0 and rep.num_words == 2


def test_cer_hand_computed():
    # sclite -c: spaces are not counted; kitten -> sitting = 2 sub + 1 ins over 6 chars
    c = char_counts("kitten", "sitting")
    assert (c.cor, c.sub, c.dels, c.ins) == (4, 2, 0, 1)
    assert char_counts("ab cd", "abcd").errors == 0
    rep = score({"s-1": "kitten", "s-2": "ab cd"}, {"s-1": "sitting", "s-2": "abcd"})
    assert rep.num_chars == 10
    assert rep.cer == pytest.approx(100.0 * 3 / 10)
    assert rep.wer == pytest.approx(100.0 * 3 / 3)  # kitten->sitting sub; "ab cd"->"abcd" sub + del


def test_report_files(tmp_path):
    rep = score(REFS, HYPS)
    result = write_report(rep, tmp_path, {"rtf": 0.125, "latency_ms": 320})
    data = json.loads((tmp_path / "wer.json").read_text())
    assert data == result
    assert list(data) == ["wer", "cer", "num_utts", "num_words", "sub", "del", "ins", "rtf", "latency_ms"]
    assert data["wer"] == round(rep.wer, 2) and data["del"] == rep.dels and data["rtf"] == 0.125

    hyp_lines = (tmp_path / "hyp.trn").read_text().splitlines()
    assert hyp_lines == sorted(hyp_lines, key=lambda s: s.rsplit("(", 1)[1])
    assert " (spk2-u04)" in hyp_lines and " (spk2-u05)" in hyp_lines  # empty and missing hypotheses
    assert "the cat sat on the mat (spk1-u01)" in (tmp_path / "ref.trn").read_text().splitlines()

    per_utt = [line.split("\t") for line in (tmp_path / "per_utt.tsv").read_text().splitlines()]
    assert per_utt[0] == ["utt", "words", "sub", "del", "ins", "wer"]
    assert ["spk2-u04", "4", "0", "4", "0", "100.00"] in per_utt

    errors = (tmp_path / "errors.txt").read_text()
    ids = re.findall(r"^id: \((\S+)\)", errors, flags=re.M)
    assert ids[0] == "spk2-u06" and ids[-1] == "spk2-u07"  # most errors first (6), correct last
    assert "[no hypothesis]" in errors.split("id: (spk2-u05)")[1].splitlines()[0]

    with pytest.raises(ScoringError, match="overwrite"):
        write_report(rep, tmp_path, {"wer": 1.0})


def test_pralign_format_matches_sclite_style():
    ops, _ = align_words("the cat sat", "the bat sat down")
    ref, hyp, ev = pralign_lines(ops)
    assert ref == "REF:  the CAT sat ****"
    assert hyp == "HYP:  the BAT sat DOWN"
    assert ev == "Eval:     S       I   "


@pytest.mark.skipif(not _have_sclite(), reason="sclite (Debian sctk) not installed")
def test_agrees_with_sclite_on_fixed_set(tmp_path):
    rep = score(REFS, HYPS)
    write_report(rep, tmp_path, {})
    out = _run_sclite(tmp_path)
    counts = _sclite_counts(out)
    assert set(counts) == set(REFS)
    for utt, s in rep.utts.items():
        assert counts[utt] == (s.words.cor, s.words.sub, s.words.dels, s.words.ins), utt
    total = _sclite_sum(out)
    assert total["snt"] == rep.num_utts and total["wrd"] == rep.num_words
    # sclite prints one decimal; our unrounded percentages must agree to its precision, and the
    # counts (summed from its alignment) give the exact value
    assert rep.wer == pytest.approx(total["err"], abs=0.05 + 1e-9)
    c = [sum(v[i] for v in counts.values()) for i in range(4)]
    assert (rep.cor, rep.sub, rep.dels, rep.ins) == tuple(c)
    assert rep.wer == pytest.approx(100.0 * (c[1] + c[2] + c[3]) / total["wrd"], abs=0.01)
    assert rep.sub == round(total["sub"] * total["wrd"] / 100)
    assert rep.dels == round(total["del"] * total["wrd"] / 100)
    assert rep.ins == round(total["ins"] * total["wrd"] / 100)


@pytest.mark.skipif(not _have_sclite(), reason="sclite (Debian sctk) not installed")
def test_agrees_with_sclite_on_random_edits_words_and_chars(tmp_path):
    rng = random.Random(0)
    vocab = "a b c the cat sat on mat".split()
    refs, hyps = {}, {}
    for i in range(150):
        ref = [rng.choice(vocab) for _ in range(rng.randint(0, 8))]
        hyp = list(ref)
        for _ in range(rng.randint(0, 5)):
            op = rng.random()
            if op < 0.33 and hyp:
                hyp[rng.randrange(len(hyp))] = rng.choice(vocab)
            elif op < 0.66 and hyp:
                del hyp[rng.randrange(len(hyp))]
            else:
                hyp.insert(rng.randint(0, len(hyp)), rng.choice(vocab))
        refs[f"s{i % 5}-u{i:03d}"] = " ".join(ref) if i else "a b"  # at least one non-empty reference
        if i % 37 != 5:
            hyps[f"s{i % 5}-u{i:03d}"] = " ".join(hyp)
    rep = score(refs, hyps)
    write_report(rep, tmp_path, {})
    word_out = _run_sclite(tmp_path)
    words = _sclite_counts(word_out)
    chars = _sclite_counts(_run_sclite(tmp_path, "-c"))
    mismatched = [u for u, s in rep.utts.items() if words[u] != (s.words.cor, s.words.sub, s.words.dels, s.words.ins)]
    assert mismatched == []
    mismatched = [u for u, s in rep.utts.items() if chars[u] != (s.chars.cor, s.chars.sub, s.chars.dels, s.chars.ins)]
    assert mismatched == []
    # the alignments themselves are sclite's: identical REF/HYP pralign lines (both-empty pairs print nothing)
    shown = {m.group(1): (m.group(2).rstrip(), m.group(3).rstrip())
             for m in re.finditer(r"id: \((\S+)\)\nScores: [^\n]*\n(REF:[^\n]*)\n(HYP:[^\n]*)", word_out)}
    compared = 0
    for utt, s in rep.utts.items():
        if s.ref or s.hyp:
            ref_line, hyp_line, _ = pralign_lines(s.alignment)
            assert shown[utt] == (ref_line.rstrip(), hyp_line.rstrip()), utt
            compared += 1
    assert compared > 100
    # jiwer's unit-cost Levenshtein is a lower bound of sclite's error count
    assert all(jiwer_errors(refs[u], hyps.get(u, "")) <= s.words.errors for u, s in rep.utts.items())


def test_empty_reference_utterance_with_insertions_is_infinite_per_utt():
    rep = score({"s-1": "", "s-2": "a"}, {"s-1": "x y", "s-2": "a"})
    assert math.isinf(rep.utts["s-1"].wer)
    assert rep.ins == 2 and rep.wer == pytest.approx(200.0)
