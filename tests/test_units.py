"""Text normalization, tokens.txt validation, character and BPE tokenizers, OOV reporting, units hash."""

from __future__ import annotations

import random

import pytest

from asr_kd.data.units import (
    BLANK,
    UNK,
    WORD_BOUNDARY,
    BpeTokenizer,
    CharTokenizer,
    find_oov,
    load_tokenizer,
    normalize_text,
    read_tokens,
)
from asr_kd.errors import UnitsError


@pytest.mark.parametrize("raw, expected", [
    ("Hello, World!", "hello world"),
    ("  Don't-stop   me\tnow. ", "don't stop me now"),
    ("'quoted' dogs' o'clock", "quoted dogs o'clock"),
    ("It\u2019s 5 o\u2019clock", "it's 5 o'clock"),
    ("\uff26\uff55\uff4c\uff4c \uff57\uff49\uff44\uff54\uff48 \ufb01ne", "full width fine"),  # NFKC
    ("Café NAÏVE straße", "café naïve straße"),
    ("e-mail: a_b@c.d / 3.14", "e mail a b c d 3 14"),
    ("Ünïcödé — ΑΒΓ", "ünïcödé αβγ"),
    ("?!...", ""),
])
def test_normalize_text(raw, expected):
    assert normalize_text(raw) == expected
    assert normalize_text(expected) == expected  # idempotent


def test_char_round_trip_and_word_boundaries(tmp_path):
    tok = CharTokenizer.build(["the cat sat", "a dog's day"])
    assert tok.symbols[:3] == [BLANK, UNK, WORD_BOUNDARY] and tok.blank_id == 0 and tok.kind == "char"
    assert tok.symbols[3:] == sorted(set("thecatsatadog'sday"))
    ids = tok.encode("the cat")
    assert [tok.symbols[i] for i in ids] == ["t", "h", "e", WORD_BOUNDARY, "c", "a", "t"]
    assert tok.decode(ids) == "the cat"
    assert tok.decode([0] + ids + [0]) == "the cat"  # blanks are skipped
    tok.save(tmp_path)
    assert (tmp_path / "tokens.txt").read_text().splitlines()[:3] == ["<blk> 0", "<unk> 1", "\u2581 2"]
    back = load_tokenizer(tmp_path)
    assert isinstance(back, CharTokenizer) and back.symbols == tok.symbols
    assert back.units_hash() == tok.units_hash() and len(tok.units_hash()) == 16
    with pytest.raises(UnitsError, match="out of range"):
        tok.decode([tok.vocab_size])


def test_oov_mapped_to_unk_reported_and_strict_raises():
    tok = CharTokenizer.build(["abc"])
    ids = tok.encode("abz cq")
    assert ids == [tok.symbols.index("a"), tok.symbols.index("b"), tok.unk_id, 2, tok.symbols.index("c"), tok.unk_id]
    assert tok.decode(ids) == "ab<unk> c<unk>"
    report = find_oov({"u1": "abz", "u2": "cab", "u3": "zq", "u0": "qq"}, tok)
    assert report == {"q": ["u0", "u3"], "z": ["u1", "u3"]}
    with pytest.raises(UnitsError, match=r"characters \['q', 'z'\]"):
        tok.encode("zq ab", strict=True)
    assert tok.encode("ab", strict=True) == tok.encode("ab")


def test_extra_symbols():
    tok = CharTokenizer.build(["ab"], extra_symbols=["z", "'"])
    assert "z" in tok.symbols and "'" in tok.symbols and find_oov({"u": "zab"}, tok) == {}
    with pytest.raises(UnitsError, match="one non-space character"):
        CharTokenizer.build(["ab"], extra_symbols=["<noise>"])


@pytest.mark.parametrize("content, line, pattern", [
    ("<blk> 0\n<unk> 1\na 2\na 3\n", 4, r"duplicate symbol 'a' \(first on line 3\)"),
    ("<blk> 0\n<unk> 1\na 2\nb 2\n", 4, r"duplicate id 2 \(already used by 'a'\)"),
    ("<unk> 0\n<blk> 1\na 2\n", 2, r"the blank '<blk>' must have id 0"),
    ("<blk> 0\n<unk> 1\na 3\n", 3, r"expected 2, got 3"),
    ("<blk> 0\n<unk> 1\na\n", 3, r"expected '<symbol> <id>'"),
    ("<blk> 0\n<unk> x\n", 2, r"id must be an integer"),
])
def test_malformed_tokens_txt(tmp_path, content, line, pattern):
    path = tmp_path / "tokens.txt"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(UnitsError, match=pattern) as info:
        read_tokens(path)
    assert str(info.value).startswith(f"{path}:{line}: ")


