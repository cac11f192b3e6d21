"""Output units: text normalization, ``tokens.txt``, character and BPE tokenizers.

Text normalization
------------------
``normalize_text`` is the one normalization shared by training (transcripts -> unit ids) and scoring
(reference and hypothesis words, ``asr_kd.scoring``):

1. Unicode NFKC (full-width letters, ligatures and compatibility forms become plain characters);
   typographic apostrophes (U+2019 ``’``, U+02BC ``ʼ``) become ``'``;
2. lowercase (``str.lower``);
3. keep letters, digits and combining marks (Unicode categories L*, N*, M*, so accented and
   non-Latin scripts survive) and apostrophes *inside* a word (``don't``, ``o'clock``); every other
   character (punctuation, hyphens, symbols, leading/trailing apostrophes) becomes a space;
4. collapse runs of whitespace to one space and strip the ends.

Examples: ``"Hello, World!"`` -> ``"hello world"``; ``"Don't-stop"`` -> ``"don't stop"``;
``"'quoted'"`` -> ``"quoted"``; ``"Ｆｕｌｌ ｗｉｄｔｈ"`` -> ``"full width"``.

Units
-----
``tokens.txt`` holds one ``<symbol> <id>`` per line with ids ``0..V-1`` in order: ``<blk>`` (the CTC
blank) is 0, ``<unk>`` is 1, then the units. Character units mark word boundaries with ``▁`` (U+2581),
since a space cannot be a Kaldi symbol; the same mark sentencepiece puts at the start of a word, so the
two kinds decode alike. BPE units come from a sentencepiece model stored next to it as ``bpe.model``.

Out-of-inventory characters (a character of a transcript that no unit covers) are encoded as
``<unk>``; ``find_oov`` reports which characters and which utterances, and ``encode(..., strict=True)``
raises ``UnitsError`` instead. Training logs that report, writes it to ``oov.tsv`` in the model dir
and trains with ``<unk>`` in place of those characters; it never drops them silently.
"""

from __future__ import annotations

import abc
import hashlib
import io
import os
import unicodedata
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from asr_kd.errors import UnitsError

BLANK = "<blk>"
UNK = "<unk>"
WORD_BOUNDARY = "▁"  # U+2581 LOWER ONE EIGHTH BLOCK, sentencepiece's word mark
TOKENS_TXT = "tokens.txt"
BPE_MODEL = "bpe.model"

_APOSTROPHES = {"\u2019": "'", "\u02bc": "'"}


# ------------------------------------------------------------------------------------ normalization


def _is_word_char(ch: str) -> bool:
    return unicodedata.category(ch)[0] in "LNM"


def normalize_text(text: str) -> str:
    """Normalize a transcript for training and scoring (see the module docstring for the rules)."""
    text = unicodedata.normalize("NFKC", text)
    for src, dst in _APOSTROPHES.items():
        text = text.replace(src, dst)
    text = text.lower()
    out: list[str] = []
    for i, ch in enumerate(text):
        if _is_word_char(ch):
            out.append(ch)
        elif ch == "'" and 0 < i < len(text) - 1 and _is_word_char(text[i - 1]) and _is_word_char(text[i + 1]):
            out.append(ch)
        else:
            out.append(" ")
    return " ".join("".join(out).split())


# ------------------------------------------------------------------------------------ tokens.txt


def render_tokens(symbols: Sequence[str]) -> str:
    """``tokens.txt`` content for ``symbols`` (id = position)."""
    return "".join(f"{s} {i}\n" for i, s in enumerate(symbols))


