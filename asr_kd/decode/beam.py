"""CTC beam search: our CTC prefix beam search, plus torchaudio's flashlight decoder for LM fusion.

``torchaudio.models.decoder.ctc_decoder`` (torchaudio 2.11) is a thin wrapper around the
``flashlight-text`` package, which torchaudio does not bundle; we pin ``flashlight-text==0.0.7``
(``pyproject.toml``, ``environment.yml``). Its wheel ships the decoders (lexicon and lexicon-free,
CTC and seq2seq) and a built-in KenLM binding (``flashlight.lib.text.decoder.KenLM``, ARPA or binary
models), so word-level LM shallow fusion with a lexicon needs no separate ``kenlm`` package.

Lexicon-free decoding (the default, no LM) does not use flashlight: flashlight's lexicon-free mode
treats the word-boundary unit as "silence" with its own scoring, which is not plain CTC for our
character units. It runs ``prefix_beam_search`` below: the standard CTC prefix beam search (Graves
2012; Hannun et al. 2014) over unit ids, which sums over all alignments of a hypothesis (unlike
greedy best path). SpeechBrain's ``CTCPrefixBeamSearcher`` was not used because it returns only
text, treats any vocabulary containing a ``▁``-prefixed symbol as SentencePiece (our character units
use ``▁`` as the word boundary), and its LM needs the ``kenlm`` Python package, which we do not install.
Where flashlight-text is missing (an environment that skipped the pin; ``flashlight_available()``),
asking for an LM or lexicon raises ``ConfigError`` saying what to install.
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Protocol, Sequence

import torch

from asr_kd.errors import ConfigError

WORD_BOUNDARY = "▁"
_NEG_INF = float("-inf")


class UnitInventory(Protocol):
    """What decoding needs from a tokenizer (``asr_kd.data.units.Tokenizer`` satisfies it)."""

    symbols: list[str]
    blank_id: int

    def decode(self, ids: Sequence[int]) -> str: ...


def _logaddexp(a: float, b: float) -> float:
    if a == _NEG_INF:
        return b
    if b == _NEG_INF:
        return a
    m = max(a, b)
    return m + math.log1p(math.exp(-abs(a - b)))


def prefix_beam_search(log_probs: torch.Tensor, beam_size: int = 10, blank_id: int = 0,
                       token_beam: int | None = None) -> list[tuple[list[int], float]]:
    """CTC prefix beam search for one utterance.

    ``log_probs (T, V)`` frame log-probabilities. Keeps ``beam_size`` prefixes, each with the log
    probability of all its alignments ending in blank / non-blank; per frame only the ``token_beam``
    (default ``beam_size``) most likely units are expanded. Returns ``(ids, log_prob)`` best first.
    Hand-written for the reason in the module docstring; O(T x beam x token_beam) Python steps.
    """
    if log_probs.dim() != 2:
        raise ValueError(f"log_probs must be (T, V), got shape {tuple(log_probs.shape)}")
    k = min(token_beam or beam_size, log_probs.shape[1])
    lp = log_probs.detach().to("cpu", torch.float64)
    top_vals, top_ids = lp.topk(k, dim=-1)
    # prefix -> [log P(prefix, last frame blank), log P(prefix, last frame non-blank)]
    beams: dict[tuple[int, ...], list[float]] = {(): [0.0, _NEG_INF]}
    for t in range(lp.shape[0]):
        blank_lp = float(lp[t, blank_id])
        nxt: dict[tuple[int, ...], list[float]] = defaultdict(lambda: [_NEG_INF, _NEG_INF])
        for prefix, (pb, pnb) in beams.items():
            total = _logaddexp(pb, pnb)
            stay = nxt[prefix]
            stay[0] = _logaddexp(stay[0], total + blank_lp)
            last = prefix[-1] if prefix else None
            for val, tok in zip(top_vals[t].tolist(), top_ids[t].tolist()):
                if tok == blank_id:
                    continue
                ext = nxt[prefix + (tok,)]
                if tok == last:
                    stay[1] = _logaddexp(stay[1], pnb + val)  # repeat collapses into the same unit
                    ext[1] = _logaddexp(ext[1], pb + val)  # a blank in between: a new unit
                else:
                    ext[1] = _logaddexp(ext[1], total + val)
        ranked = sorted(nxt.items(), key=lambda kv: _logaddexp(*kv[1]), reverse=True)
        beams = dict(ranked[:beam_size])
    return [(list(p), _logaddexp(*s)) for p, s in sorted(beams.items(), key=lambda kv: _logaddexp(*kv[1]), reverse=True)]


def flashlight_available() -> bool:
    """True when torchaudio's ctc_decoder can be used (the flashlight-text package is installed)."""
    try:
        from torchaudio.models.decoder import _ctc_decoder  # noqa: F401
    except (ImportError, RuntimeError):
        return False
    return True


