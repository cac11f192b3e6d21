"""WER/CER scoring that agrees with NIST sclite, and sclite-style report files.

``score(refs, hyps)`` aligns every utterance's hypothesis with its reference and sums the errors;
``write_report(report, out_dir, extra)`` writes ``wer.json``, ``ref.trn``/``hyp.trn`` (sclite's trn
format, so ``sclite -r ref.trn trn -h hyp.trn trn -i rm`` re-scores them), ``errors.txt`` (sclite
``pralign``-style per-utterance alignments, worst first) and ``per_utt.tsv``.

Alignment. sclite does not minimise the *number* of errors (plain Levenshtein, what jiwer does); it
minimises a weighted cost, correct 0, substitution 4, insertion 3, deletion 3, and breaks ties
substitution < deletion < insertion. The two disagree on real data:

- the split of errors: ref ``a b`` / hyp ``b c`` is 2 substitutions for jiwer, 1 deletion + 1
  insertion for sclite;
- even the total: ref ``p q r a b`` / hyp ``a b x y z`` is 5 errors (100 %) for jiwer and 6 (120 %)
  for sclite, which prefers 3 deletions + 3 insertions (cost 18) over 5 substitutions (cost 20).

Since WER numbers are compared with Kaldi/ESPnet results that come from sclite (or from Kaldi's
``compute-wer``, whose Levenshtein totals sclite never beats), the alignment here is sclite's dynamic
programme, hand-written (``_align``, a few lines) because no library we depend on exposes it; the test
suite checks it against the real sclite binary. jiwer is kept as a cross-check of the lower bound:
``jiwer_errors`` gives the Levenshtein error count, which can only be smaller or equal.

CER follows ``sclite -c``: every word is split into characters and spaces are not counted, so
``ab cd`` vs ``abcd`` is 0 % CER (the space is a word boundary, scored by WER).

Inputs are already-normalised strings (``normalize`` may be given, e.g.
``asr_kd.data.units.normalize_text``, and is applied to both sides). Words are split on whitespace and
compared exactly (case-sensitive; normalise first). An utterance missing from ``hyps`` is scored as an
empty hypothesis (all deletions) and listed in ``ScoreReport.missing`` -- never dropped; a hypothesis
whose id has no reference is an error naming it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

from asr_kd.errors import AsrKdError

SUB_COST = 4
INS_COST = 3
DEL_COST = 3

# alignment operations: correct, substitution, deletion (ref word, no hyp), insertion (hyp word, no ref)
COR, SUB, DEL, INS = "C", "S", "D", "I"

REPORT_KEYS = ("wer", "cer", "num_utts", "num_words", "sub", "del", "ins")


class ScoringError(AsrKdError):
    """References and hypotheses cannot be scored together (unknown ids, nothing to score)."""


@dataclasses.dataclass(frozen=True)
class Counts:
    """Edit counts of one alignment: correct, substituted, deleted, inserted tokens."""

    cor: int = 0
    sub: int = 0
    dels: int = 0
    ins: int = 0

    @property
    def ref_len(self) -> int:
        return self.cor + self.sub + self.dels

    @property
    def errors(self) -> int:
        return self.sub + self.dels + self.ins

    def __add__(self, other: "Counts") -> "Counts":
        return Counts(self.cor + other.cor, self.sub + other.sub, self.dels + other.dels, self.ins + other.ins)


@dataclasses.dataclass(frozen=True)
class UttScore:
    """One utterance: its aligned word pairs ``(op, ref_word | None, hyp_word | None)`` and counts."""

    utt_id: str
    ref: tuple[str, ...]
    hyp: tuple[str, ...]
    alignment: tuple[tuple[str, str | None, str | None], ...]
    words: Counts
    chars: Counts
    missing: bool = False  # no hypothesis was given: scored as empty

    @property
    def wer(self) -> float:
        """Percent; ``inf`` when the reference is empty but words were inserted, 0 when both are empty."""
        return _rate(self.words)


@dataclasses.dataclass(frozen=True)
class ScoreReport:
    """Totals over all utterances. ``wer``/``cer`` are percentages, unrounded (print with 2 decimals)."""

    wer: float
    cer: float
    num_utts: int
    num_words: int
    num_chars: int
    cor: int
    sub: int
    dels: int  # ``del`` in wer.json (a Python keyword here)
    ins: int
    char_counts: Counts
    utts: dict[str, UttScore]
    missing: list[str]  # utterance ids without a hypothesis, scored as all deletions

    @property
    def errors(self) -> int:
        return self.sub + self.dels + self.ins

    def summary(self) -> dict:
        """The core ``wer.json`` fields (counts as integers, rates as unrounded percentages)."""
        return {"wer": self.wer, "cer": self.cer, "num_utts": self.num_utts, "num_words": self.num_words,
                "sub": self.sub, "del": self.dels, "ins": self.ins}

    def line(self) -> str:
        """One line in the style of Kaldi's ``%WER 12.34 [ 56 / 454, 3 ins, 10 del, 43 sub ]``."""
        return (f"%WER {self.wer:.2f} [ {self.errors} / {self.num_words}, {self.ins} ins, {self.dels} del, "
                f"{self.sub} sub ] %CER {self.cer:.2f} [{self.num_utts} utts"
                + (f", {len(self.missing)} without hypothesis" if self.missing else "") + "]")