def read_tokens(path: str | os.PathLike) -> list[str]:
    """Read and validate ``tokens.txt``; returns the symbols by id.

    Raises ``UnitsError`` naming the file and line for: a line that is not ``<symbol> <id>``, a
    duplicate symbol or id, ids that are not ``0..V-1`` in order, or a blank that is not ``<blk> 0``.
    """
    path = Path(path)
    if not path.is_file():
        raise UnitsError(f"{path}: units file not found")
    symbols: list[str] = []
    seen: dict[str, int] = {}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise UnitsError(f"{path}: not valid UTF-8 (byte {exc.start})") from None
    for lineno, line in enumerate(lines, start=1):
        parts = line.split()
        if len(parts) != 2:
            raise UnitsError(f"{path}:{lineno}: expected '<symbol> <id>', got {line!r}")
        sym, id_s = parts
        try:
            idx = int(id_s)
        except ValueError:
            raise UnitsError(f"{path}:{lineno}: id must be an integer, got {id_s!r}") from None
        if sym in seen:
            raise UnitsError(f"{path}:{lineno}: duplicate symbol {sym!r} (first on line {seen[sym]})")
        if idx < len(symbols):
            raise UnitsError(f"{path}:{lineno}: duplicate id {idx} (already used by {symbols[idx]!r})")
        if idx != len(symbols):
            raise UnitsError(f"{path}:{lineno}: ids must be 0..V-1 in order without gaps; expected {len(symbols)}, got {idx}")
        seen[sym] = lineno
        symbols.append(sym)
    if not symbols:
        raise UnitsError(f"{path}: empty units file")
    if symbols[0] != BLANK:
        line = seen.get(BLANK, 1)
        raise UnitsError(f"{path}:{line}: the blank {BLANK!r} must have id 0 (line 1 is {symbols[0]!r} 0)")
    if UNK not in seen:
        raise UnitsError(f"{path}: no {UNK!r} symbol; out-of-inventory characters need it")
    return symbols


# ------------------------------------------------------------------------------------ tokenizers


class Tokenizer(abc.ABC):
    """Maps normalized text to unit ids and back. ``symbols[i]`` is unit ``i``; ``blank_id`` is 0."""

    kind: str
    blank_id: int = 0

    def __init__(self, symbols: Sequence[str]):
        self.symbols: list[str] = list(symbols)
        self._ids = {s: i for i, s in enumerate(self.symbols)}
        self.unk_id = self._ids[UNK]

    @property
    def vocab_size(self) -> int:
        """Number of units including the blank (the CTC output dimension)."""
        return len(self.symbols)

    def tokens_txt(self) -> str:
        return render_tokens(self.symbols)

    @abc.abstractmethod
    def covers(self, char: str) -> bool:
        """True if ``char`` can be encoded without ``<unk>``."""

    @abc.abstractmethod
    def _encode(self, text: str) -> list[int]:
        """Unit ids of normalized ``text``; uncovered characters become ``unk_id``."""

    def encode(self, text: str, strict: bool = False) -> list[int]:
        """Unit ids of ``text`` (already ``normalize_text``-ed). Characters no unit covers become
        ``<unk>``, or with ``strict=True`` raise ``UnitsError`` naming them."""
        if strict:
            bad = sorted({ch for ch in text if not ch.isspace() and not self.covers(ch)})
            if bad:
                raise UnitsError(f"characters {bad} in {text[:80]!r} are not in the units ({self.kind}, "
                                 f"{self.vocab_size} units); rebuild the units or normalize the text")
        return self._encode(text)

    def decode(self, ids: Iterable[int]) -> str:
        """Text of unit ids (CTC-collapsed; blanks are skipped). ``▁`` becomes a word boundary;
        ``<unk>`` appears as ``<unk>``."""
        pieces = []
        for i in ids:
            i = int(i)
            if not 0 <= i < len(self.symbols):
                raise UnitsError(f"unit id {i} is out of range 0..{len(self.symbols) - 1}")
            if i != self.blank_id:
                pieces.append(self.symbols[i])
        return " ".join("".join(pieces).replace(WORD_BOUNDARY, " ").split())

    def save(self, model_dir: str | os.PathLike) -> None:
        """Write ``tokens.txt`` (and the BPE model) into ``model_dir``."""
        model_dir = Path(model_dir)
        model_dir.mkdir(parents=True, exist_ok=True)
        (model_dir / TOKENS_TXT).write_text(self.tokens_txt(), encoding="utf-8")

    def _hash_payload(self) -> bytes:
        return self.tokens_txt().encode("utf-8")

    def units_hash(self) -> str:
        """First 16 hex digits of the sha256 of ``tokens.txt`` (plus ``bpe.model`` for BPE units)."""
        return hashlib.sha256(self._hash_payload()).hexdigest()[:16]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.vocab_size} units, hash {self.units_hash()})"


