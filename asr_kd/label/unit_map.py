"""Map a foreign teacher's output units onto our ``tokens.txt`` (the student's units).

A Hugging Face CTC teacher speaks its own vocabulary (``vocab.json``: e.g. upper-case letters, ``|``
between words, ``<pad>`` as the CTC blank). Its per-frame distributions are moved onto our units by a
many-to-one table, teacher id -> student id or *unmapped*:

Automatic rules, in order, for each teacher symbol ``s``:

1. the teacher's blank (``<pad>``, the model's ``pad_token_id``) -> ``<blk>`` (id 0);
2. the word delimiter (``|``) -> ``▁`` (our word boundary);
3. the unknown token (``<unk>``) -> ``<unk>``;
4. other special tokens (``<s>``, ``</s>``, added tokens) -> unmapped;
5. otherwise ``NFKC(s).lower()`` (case fold) -> the student unit with that symbol, if there is one;
   else unmapped.

A *mapping file* overrides the automatic table line by line: ``TEACHER_SYMBOL STUDENT_SYMBOL`` (one
pair per line, whitespace separated, ``#`` comments); ``-`` as the student symbol marks the teacher
unit unmapped. Symbols are taken literally (no case folding).

Probability mass of unmapped teacher units (per frame, in probability, not nats) is measured and
handled by the *unmapped rule*:

- ``renormalize`` (default): drop it and rescale the mapped mass to sum to 1 (a frame whose mass is
  entirely unmapped becomes blank);
- ``blank``: give it to the blank (``<blk>``), i.e. treat it as "no unit emitted".

A teacher whose units do not correspond to ours (fewer than ``MIN_MAPPED_FRACTION`` of the student's
ordinary units receive some teacher unit, e.g. BPE pieces against characters; a teacher whose
vocabulary is marked as multi-character pieces (``TeacherVocab.kind``, e.g. a sentencepiece BPE
model, which also holds every single character) against a character student; or a BPE student
without a mapping file) is refused: frame-level distillation needs a shared
unit inventory; the message points to the sequence-level path (``asr-kd pseudo-label``: the teacher's
transcripts, tokenized in the student's own units, as CTC training data).
"""

from __future__ import annotations

import dataclasses
import unicodedata
from pathlib import Path
from typing import Any, Literal, Sequence

import torch

from asr_kd.data.units import BLANK, UNK, WORD_BOUNDARY, Tokenizer
from asr_kd.errors import UnitsError

UnmappedRule = Literal["renormalize", "blank"]
UNMAPPED_RULES = ("renormalize", "blank")
MIN_MAPPED_FRACTION = 0.5  # of the student's ordinary units (not blank, unk, word boundary)
DROP = "-"
SEQUENCE_LEVEL_HINT = ("frame-level distillation needs the teacher and the student to share units; for a teacher "
                       "with other units (BPE pieces, words, another alphabet) distill at the sequence level instead: "
                       "'asr-kd pseudo-label --model TEACHER --data DATA --out DATA_PSEUDO' writes its transcripts as a "
                       "data dir the student trains CTC on (docs/distill-from-your-own-model.md)")


@dataclasses.dataclass(frozen=True)
class TeacherVocab:
    """A foreign teacher's units: ``symbols`` by output id, and which of them are special."""

    symbols: list[str]
    blank_id: int
    word_delimiter: str | None = "|"
    unk: str | None = "<unk>"
    specials: frozenset[str] = frozenset()
    kind: str = "char"  # "char": one character per unit; "pieces": multi-character units (BPE, unigram, words)


