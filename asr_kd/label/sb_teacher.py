"""SpeechBrain CTC teachers: an ``EncoderASR`` model directory loaded from local files only.

A directory as a SpeechBrain recipe publishes a CTC model (what ``EncoderASR.from_hparams`` loads)::

    hyperparams.yaml    HyperPyYAML: modules: {encoder: ...} (waveform -> CTC log-probabilities),
                        tokenizer (sentencepiece, or a CTCTextEncoder), decoding_function (a CTC
                        decoder: speechbrain.decoders.ctc_greedy_decode or a CTCBaseSearcher),
                        pretrainer (a Pretrainer listing the loadables), optional sample_rate /
                        audio_normalizer (default 16000 Hz), optional blank_index
    <loadable>.ckpt     one file per pretrainer loadable (asr.ckpt, tokenizer.ckpt, normalizer.ckpt ...),
                        or the file name its ``paths:`` entry gives, looked up in this directory

How it is loaded (not through ``EncoderASR.from_hparams``, whose fetching would symlink into a
``savedir``, fall back to the Hugging Face hub for a ``paths:`` entry that is not local, and unpickle
with whatever ``torch.load`` defaults to):

- ``hyperparams.yaml`` is code (HyperPyYAML instantiates what its ``!new:``/``!name:``/``!apply:``
  tags name, and its loader even executes ``!!python/object/apply:`` tags); every tag is checked
  against an allowlist (SpeechBrain model classes, ``torch.nn``, sentencepiece) on the composed
  document before anything is constructed (``check_hparams_tags``). A guard, not a sandbox: label
  only with a hyperparams.yaml you trust;
- ``HF_HUB_OFFLINE=1`` is set, and every checkpoint is read from this directory only: nothing is
  downloaded, nothing is written (no ``savedir``, no symlinks);
- torch checkpoints are read with ``torch.load(..., weights_only=True)`` and applied with a strict
  ``load_state_dict`` (missing or unexpected keys are an error naming the file); a checkpoint that
  needs full unpickling is refused, never unpickled. Sentencepiece models (protobuf) and
  CTCTextEncoder files (``ast.literal_eval`` text) are read by their own loaders; any other kind of
  loadable is refused;
- the recipe's ``decoding_function`` must be a CTC decoder (else: not a CTC model) but is replaced by
  greedy CTC before ``EncoderASR`` is built: only ``encode_batch`` is used, and a beam searcher would
  set up (and possibly fetch) a language model.

Output: natural-log CTC log-probabilities over the tokenizer's units (``EncoderASR.encode_batch``,
one utterance at a time so that padding cannot change a frame) at the encoder's frame rate, which is
measured at load time from the output lengths of 1 s and 2 s of input (40 ms for a 10 ms fbank
subsampled 4x; 20 ms for a wav2vec2 encoder). The waveform goes in as SpeechBrain's ``transcribe_file``
gives it: float mono at the model's rate (other rates are resampled here, logged once), no
normalization by us (the encoder does its own feature normalization).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
from pathlib import Path
from typing import Any

import torch

from asr_kd.errors import ModelDirError
from asr_kd.label.unit_map import TeacherVocab

log = logging.getLogger(__name__)

HPARAMS = "hyperparams.yaml"
SB_PREFIX = "speechbrain:"
PARAMFILE_EXT = ".ckpt"  # SpeechBrain's default checkpoint name: <loadable>.ckpt
WORD_MARK = "\u2581"  # sentencepiece's word boundary
# HyperPyYAML tags that build objects: allowed targets (prefix match), and SpeechBrain modules inside
# the allowed prefixes that fetch, unpickle, import files or run commands.
ALLOWED_TARGETS = ("speechbrain.", "torch.nn.", "torch.optim.", "sentencepiece.SentencePieceProcessor", "functools.partial")
DENIED_TARGETS = ("speechbrain.utils.superpowers", "speechbrain.utils.data_utils", "speechbrain.utils.fetching",
                  "speechbrain.utils.importutils", "speechbrain.utils.distributed", "speechbrain.utils.hpopt",
                  "speechbrain.utils.checkpoints", "speechbrain.dataio.dataio", "speechbrain.dataio.legacy",
                  "speechbrain.inference", "speechbrain.core")
ALLOWED_APPLY = ("torch.manual_seed",)
YAML_CORE = "tag:yaml.org,2002:"
YAML_PLAIN = ("str", "int", "float", "bool", "null", "map", "seq", "timestamp", "binary", "merge", "omap", "pairs", "set")
HYPERPYYAML_PLAIN = ("!ref", "!copy", "!tuple", "!placeholder", "!PLACEHOLDER")
PROBE_SECONDS = (1.0, 2.0)


def is_speechbrain_dir(d: Path) -> bool:
    return (d / HPARAMS).is_file()


def _tags(node: Any) -> list[tuple[str, int]]:
    """``(tag, line)`` of every node of a composed (not constructed) YAML document."""
    from ruamel.yaml.nodes import MappingNode, SequenceNode

    out, stack = [], [node]
    while stack:
        n = stack.pop()
        out.append((str(getattr(n.tag, "value", n.tag)), n.start_mark.line + 1))
        if isinstance(n, MappingNode):
            stack.extend(x for pair in n.value for x in pair)
        elif isinstance(n, SequenceNode):
            stack.extend(n.value)
    return sorted(out, key=lambda t: t[1])


def _tag_allowed(tag: str) -> bool:
    if tag.startswith(YAML_CORE) and tag[len(YAML_CORE):] in YAML_PLAIN:
        return True
    if tag in HYPERPYYAML_PLAIN:
        return True
    kind, _, target = tag.partition(":")
    if kind in ("!new", "!name"):
        if target.startswith("speechbrain.utils.parameter_transfer"):
            return target == "speechbrain.utils.parameter_transfer.Pretrainer"
        return target.startswith(ALLOWED_TARGETS) and not target.startswith(DENIED_TARGETS)
    return kind == "!apply" and target in ALLOWED_APPLY


def check_hparams_tags(path: Path, text: str) -> None:
    """Refuse YAML tags that could run arbitrary code (module docstring), before HyperPyYAML builds anything.

    The document is composed (parsed into nodes, nothing constructed) and every node's tag checked:
    plain YAML types, HyperPyYAML's ``!ref``/``!copy``/``!tuple``/``!placeholder``, ``!new:``/``!name:``
    of allowed targets, ``!apply:torch.manual_seed``. Everything else — ``!!python/object/apply:...``
    (which HyperPyYAML's loader would execute), ``!include:``, ``!module:``, other targets — is an
    error naming the file and line."""
    import ruamel.yaml

    try:
        root = ruamel.yaml.YAML(typ="rt").compose(text)
    except ruamel.yaml.YAMLError as exc:
        raise ModelDirError(f"{path}: not valid YAML: {exc}") from None
    if root is None:
        raise ModelDirError(f"{path}: empty")
    for tag, line in _tags(root):
        if not _tag_allowed(tag):
            shown = "!!" + tag[len(YAML_CORE):] if tag.startswith(YAML_CORE) else tag
            raise ModelDirError(f"{path}:{line}: refused: '{shown}' is not on asr-kd's list of what a SpeechBrain "
                                "teacher's hyperparams may build (SpeechBrain model classes, torch.nn, sentencepiece; no "
                                "python/object tags, no !apply/!include/!module, nothing that fetches, unpickles or "
                                "runs commands); a hyperparams.yaml is code: remove the line if you trust the rest")


def safe_state_dict(path: Path, loadable: str) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU; a pickle that needs more is refused, unread."""
    import pickle

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, AttributeError, TypeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelDirError(f"{path}: refused: the checkpoint of loadable '{loadable}' cannot be read with "
                            f"torch.load(weights_only=True) ({first}); asr-kd never fully unpickles a teacher "
                            "checkpoint, since a pickle can run code when loaded. Re-save it, in an environment you "
                            "trust, as a plain state dict: torch.save(module.state_dict(), PATH)") from None


def load_loadable(obj: Any, path: Path, name: str) -> None:
    """Apply one pretrainer loadable's file to ``obj``, safely (module docstring)."""
    from speechbrain.dataio.encoder import CategoricalEncoder
    from speechbrain.processing.features import InputNormalization
    from speechbrain.utils.checkpoints import hook_on_loading_state_dict_checkpoint

    try:
        import sentencepiece as spm
    except ImportError:  # pragma: no cover - a dependency of speechbrain
        spm = None
    if spm is not None and isinstance(obj, spm.SentencePieceProcessor):
        try:
            obj.load(str(path))
        except (OSError, RuntimeError) as exc:
            raise ModelDirError(f"{path}: not a sentencepiece model (loadable '{name}'): {exc}") from None
        return
    if isinstance(obj, CategoricalEncoder):
        try:
            obj.load(path)
        except (OSError, ValueError, SyntaxError) as exc:
            raise ModelDirError(f"{path}: cannot read the label encoder (loadable '{name}'): {exc}") from None
        return
    if isinstance(obj, InputNormalization):
        stats = safe_state_dict(path, name)
        if not isinstance(stats, dict) or not {"glob_mean", "glob_std", "count"} <= set(stats):
            raise ModelDirError(f"{path}: loadable '{name}' is an InputNormalization but the file holds no "
                                "glob_mean/glob_std/count statistics")
        obj._load_statistics_dict(stats)
        return
    if isinstance(obj, torch.nn.Module):
        state = safe_state_dict(path, name)
        if not isinstance(state, dict):
            raise ModelDirError(f"{path}: loadable '{name}' should be a state dict, got {type(state).__name__}")
        state = hook_on_loading_state_dict_checkpoint(state)
        missing, unexpected = obj.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ModelDirError(f"{path}: does not fit loadable '{name}' of {HPARAMS}: missing keys {list(missing)[:5]}, "
                                f"unexpected keys {list(unexpected)[:5]}; the checkpoint belongs to another model")
        return
    raise ModelDirError(f"loadable '{name}' ({type(obj).__name__}, file {path.name}): asr-kd does not know how to load "
                        "this kind of object safely (it loads torch modules, InputNormalization, sentencepiece "
                        "models and CTCTextEncoder label files)")


def checkpoint_files(d: Path, pretrainer: Any) -> dict[str, Path]:
    """Loadable name -> its file in ``d`` (``<name>.ckpt``, or the file name of its ``paths:`` entry)."""
    files = {}
    for name in pretrainer.loadables:
        if not pretrainer.is_loadable(name):
            continue
        given = pretrainer.paths.get(name)
        filename = str(given).rsplit("/", 1)[-1] if given else name + PARAMFILE_EXT
        path = d / filename
        if given and Path(str(given)).resolve() != path.resolve():
            log.info("%s: pretrainer path %s of loadable '%s' is read from this directory as %s (nothing is fetched)",
                     d, given, name, path)
        if not path.is_file():
            raise ModelDirError(f"{path}: missing: {d / HPARAMS}'s pretrainer lists loadable '{name}' and this file "
                                f"holds its parameters; put the checkpoint in {d} (asr-kd never downloads it)")
        files[name] = path
    return files


def sb_fingerprint(d: Path, files: dict[str, Path]) -> str:
    """sha256 over hyperparams.yaml and the loadables' files (by loadable name), first 16 hex digits."""
    h = hashlib.sha256()
    for name, f in [(HPARAMS, d / HPARAMS)] + sorted(files.items()):
        h.update(name.encode())
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:16]