class CharTokenizer(Tokenizer):
    """One unit per character; ``▁`` between words. Ids: ``<blk>`` 0, ``<unk>`` 1, ``▁`` 2, then the
    characters in code point order."""

    kind = "char"

    def __init__(self, symbols: Sequence[str], source: str = "<memory>"):
        for i, s in enumerate(symbols):
            if i >= 2 and len(s) != 1:
                raise UnitsError(f"{source}:{i + 1}: character units must be single characters, got {s!r} "
                                 f"(BPE units need {BPE_MODEL} next to {TOKENS_TXT})")
        if list(symbols[:3]) != [BLANK, UNK, WORD_BOUNDARY]:
            raise UnitsError(f"{source}: character units must start with {BLANK} 0, {UNK} 1, {WORD_BOUNDARY} 2")
        super().__init__(symbols)

    @classmethod
    def build(cls, texts: Iterable[str], extra_symbols: Iterable[str] = ()) -> "CharTokenizer":
        """Units = every non-space character of ``texts`` (normalized transcripts) plus
        ``extra_symbols`` (single characters), sorted by code point."""
        chars: set[str] = set()
        for t in texts:
            chars.update(ch for ch in t if not ch.isspace())
        for s in extra_symbols:
            if len(s) != 1 or s.isspace():
                raise UnitsError(f"extra character unit {s!r} must be one non-space character")
            chars.add(s)
        chars.discard(WORD_BOUNDARY)
        if not chars:
            raise UnitsError("cannot build character units from empty transcripts")
        return cls([BLANK, UNK, WORD_BOUNDARY] + sorted(chars))

    @classmethod
    def load(cls, tokens_txt: str | os.PathLike) -> "CharTokenizer":
        return cls(read_tokens(tokens_txt), source=str(tokens_txt))

    def covers(self, char: str) -> bool:
        return char in self._ids and self._ids[char] > self.unk_id

    def _encode(self, text: str) -> list[int]:
        ids: list[int] = []
        for w, word in enumerate(text.split()):
            if w:
                ids.append(self._ids[WORD_BOUNDARY])
            ids.extend(self._ids.get(ch, self.unk_id) for ch in word)
        return ids