@dataclasses.dataclass
class UnitMap:
    """Teacher id -> student id (``None``: unmapped), and the rule for the unmapped mass."""

    teacher_symbols: list[str]
    student_symbols: list[str]
    targets: list[int | None]
    rule: UnmappedRule = "renormalize"
    source: str = "auto"  # "auto" or "auto+file:PATH"

    def __post_init__(self) -> None:
        if self.rule not in UNMAPPED_RULES:
            raise UnitsError(f"unmapped rule must be one of {UNMAPPED_RULES}, got {self.rule!r}")
        if len(self.targets) != len(self.teacher_symbols):
            raise UnitsError(f"unit map has {len(self.targets)} entries for {len(self.teacher_symbols)} teacher units")
        v_t, v_s = len(self.teacher_symbols), len(self.student_symbols)
        matrix = torch.zeros(v_t, v_s)
        for t, s in enumerate(self.targets):
            if s is not None:
                matrix[t, s] = 1.0
        self._matrix = matrix
        self._unmapped = torch.tensor([s is None for s in self.targets])

    @property
    def unmapped_symbols(self) -> list[str]:
        return [sym for sym, s in zip(self.teacher_symbols, self.targets) if s is None]

    @property
    def uncovered_student_symbols(self) -> list[str]:
        """Student units (other than ``<unk>``) no teacher unit maps to: the teacher never gives them mass."""
        hit = {s for s in self.targets if s is not None}
        return [sym for i, sym in enumerate(self.student_symbols) if i not in hit and sym != UNK]

    def apply(self, probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``probs (..., V_teacher)`` probabilities -> ``(probs (..., V_student), unmapped (...))``.

        ``unmapped`` is the probability mass (0..1) of unmapped teacher units per frame, measured
        before the rule is applied; the returned distributions sum to 1 under either rule."""
        if probs.shape[-1] != len(self.teacher_symbols):
            raise UnitsError(f"teacher output has {probs.shape[-1]} units but its vocabulary has {len(self.teacher_symbols)}")
        p = probs.float()
        mapped = p @ self._matrix.to(p.device)
        unmapped = p[..., self._unmapped.to(p.device)].sum(-1)
        if self.rule == "blank":
            mapped[..., 0] += unmapped
        else:
            kept = mapped.sum(-1, keepdim=True)
            empty = kept <= 1e-12
            mapped = torch.where(empty, torch.zeros_like(mapped), mapped / kept.clamp_min(1e-12))
            mapped[..., 0] += empty[..., 0].to(mapped.dtype)
        return mapped, unmapped

    def describe(self) -> dict[str, Any]:
        """JSON summary recorded in the store's meta."""
        return {"rule": self.rule, "source": self.source, "teacher_units": len(self.teacher_symbols),
                "mapped": sum(s is not None for s in self.targets), "unmapped_symbols": self.unmapped_symbols,
                "uncovered_student_symbols": self.uncovered_student_symbols}


def _fold(symbol: str) -> str:
    return unicodedata.normalize("NFKC", symbol).lower()


def read_mapping_file(path: str | Path) -> dict[str, str | None]:
    """``TEACHER_SYMBOL STUDENT_SYMBOL`` per line (``-``: unmapped); errors name the file and line."""
    p = Path(path)
    if not p.is_file():
        raise UnitsError(f"{p}: unit mapping file not found")
    out: dict[str, str | None] = {}
    for lineno, line in enumerate(p.read_text(encoding="utf-8").splitlines(), start=1):
        line = line.split("#", 1)[0].strip() if not line.startswith("#") else ""
        if not line:
            continue
        parts = line.split()
        if len(parts) != 2:
            raise UnitsError(f"{p}:{lineno}: expected 'TEACHER_SYMBOL STUDENT_SYMBOL' (or '-' for unmapped), got {line!r}")
        if parts[0] in out:
            raise UnitsError(f"{p}:{lineno}: teacher symbol {parts[0]!r} mapped twice")
        out[parts[0]] = None if parts[1] == DROP else parts[1]
    return out


def build_unit_map(vocab: TeacherVocab, student: Tokenizer, mapping_file: str | Path | None = None,
                   rule: UnmappedRule = "renormalize", teacher_name: str = "teacher") -> UnitMap:
    """The automatic table (module docstring), overridden by ``mapping_file``; refuses teachers whose
    units do not correspond to the student's (``UnitsError`` pointing to the sequence-level path)."""
    student_symbols: Sequence[str] = student.symbols
    if getattr(student, "kind", "char") != "char" and mapping_file is None:
        raise UnitsError(f"{teacher_name}: its units are characters but the student's are {student.kind} pieces; "
                         f"{SEQUENCE_LEVEL_HINT}")
    if vocab.kind != "char" and getattr(student, "kind", "char") == "char" and mapping_file is None:
        pieces = [s for i, s in enumerate(vocab.symbols) if i != vocab.blank_id and len(s.replace(WORD_BOUNDARY, "")) > 1]
        raise UnitsError(f"{teacher_name}: its units are multi-character pieces (e.g. {pieces[:5]}) but the student's are "
                         f"characters; mapping only the single-character pieces would drop most of its mass. "
                         f"{SEQUENCE_LEVEL_HINT}")
    ids = {s: i for i, s in enumerate(student_symbols)}
    targets: list[int | None] = []
    for t, sym in enumerate(vocab.symbols):
        if t == vocab.blank_id:
            targets.append(ids[BLANK])
        elif vocab.word_delimiter is not None and sym == vocab.word_delimiter:
            targets.append(ids.get(WORD_BOUNDARY))
        elif vocab.unk is not None and sym == vocab.unk:
            targets.append(ids.get(UNK))
        elif sym in vocab.specials:
            targets.append(None)
        else:
            s = ids.get(_fold(sym))
            targets.append(s if s is not None and s > ids.get(UNK, 1) else None)  # never onto our blank/unk spelling
    source = "auto"
    if mapping_file is not None:
        overrides = read_mapping_file(mapping_file)
        teacher_ids = {s: i for i, s in enumerate(vocab.symbols)}
        for t_sym, s_sym in overrides.items():
            if t_sym not in teacher_ids:
                raise UnitsError(f"{mapping_file}: teacher symbol {t_sym!r} is not in {teacher_name}'s vocabulary")
            if s_sym is not None and s_sym not in ids:
                raise UnitsError(f"{mapping_file}: student symbol {s_sym!r} is not in the student's tokens.txt")
            targets[teacher_ids[t_sym]] = None if s_sym is None else ids[s_sym]
        source = f"auto+file:{Path(mapping_file).resolve()}"
    ordinary = [i for i, sym in enumerate(student_symbols) if sym not in (BLANK, UNK, WORD_BOUNDARY)]
    covered = set(targets) & set(ordinary)
    if ordinary and len(covered) < MIN_MAPPED_FRACTION * len(ordinary):
        examples = [s for s, t in zip(vocab.symbols, targets) if t is None and s not in vocab.specials][:8]
        raise UnitsError(f"{teacher_name}: only {len(covered)} of the student's {len(ordinary)} units get a teacher unit "
                         f"(teacher units that map to none: e.g. {examples}); the units do not correspond. "
                         f"{SEQUENCE_LEVEL_HINT}")
    return UnitMap(list(vocab.symbols), list(student_symbols), targets, rule=rule, source=source)