def _is_ctc_decoder(fn: Any) -> bool:
    """A SpeechBrain CTC decoder: a ``CTCBaseSearcher`` class, or a ``speechbrain.decoders`` CTC function
    (e.g. ``ctc_greedy_decode``), possibly wrapped in ``functools.partial`` (what ``!name:`` gives)."""
    from speechbrain.decoders.ctc import CTCBaseSearcher

    target = fn.func if isinstance(fn, functools.partial) else fn
    if isinstance(target, type):
        return issubclass(target, CTCBaseSearcher)
    return (callable(target) and getattr(target, "__module__", "").startswith("speechbrain.decoders")
            and "ctc" in getattr(target, "__name__", "").lower())


def tokenizer_vocab(tokenizer: Any, blank_id: int, hparams_path: Path) -> tuple[TeacherVocab, str]:
    """The teacher's units by output id and their kind (``sentencepiece-char``, ``sentencepiece-pieces``,
    ``label-encoder``); multi-character pieces make a ``pieces`` vocabulary (a BPE/unigram tokenizer)."""
    from speechbrain.dataio.encoder import CTCTextEncoder

    try:
        import sentencepiece as spm
    except ImportError:  # pragma: no cover
        spm = None
    if spm is not None and isinstance(tokenizer, spm.SentencePieceProcessor):
        n = tokenizer.vocab_size()
        symbols = [tokenizer.id_to_piece(i) for i in range(n)]
        specials = {symbols[i] for i in range(n) if tokenizer.is_control(i) or tokenizer.is_unused(i)}
        unk = symbols[tokenizer.unk_id()] if 0 <= tokenizer.unk_id() < n else None
        ordinary = [s for i, s in enumerate(symbols) if i != blank_id and s not in specials and s != unk]
        multi = [s for s in ordinary if len(s.replace(WORD_MARK, "")) > 1]
        kind = "sentencepiece-pieces" if multi else "sentencepiece-char"
        return TeacherVocab(symbols=symbols, blank_id=blank_id, word_delimiter=WORD_MARK, unk=unk,
                            specials=frozenset(specials), kind="pieces" if multi else "char"), kind
    if isinstance(tokenizer, CTCTextEncoder):
        n = len(tokenizer.ind2lab)
        symbols = [str(tokenizer.ind2lab[i]) for i in range(n)]
        if hasattr(tokenizer, "blank_label"):
            blank_id = int(tokenizer.lab2ind[tokenizer.blank_label])
        delim = next((s for s in (WORD_MARK, " ", "|") if s in symbols), None)
        unk = getattr(tokenizer, "unk_label", None)
        specials = {str(getattr(tokenizer, a)) for a in ("bos_label", "eos_label") if hasattr(tokenizer, a)}
        multi = [s for i, s in enumerate(symbols) if i != blank_id and s not in specials and s != unk and len(s) > 1]
        return TeacherVocab(symbols=symbols, blank_id=blank_id, word_delimiter=delim, unk=unk, specials=frozenset(specials),
                            kind="pieces" if multi else "char"), "label-encoder"
    raise ModelDirError(f"{hparams_path}: tokenizer is a {type(tokenizer).__name__}; a SpeechBrain CTC teacher needs a "
                        "sentencepiece.SentencePieceProcessor or a speechbrain CTCTextEncoder to name its output units")