def _rate(c: Counts) -> float:
    if c.ref_len == 0:
        return 0.0 if c.errors == 0 else math.inf
    return 100.0 * c.errors / c.ref_len


_OPS = (COR, SUB, DEL, INS)


def _align(ref: Sequence[str], hyp: Sequence[str]) -> list[tuple[str, str | None, str | None]]:
    """sclite's weighted edit-distance alignment (sub 4, ins 3, del 3; ties: sub, then del, then ins).

    Mirrors ``calculate_internal_cells`` of SCTK's ``net_dp.c`` for linear word strings; hand-written
    because jiwer/rapidfuzz only offer unit-cost Levenshtein, whose choices differ (module docstring).
    O(len(ref) * len(hyp)). A common suffix is aligned as correct without running the DP: with match
    cost 0, ``D(n, m) = D(n-1, m-1)`` when the last tokens are equal, so sclite's backtrace (which
    prefers the diagonal on ties) takes exactly that path -- the result is unchanged, only faster.
    """
    n, m = len(ref), len(hyp)
    suffix = 0
    while suffix < min(n, m) and ref[n - 1 - suffix] == hyp[m - 1 - suffix]:
        suffix += 1
    n, m = n - suffix, m - suffix
    back = _dp(ref[:n], hyp[:m])
    ops: list[tuple[str, str | None, str | None]] = [(COR, ref[n + t], hyp[m + t]) for t in reversed(range(suffix))]
    i, j = n, m
    while i > 0 or j > 0:
        op = _OPS[back[i][j]]
        if op in (COR, SUB):
            ops.append((op, ref[i - 1], hyp[j - 1]))
            i, j = i - 1, j - 1
        elif op == DEL:
            ops.append((DEL, ref[i - 1], None))
            i -= 1
        else:
            ops.append((INS, None, hyp[j - 1]))
            j -= 1
    ops.reverse()
    return ops


def _dp(ref: Sequence[str], hyp: Sequence[str]) -> list[list[int]]:
    """Back-pointer table (indexes into ``_OPS``) of sclite's DP; row 0 = insertions, column 0 = deletions."""
    n, m = len(ref), len(hyp)
    cost = [[0] * (m + 1) for _ in range(n + 1)]
    back = [[3] * (m + 1) for _ in range(n + 1)]
    for j in range(1, m + 1):
        cost[0][j] = cost[0][j - 1] + INS_COST
    for i in range(1, n + 1):
        cost[i][0] = cost[i - 1][0] + DEL_COST
        back[i][0] = 2
        row, prev, brow, r = cost[i], cost[i - 1], back[i], ref[i - 1]
        for j in range(1, m + 1):
            same = r == hyp[j - 1]
            sub = prev[j - 1] + (0 if same else SUB_COST)
            dele = prev[j] + DEL_COST
            ins = row[j - 1] + INS_COST
            if sub <= dele and sub <= ins:
                row[j], brow[j] = sub, (0 if same else 1)
            elif dele < ins:
                row[j], brow[j] = dele, 2
            else:
                row[j], brow[j] = ins, 3
    return back