class BpeTokenizer(Tokenizer):
    """sentencepiece units (unigram model). Unit ``i + 1`` is sentencepiece piece ``i``: piece 0 is
    ``<unk>``, so ``tokens.txt`` is ``<blk> 0``, ``<unk> 1``, then the pieces."""

    kind = "bpe"

    def __init__(self, model_proto: bytes, source: str = "<memory>"):
        import sentencepiece as spm

        self._proto = bytes(model_proto)
        try:
            self._sp = spm.SentencePieceProcessor(model_proto=self._proto)
        except (RuntimeError, OSError) as exc:
            raise UnitsError(f"{source}: not a sentencepiece model: {exc}") from None
        pieces = [self._sp.id_to_piece(i) for i in range(self._sp.get_piece_size())]
        if self._sp.unk_id() != 0 or pieces[0] != UNK:
            raise UnitsError(f"{source}: the sentencepiece model must have {UNK} as piece 0 (train it with "
                             f"BpeTokenizer.train)")
        super().__init__([BLANK] + pieces)

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int, out_dir: str | os.PathLike) -> "BpeTokenizer":
        """Train sentencepiece (unigram, full character coverage, single thread) on normalized
        ``texts`` so that ``vocab_size`` units result (blank included); write ``bpe.model`` and
        ``tokens.txt`` into ``out_dir``."""
        import sentencepiece as spm

        texts = [t for t in texts if t.strip()]
        if not texts:
            raise UnitsError("cannot train BPE units on empty transcripts")
        if vocab_size < 3:
            raise UnitsError(f"BPE vocab_size must be >= 3 (blank, <unk> and a piece), got {vocab_size}")
        proto = io.BytesIO()
        try:
            spm.SentencePieceTrainer.train(
                sentence_iterator=iter(texts), model_writer=proto, vocab_size=vocab_size - 1,
                model_type="unigram", character_coverage=1.0, unk_id=0, bos_id=-1, eos_id=-1, pad_id=-1,
                unk_piece=UNK, num_threads=1, shuffle_input_sentence=False, minloglevel=2)
        except RuntimeError as exc:
            raise UnitsError(f"sentencepiece could not train {vocab_size} units on {len(texts)} transcripts: {exc}; "
                             f"use a smaller units.bpe_vocab_size or more text") from None
        tok = cls(proto.getvalue(), source="<trained>")
        tok.save(out_dir)
        return tok

    @classmethod
    def load(cls, model_dir: str | os.PathLike) -> "BpeTokenizer":
        """Read ``bpe.model`` and check that ``tokens.txt`` next to it lists its pieces."""
        model_dir = Path(model_dir)
        model_path = model_dir / BPE_MODEL
        if not model_path.is_file():
            raise UnitsError(f"{model_path}: BPE model not found")
        tok = cls(model_path.read_bytes(), source=str(model_path))
        tokens_path = model_dir / TOKENS_TXT
        symbols = read_tokens(tokens_path)
        for i, (have, want) in enumerate(zip(symbols, tok.symbols)):
            if have != want:
                raise UnitsError(f"{tokens_path}:{i + 1}: {have!r} but {BPE_MODEL} has {want!r} as unit {i}; "
                                 f"tokens.txt and bpe.model do not belong together")
        if len(symbols) != len(tok.symbols):
            raise UnitsError(f"{tokens_path}: {len(symbols)} units but {BPE_MODEL} has {len(tok.symbols)}")
        return tok

    def covers(self, char: str) -> bool:
        return self._sp.piece_to_id(char) != self._sp.unk_id()

    def _encode(self, text: str) -> list[int]:
        return [i + 1 for i in self._sp.encode(" ".join(text.split()), out_type=int)]

    def save(self, model_dir: str | os.PathLike) -> None:
        super().save(model_dir)
        (Path(model_dir) / BPE_MODEL).write_bytes(self._proto)

    def _hash_payload(self) -> bytes:
        return self.tokens_txt().encode("utf-8") + self._proto


def load_tokenizer(model_dir: str | os.PathLike) -> Tokenizer:
    """The tokenizer stored in ``model_dir``: BPE if ``bpe.model`` is there, else characters."""
    model_dir = Path(model_dir)
    if (model_dir / BPE_MODEL).is_file():
        return BpeTokenizer.load(model_dir)
    return CharTokenizer.load(model_dir / TOKENS_TXT)


def find_oov(texts: Mapping[str, str], tokenizer: Tokenizer) -> dict[str, list[str]]:
    """Characters of ``texts`` (utt -> normalized text) that no unit covers -> sorted utterance ids."""
    out: dict[str, set[str]] = {}
    for utt, text in texts.items():
        for ch in set(text):
            if not ch.isspace() and not tokenizer.covers(ch):
                out.setdefault(ch, set()).add(utt)
    return {ch: sorted(utts) for ch, utts in sorted(out.items())}


def build_tokenizer(from_model: str | None, kind: str, bpe_vocab_size: int, texts: dict[str, str],
                    out_dir: Path) -> Tokenizer:
    """A training run's units: a model dir's (``units.from_model``), else built from the transcripts
    ``texts`` (characters, or a sentencepiece BPE of ``bpe_vocab_size`` pieces trained into ``out_dir``)."""
    if from_model:
        return load_tokenizer(from_model)
    normalized = [normalize_text(t) for t in texts.values()]
    if kind == "bpe":
        return BpeTokenizer.train(normalized, bpe_vocab_size, out_dir)
    return CharTokenizer.build(normalized)