def test_char_tokens_need_single_characters_and_unk(tmp_path):
    (tmp_path / "tokens.txt").write_text("<blk> 0\n<unk> 1\n\u2581 2\nab 3\n", encoding="utf-8")
    with pytest.raises(UnitsError, match=r"tokens.txt:4: character units must be single characters"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokens.txt").write_text("<blk> 0\na 1\n", encoding="utf-8")
    with pytest.raises(UnitsError, match="no '<unk>' symbol"):
        load_tokenizer(tmp_path)
    with pytest.raises(UnitsError, match="not found"):
        load_tokenizer(tmp_path / "absent")


def test_units_hash_changes_when_units_change(tmp_path):
    a = CharTokenizer.build(["the cat"])
    b = CharTokenizer.build(["the cat"])
    c = CharTokenizer.build(["the cat", "zebra"])
    assert a.units_hash() == b.units_hash() != c.units_hash()
    a.save(tmp_path)
    lines = (tmp_path / "tokens.txt").read_text().splitlines()
    lines[3], lines[4] = lines[4].split()[0] + " 3", lines[3].split()[0] + " 4"  # swap two units' ids
    (tmp_path / "tokens.txt").write_text("\n".join(lines) + "\n")
    assert load_tokenizer(tmp_path).units_hash() != a.units_hash()


def corpus(n: int = 200, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    subjects = "the cat|a dog|my neighbour|the old sailor|our teacher|a tiny robot|the quick fox".split("|")
    verbs = "jumps over|looks at|walks past|talks to|runs after|sings for|waits near".split("|")
    objects = "the lazy dog|a red house|the river bank|seven green apples|the morning train|an open window".split("|")
    return [f"{rng.choice(subjects)} {rng.choice(verbs)} {rng.choice(objects)}" for _ in range(n)]


def test_bpe_train_encode_decode_round_trip(tmp_path):
    texts = corpus()
    tok = BpeTokenizer.train(texts, vocab_size=50, out_dir=tmp_path / "m")
    assert tok.kind == "bpe" and tok.vocab_size == 50
    assert tok.symbols[:2] == [BLANK, UNK]
    assert (tmp_path / "m" / "bpe.model").is_file() and len(read_tokens(tmp_path / "m" / "tokens.txt")) == 50
    for text in texts[:20] + ["the quick dog sings for an old window"]:
        ids = tok.encode(text)
        assert 0 not in ids and tok.decode(ids) == text
    assert len(tok.encode(texts[0])) < len(texts[0])  # pieces longer than characters
    assert any(s.startswith(WORD_BOUNDARY) and len(s) > 2 for s in tok.symbols)
    back = load_tokenizer(tmp_path / "m")
    assert isinstance(back, BpeTokenizer) and back.symbols == tok.symbols and back.units_hash() == tok.units_hash()
    assert back.encode(texts[3]) == tok.encode(texts[3])
    # same text, same settings -> same units (deterministic training)
    again = BpeTokenizer.train(texts, vocab_size=50, out_dir=tmp_path / "m2")
    assert again.units_hash() == tok.units_hash()
    assert BpeTokenizer.train(texts, vocab_size=45, out_dir=tmp_path / "m3").units_hash() != tok.units_hash()
    # OOV characters: <unk>, reported, strict raises
    ids = tok.encode("the cat jumps over the ßé")
    assert tok.unk_id in ids and tok.decode(ids).startswith("the cat jumps over the ")
    assert find_oov({"u9": "the ßé", "u8": "the cat"}, tok) == {"ß": ["u9"], "é": ["u9"]}
    with pytest.raises(UnitsError, match="not in the units"):
        tok.encode("the ßé", strict=True)


def test_bpe_errors(tmp_path):
    with pytest.raises(UnitsError, match="smaller units.bpe_vocab_size or more text"):
        BpeTokenizer.train(["a b c"], vocab_size=500, out_dir=tmp_path / "x")
    tok = BpeTokenizer.train(corpus(), vocab_size=40, out_dir=tmp_path / "m")
    path = tmp_path / "m" / "tokens.txt"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:5] + [lines[6].split()[0] + " 5", lines[5].split()[0] + " 6"] + lines[7:]) + "\n")
    with pytest.raises(UnitsError, match=r"tokens.txt:6: .* do not belong together"):
        load_tokenizer(tmp_path / "m")
    (tmp_path / "m" / "bpe.model").write_bytes(b"garbage")
    with pytest.raises(UnitsError, match="not a sentencepiece model"):
        load_tokenizer(tmp_path / "m")
    assert tok.vocab_size == 40