def _count(ops: Iterable[tuple[str, str | None, str | None]]) -> Counts:
    n = {COR: 0, SUB: 0, DEL: 0, INS: 0}
    for op, _, _ in ops:
        n[op] += 1
    return Counts(n[COR], n[SUB], n[DEL], n[INS])


def align_words(ref: str, hyp: str) -> tuple[list[tuple[str, str | None, str | None]], Counts]:
    """Align two whitespace-separated strings like sclite; returns the ops and their counts."""
    ops = _align(ref.split(), hyp.split())
    return ops, _count(ops)


def char_counts(ref: str, hyp: str) -> Counts:
    """Character edit counts like ``sclite -c`` (words split into characters, spaces not counted)."""
    return _count(_align(list("".join(ref.split())), list("".join(hyp.split()))))


def jiwer_errors(ref: str, hyp: str) -> int:
    """Unit-cost Levenshtein word errors (jiwer): a lower bound of the sclite error count."""
    import jiwer

    r, h = ref.split(), hyp.split()
    if not r:
        return len(h)
    if not h:
        return len(r)
    out = jiwer.process_words(" ".join(r), " ".join(h))
    return out.substitutions + out.deletions + out.insertions


def score(refs: Mapping[str, str], hyps: Mapping[str, str], normalize: Callable[[str], str] | None = None) -> ScoreReport:
    """Score ``hyps`` against ``refs`` (both ``utt_id -> text``) like sclite.

    Every reference utterance is scored; one without a hypothesis counts as all deletions and is listed
    in ``missing``. A hypothesis whose id is not in ``refs`` raises ``ScoringError`` naming the ids.
    """
    if not refs:
        raise ScoringError("nothing to score: the reference set is empty")
    unknown = sorted(set(hyps) - set(refs))
    if unknown:
        raise ScoringError(f"{len(unknown)} hypothesis id(s) have no reference, e.g. {unknown[:5]}; "
                           "score hypotheses against the data dir they were decoded from")
    norm = normalize or (lambda s: s)
    utts: dict[str, UttScore] = {}
    missing: list[str] = []
    words_total, chars_total = Counts(), Counts()
    for utt in sorted(refs):
        ref = norm(refs[utt])
        is_missing = utt not in hyps
        if is_missing:
            missing.append(utt)
        hyp = "" if is_missing else norm(hyps[utt])
        ops, wc = align_words(ref, hyp)
        cc = char_counts(ref, hyp)
        utts[utt] = UttScore(utt, tuple(ref.split()), tuple(hyp.split()), tuple(ops), wc, cc, is_missing)
        words_total = words_total + wc
        chars_total = chars_total + cc
    if words_total.ref_len == 0:
        raise ScoringError(f"nothing to score: all {len(refs)} reference transcripts are empty")
    return ScoreReport(
        wer=_rate(words_total), cer=_rate(chars_total), num_utts=len(utts), num_words=words_total.ref_len,
        num_chars=chars_total.ref_len, cor=words_total.cor, sub=words_total.sub, dels=words_total.dels,
        ins=words_total.ins, char_counts=chars_total, utts=utts, missing=missing,
    )


# --------------------------------------------------------------------------------------- report files


def _check_trn_id(utt: str) -> None:
    if not utt or any(c.isspace() for c in utt) or "(" in utt or ")" in utt:
        raise ScoringError(f"utterance id {utt!r} cannot be written to a trn file (no spaces or parentheses allowed)")