class BeamSearchDecoder:
    """CTC beam search over a model's log-probs, returning unit ids (and text via the tokenizer).

    Lexicon-free by default. ``lm_path`` (KenLM ARPA or binary) with ``lexicon_path`` (``word
    spelling...`` per line, units space separated, words ending in ``▁``) enables word-level shallow
    fusion with weight ``lm_weight`` and insertion bonus ``word_score``; both need flashlight-text.
    ``backend`` is ``"flashlight"`` or ``"prefix"`` (chosen automatically).
    """

    def __init__(self, tokenizer: UnitInventory, beam_size: int = 10, lm_path: str | Path | None = None,
                 lexicon_path: str | Path | None = None, lm_weight: float = 0.5, word_score: float = 0.0):
        if beam_size < 1:
            raise ConfigError(f"beam_size must be >= 1, got {beam_size}")
        self.tokenizer = tokenizer
        self.beam_size = beam_size
        self.blank_id = tokenizer.blank_id
        for name, path in (("lm", lm_path), ("lexicon", lexicon_path)):
            if path is not None and not Path(path).is_file():
                raise ConfigError(f"{path}: {name} file not found")
        # Lexicon-free search uses our CTC prefix beam search (tested against exhaustive search):
        # flashlight's lexicon-free mode treats the word-boundary unit as "silence" with its own
        # scoring, which is not plain CTC for character units. flashlight is used for LM fusion only.
        if (lm_path is not None or lexicon_path is not None) and flashlight_available():
            from torchaudio.models.decoder import ctc_decoder

            symbols = list(tokenizer.symbols)
            sil = WORD_BOUNDARY if WORD_BOUNDARY in symbols else symbols[self.blank_id]
            self._sil_id = symbols.index(sil)
            self._decoder = ctc_decoder(
                lexicon=str(lexicon_path) if lexicon_path else None, tokens=symbols,
                lm=str(lm_path) if lm_path else None, nbest=1, beam_size=beam_size, lm_weight=lm_weight,
                word_score=word_score, blank_token=symbols[self.blank_id], sil_token=sil,
                unk_word="<unk>",
            )
            self.backend = "flashlight"
        else:
            if lm_path is not None or lexicon_path is not None:
                raise ConfigError(
                    "beam search with a language model or lexicon needs torchaudio's flashlight decoder: "
                    "install the 'flashlight-text' package (pip install flashlight-text), or decode without "
                    "--lm/--lexicon")
            self._decoder = None
            self.backend = "prefix"

    def decode(self, log_probs: torch.Tensor, lengths: torch.Tensor | None = None) -> list[list[int]]:
        """``log_probs (B, T, V)``, ``lengths (B,)`` output frames -> best unit ids per utterance."""
        if log_probs.dim() != 3:
            raise ValueError(f"log_probs must be (B, T, V), got shape {tuple(log_probs.shape)}")
        lens = [log_probs.shape[1]] * log_probs.shape[0] if lengths is None else [int(n) for n in lengths.cpu()]
        if self._decoder is not None:
            emissions = log_probs.detach().to("cpu", torch.float32).contiguous()
            results = self._decoder(emissions, torch.tensor(lens, dtype=torch.int32))
            out = []
            for hyps in results:
                ids = hyps[0].tokens.tolist() if hyps else []
                # flashlight brackets hypotheses with the silence (word boundary) unit
                while ids and ids[0] == self._sil_id:
                    ids.pop(0)
                while ids and ids[-1] == self._sil_id:
                    ids.pop()
                out.append(ids)
            return out
        return [prefix_beam_search(log_probs[b, :n], self.beam_size, self.blank_id)[0][0] for b, n in enumerate(lens)]

    def decode_text(self, log_probs: torch.Tensor, lengths: torch.Tensor | None = None) -> list[str]:
        """Like ``decode`` but returns text (``tokenizer.decode``)."""
        return [self.tokenizer.decode(ids) for ids in self.decode(log_probs, lengths)]