class SbCtcTeacher:
    """A local SpeechBrain EncoderASR CTC directory behind the teacher protocol (``asr_kd.label.teacher``)."""

    kind = "sb-ctc"
    architecture = "EncoderASR"

    def __init__(self, model_dir: str | Path, device: str | torch.device = "cpu"):
        d = Path(model_dir)
        self.path = d
        hp_path = d / HPARAMS
        if not hp_path.is_file():
            raise ModelDirError(f"{hp_path}: missing; a SpeechBrain teacher directory needs its hyperparams.yaml")
        text = hp_path.read_text(encoding="utf-8")
        check_hparams_tags(hp_path, text)
        os.environ["HF_HUB_OFFLINE"] = "1"  # a HF-backed encoder (wav2vec2 ...) must find its files locally
        try:
            from hyperpyyaml import load_hyperpyyaml
            from speechbrain.decoders import ctc_greedy_decode
            from speechbrain.inference.ASR import EncoderASR
            from speechbrain.utils.parameter_transfer import Pretrainer
        except ImportError as exc:  # pragma: no cover - speechbrain is a core dependency
            raise ModelDirError(f"SpeechBrain teachers need speechbrain ({exc})") from None
        try:
            hparams = load_hyperpyyaml(text)
        except Exception as exc:  # HyperPyYAML raises anything its constructors raise
            raise ModelDirError(f"{hp_path}: cannot build the model it describes: {type(exc).__name__}: {exc}") from None
        problems = []
        modules = hparams.get("modules")
        if not isinstance(modules, dict) or not isinstance(modules.get("encoder"), torch.nn.Module):
            problems.append("'modules' must hold an 'encoder' module (waveform -> CTC log-probabilities)")
        for key in ("tokenizer", "decoding_function"):
            if key not in hparams:
                problems.append(f"no '{key}'")
        pretrainer = hparams.get("pretrainer")
        if not isinstance(pretrainer, Pretrainer):
            problems.append("'pretrainer' must be a speechbrain.utils.parameter_transfer.Pretrainer listing the checkpoints")
        if "decoding_function" in hparams and not _is_ctc_decoder(hparams["decoding_function"]):
            problems.append(f"decoding_function {hparams['decoding_function']!r} is not a CTC decoder")
        if problems:
            raise ModelDirError(f"{hp_path}: not a SpeechBrain EncoderASR CTC model: {'; '.join(problems)}. asr-kd takes "
                                "EncoderASR CTC models (encoder ending in CTC log-probabilities); an attention "
                                "decoder model (EncoderDecoderASR) writes text: transcribe with it and train on the "
                                "transcripts")
        files = checkpoint_files(d, pretrainer)
        for name, path in files.items():
            load_loadable(pretrainer.loadables[name], path, name)
        self.files = files
        self.fingerprint = sb_fingerprint(d, files)
        hparams["savedir"] = None
        blank = hparams.get("blank_index")
        fn = hparams["decoding_function"]
        if blank is None and hasattr(fn, "keywords"):
            blank = fn.keywords.get("blank_id", fn.keywords.get("blank_index"))
        blank = int(blank or 0)
        # only encode_batch is used: a greedy decoder instead of the recipe's, so that EncoderASR does not set
        # up a beam searcher (which may fetch a KenLM model)
        hparams["decoding_function"] = functools.partial(ctc_greedy_decode, blank_id=blank)
        try:
            self.asr = EncoderASR(modules=modules, hparams=hparams, run_opts={"device": str(device)})
        except (ValueError, TypeError, AttributeError) as exc:
            raise ModelDirError(f"{hp_path}: SpeechBrain's EncoderASR refused it: {exc}") from None
        normalizer = hparams.get("audio_normalizer")
        self.sample_rate = int(normalizer.sample_rate if normalizer is not None else hparams.get("sample_rate", 16000))
        self.vocab, self.tokenizer_kind = tokenizer_vocab(hparams["tokenizer"], blank, hp_path)
        self.units = self.vocab.symbols
        self.frame_shift_ms = self._probe(hp_path)
        self._resample_logged: set[int] = set()

    @property
    def device(self) -> torch.device:
        return torch.device(self.asr.device)

    def _probe(self, hp_path: Path) -> float:
        """Run 1 s and 2 s of low noise: checks the output is CTC log-probabilities over the tokenizer's
        units and measures the frame shift in ms (input seconds per extra output frame)."""
        g = torch.Generator().manual_seed(0)
        frames = []
        for seconds in PROBE_SECONDS:
            n = int(seconds * self.sample_rate)
            lp = self._encode(0.01 * torch.randn(n, generator=g))
            if lp.dim() != 2:
                raise ModelDirError(f"{hp_path}: the encoder returns shape {tuple(lp.shape)} per utterance; a CTC "
                                    "teacher's encoder must return (frames, units) log-probabilities")
            if lp.shape[-1] != len(self.units):
                raise ModelDirError(f"{hp_path}: the encoder has {lp.shape[-1]} outputs but the tokenizer has "
                                    f"{len(self.units)} units; they do not belong together")
            mass = lp.float().logsumexp(-1)
            if not torch.allclose(mass, torch.zeros_like(mass), atol=1e-3):
                raise ModelDirError(f"{hp_path}: the encoder's outputs are not CTC log-probabilities (per frame "
                                    f"log-sum-exp {float(mass.mean()):.3f}, not 0); an EncoderASR CTC encoder ends in "
                                    "a log-softmax (speechbrain.nnet.activations.Softmax(apply_log=True))")
            frames.append(lp.shape[0])
        if frames[1] <= frames[0]:
            raise ModelDirError(f"{hp_path}: the encoder's output length does not grow with the input "
                                f"({frames[0]} frames for 1 s, {frames[1]} for 2 s); not a frame-level CTC model")
        ms = 1000.0 * (PROBE_SECONDS[1] - PROBE_SECONDS[0]) / (frames[1] - frames[0])
        return round(ms, 3)

    def _encode(self, wave: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            out = self.asr.encode_batch(wave[None].to(self.device), torch.ones(1, device=self.device))
        if isinstance(out, (tuple, list)):
            out = out[0]
        return out[0].float().cpu()

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "path": str(self.path.resolve()), "architecture": self.architecture,
                "fingerprint": self.fingerprint, "frame_shift_ms": self.frame_shift_ms, "frame_shift_source": "measured",
                "sample_rate": self.sample_rate, "tokenizer": self.tokenizer_kind,
                "checkpoints": {k: v.name for k, v in self.files.items()}}

    def prepare(self, waveforms: list[torch.Tensor], sample_rate: int) -> list[torch.Tensor]:
        """Resample to the model's rate (logged once per input rate); no normalization."""
        out = []
        for w in waveforms:
            w = w.float()
            if sample_rate != self.sample_rate:
                import torchaudio

                if sample_rate not in self._resample_logged:
                    log.info("%s: resampling input audio from %d Hz to the model's %d Hz", self.path, sample_rate,
                             self.sample_rate)
                    self._resample_logged.add(sample_rate)
                w = torchaudio.functional.resample(w, orig_freq=sample_rate, new_freq=self.sample_rate)
            out.append(w)
        return out

    @torch.no_grad()
    def log_probs(self, waveforms: list[torch.Tensor], sample_rate: int) -> tuple[torch.Tensor, torch.Tensor]:
        """1-D waveforms at ``sample_rate`` -> ``(log_probs (B, T, V), lengths (B,))`` at ``frame_shift_ms`` frames."""
        outs = [torch.log_softmax(self._encode(w), dim=-1) for w in self.prepare(waveforms, sample_rate)]
        lengths = torch.tensor([o.shape[0] for o in outs], dtype=torch.long)
        T = int(lengths.max()) if outs else 0
        out = torch.full((len(outs), T, len(self.units)), float("-inf"))
        for i, o in enumerate(outs):
            out[i, : o.shape[0]] = o
        return out, lengths