def trn_line(text_words: Sequence[str], utt: str) -> str:
    """sclite trn line: ``words (utt_id)``; an empty text is `` (utt_id)``."""
    return f"{' '.join(text_words)} ({utt})"


def pralign_lines(ops: Sequence[tuple[str, str | None, str | None]]) -> tuple[str, str, str]:
    """REF/HYP/Eval lines as sclite's ``pralign``: errors upper-cased, ``*`` fill for a missing side."""
    ref_cols, hyp_cols, eval_cols = [], [], []
    for op, r, h in ops:
        if op == COR:
            rr, hh = r or "", h or ""
        elif op == SUB:
            rr, hh = (r or "").upper(), (h or "").upper()
        elif op == DEL:
            rr = (r or "").upper()
            hh = "*" * len(rr)
        else:
            hh = (h or "").upper()
            rr = "*" * len(hh)
        width = max(len(rr), len(hh), 1)
        ref_cols.append(rr.ljust(width))
        hyp_cols.append(hh.ljust(width))
        eval_cols.append(("" if op == COR else op).ljust(width))
    return ("REF:  " + " ".join(ref_cols), "HYP:  " + " ".join(hyp_cols), "Eval: " + " ".join(eval_cols))


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _fmt_rate(x: float) -> str:
    return "inf" if math.isinf(x) else f"{x:.2f}"


def write_report(report: ScoreReport, out_dir: str | os.PathLike, extra: Mapping | None = None) -> dict:
    """Write ``wer.json``, ``ref.trn``, ``hyp.trn``, ``errors.txt``, ``per_utt.tsv`` into ``out_dir``.

    ``wer.json`` holds exactly ``wer``, ``cer`` (percent, 2 decimals as sclite/Kaldi print them),
    ``num_utts``, ``num_words``, ``sub``, ``del``, ``ins`` plus the keys of ``extra`` (e.g. ``rtf``,
    ``latency_ms``); an ``extra`` key that would overwrite one of those is an error. Returns that dict.
    """
    extra = dict(extra or {})
    clash = sorted(set(extra) & set(REPORT_KEYS))
    if clash:
        raise ScoringError(f"write_report: extra keys {clash} would overwrite the scores; rename them")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    utt_ids = sorted(report.utts)
    for utt in utt_ids:
        _check_trn_id(utt)

    result = report.summary()
    result["wer"] = round(report.wer, 2)
    result["cer"] = round(report.cer, 2)
    result.update(extra)
    _atomic_write(out / "wer.json", json.dumps(result, indent=2, sort_keys=False) + "\n")
    _atomic_write(out / "ref.trn", "".join(trn_line(report.utts[u].ref, u) + "\n" for u in utt_ids))
    _atomic_write(out / "hyp.trn", "".join(trn_line(report.utts[u].hyp, u) + "\n" for u in utt_ids))

    rows = ["utt\twords\tsub\tdel\tins\twer"]
    for u in utt_ids:
        s = report.utts[u]
        rows.append(f"{u}\t{s.words.ref_len}\t{s.words.sub}\t{s.words.dels}\t{s.words.ins}\t{_fmt_rate(s.wer)}")
    _atomic_write(out / "per_utt.tsv", "\n".join(rows) + "\n")

    lines = [report.line(), ""]
    if report.missing:
        lines += [f"{len(report.missing)} utterance(s) had no hypothesis and are scored as empty: "
                  + " ".join(report.missing), ""]
    worst = sorted(utt_ids, key=lambda u: (-report.utts[u].words.errors, u))
    for u in worst:
        s = report.utts[u]
        w = s.words
        lines.append(f"id: ({u})" + ("  [no hypothesis]" if s.missing else ""))
        lines.append(f"Scores: (#C #S #D #I) {w.cor} {w.sub} {w.dels} {w.ins}  WER {_fmt_rate(s.wer)}%")
        lines.extend(pralign_lines(s.alignment))
        lines.append("")
    _atomic_write(out / "errors.txt", "\n".join(lines))
    return result
