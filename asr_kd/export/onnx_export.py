"""Export a streaming student's chunk step to ONNX (float, or int8 with dynamic quantization).

The graph is one call of ``forward_chunk`` with global CMVN in front of it, batch 1::

    inputs   fbank            (1, frames, F) float32  raw log-mel fbank, 10 ms frames; frames is dynamic
                                                      (a positive multiple of 4: a full chunk is
                                                      chunk_input_frames, the last chunk may be shorter)
             <state names>    fixed shapes            zeros at the start of an utterance
    outputs  log_probs        (1, frames // 4, V)     CTC log-probabilities, 40 ms frames, blank = 0
             new_<state name> same shapes as inputs   feed back in with the next chunk

State names: conformer ``frontend_cache (1, 3, F)``, ``attention_cache (layers, 1, left_chunks x
chunk_size, d_model)``, ``conv_cache (layers, 1, d_model, (kernel - 1) / 2)``, ``frames_done (1,)
int64``; LSTM ``frontend_cache``, ``h (layers, 1, out)``, ``c (layers, 1, hidden)``.

CMVN is inside the graph so a device computes plain Kaldi fbank and needs no statistics file. Every
other thing a device needs is in the ONNX ``metadata_props`` (one key per item, JSON-encoded values)
and in the same dict written next to the model as ``FILE.onnx.json``: ``chunk_size`` (output frames),
``chunk_input_frames``, ``subsampling``, ``frame_shift_ms``, ``algorithmic_latency_ms``, ``units``
(tokens.txt symbols by id), ``blank_id``, ``fbank`` (options) and ``waveform_scale``, ``states``
(names and shapes), ``model_fingerprint``, ``asr_kd_version``, ``quantization``.
``asr_kd.export.runtime`` is a torch-free reference runtime that uses only these.

Exporter: torch 2.14's default ``torch.onnx.export(dynamo=True)`` needs the ``onnxscript`` package,
which is not a dependency; the TorchScript exporter (``dynamo=False``, opset 17) traces
``forward_chunk`` correctly (its Python branches only concern chunks with no output frame, which the
runtime never runs). After export the float graph is checked against PyTorch on random chunks, so a
tracing problem fails the export instead of shipping a wrong model.

``--int8``: ``onnxruntime.quantization.quantize_dynamic`` with QInt8 weights for MatMul, Gemm, Conv and
LSTM (activations are quantized per call at run time; LayerNorm, softmax and the attention score
products stay float). All four op types run in onnxruntime's CPU provider (ConvInteger and
DynamicQuantizeLSTM included). Size: the demo streaming student (0.50 M params, random weights) goes from 2.1 MB to
0.72 MB (2.98x; the trained KD student of the demo: 2.95x; the graph's ~1,500 nodes and the float
biases/LayerNorms are the rest); for the tiny test models the graph structure dominates and the ratio
is smaller.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from asr_kd import __version__
from asr_kd.export.runtime import FORMAT, FORMAT_VERSION, INPUT_NAME, OUTPUT_NAME, KaldiFbank, OnnxModelError

log = logging.getLogger(__name__)

OPSET = 17
INT8_OP_TYPES = ("MatMul", "Gemm", "Conv", "LSTM")
STATE_NAMES = {
    "conformer": ("frontend_cache", "attention_cache", "conv_cache", "frames_done"),
    "lstm": ("frontend_cache", "h", "c"),
}
PARITY_TOLERANCE = 1e-4
"""Max abs difference of log-probs (ONNX float vs PyTorch) accepted by the post-export check."""


class _ChunkStep(nn.Module):
    """``(fbank, *state) -> (log_probs, *new_state)``: CMVN then ``model.forward_chunk``, state flattened."""

    def __init__(self, model: nn.Module, cmvn: nn.Module):
        super().__init__()
        self.model = model
        self.cmvn = cmvn

    def forward(self, fbank: torch.Tensor, *state: torch.Tensor) -> tuple[torch.Tensor, ...]:
        log_probs, new_state = self.model.forward_chunk(self.cmvn(fbank), tuple(state))
        return (log_probs, *new_state)


@dataclass
class ExportResult:
    path: Path
    metadata: dict[str, Any]
    size_bytes: int
    float_size_bytes: int
    """Size of the float graph (equal to ``size_bytes`` unless int8)."""
    max_abs_diff: float
    """Max abs log-prob difference ONNX float vs PyTorch in the post-export check."""


def _check_runtime_fbank(loaded) -> float:
    """Prove the runtime's numpy ``KaldiFbank`` reproduces the model dir's fbank (torch) on a test
    signal before anything is written, and return the sample scale both use (``WAVEFORM_SCALE``: float
    samples in [-1, 1] times 32768, Kaldi's int16 convention). The tolerance allows for the float32
    rounding of the torch fbank (~1e-3 at most in near-silent bins; ~1e-5 on average)."""
    from asr_kd.data.features import WAVEFORM_SCALE

    cfg = loaded.fbank_config
    rate = cfg.sample_rate
    rng = np.random.default_rng(0)
    t = np.arange(rate // 2) / rate
    wave = (0.3 * np.sin(2 * np.pi * (200 + 1500 * t) * t) + 0.05 * rng.standard_normal(t.shape)).astype(np.float32)
    with torch.inference_mode():
        ref, _ = loaded.fbank(torch.from_numpy(wave)[None].to(loaded.device), torch.tensor([wave.size]).to(loaded.device))
    ref = ref[0].float().cpu().numpy()
    ours = KaldiFbank(cfg.model_dump(mode="json")).compute(wave.astype(np.float64) * WAVEFORM_SCALE)
    if ours.shape != ref.shape or float(np.abs(ours - ref).mean()) > 1e-4 or float(np.abs(ours - ref).max()) > 1e-2:
        err = float(np.abs(ours - ref).max()) if ours.shape == ref.shape else f"shape {ours.shape} vs {ref.shape}"
        raise OnnxModelError(f"{loaded.path}: the runtime's Kaldi fbank does not reproduce the model's fbank "
                             f"({cfg.model_dump(mode='json')}; max abs log-mel difference {err}); the exported "
                             f"model would get different features on a device")
    return float(WAVEFORM_SCALE)


def _metadata(loaded, states: list[torch.Tensor]) -> dict[str, Any]:
    """Everything a device runtime needs, JSON-serializable (see the module docstring)."""
    model, tok = loaded.model, loaded.tokenizer
    kind = loaded.model_config.kind
    names = STATE_NAMES[kind]
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "asr_kd_version": __version__,
        "model_kind": kind,
        "model_config": loaded.model_config.model_dump(mode="json"),
        "model_fingerprint": loaded.fingerprint,
        "num_params": int(sum(p.numel() for p in model.parameters())),
        "onnx_opset": OPSET,
        "quantization": None,
        "input": {"name": INPUT_NAME, "shape": [1, "frames", loaded.fbank_config.num_mel_bins], "dtype": "float32",
                  "description": "raw Kaldi log-mel fbank frames (10 ms); CMVN is applied inside the graph; "
                                 "frames: a positive multiple of subsampling, chunk_input_frames except for "
                                 "the last chunk of an utterance"},
        "output": {"name": OUTPUT_NAME, "shape": [1, "frames / subsampling", model.vocab_size], "dtype": "float32",
                   "description": "CTC log-probabilities per output frame (frame_shift_ms each)"},
        "states": [{"name": n, "output": f"new_{n}", "shape": list(s.shape), "dtype": str(s.dtype).replace("torch.", "")}
                   for n, s in zip(names, states)],
        "chunk_size": int(model.chunk_size),
        "chunk_input_frames": int(model.chunk_input_frames),
        "left_chunks": getattr(model, "left_chunks", None),
        "subsampling": int(model.subsampling),
        "input_frame_shift_ms": float(loaded.fbank_config.frame_shift_ms),
        "frame_shift_ms": float(model.frame_shift_ms),
        "algorithmic_latency_ms": float(model.algorithmic_latency_ms),
        "target_delay_ms": float(loaded.target_delay_ms),  # KD emission delay: add it to the latency
        "units": list(tok.symbols),
        "units_kind": getattr(tok, "kind", None),
        "units_hash": tok.units_hash(),
        "blank_id": int(tok.blank_id),
        "word_boundary": "\u2581",
        "fbank": loaded.fbank_config.model_dump(mode="json"),
        "waveform_scale": _check_runtime_fbank(loaded),
        "cmvn": "in_graph",
    }


def _set_metadata(path: Path, meta: dict[str, Any], drop_value_info: bool = False) -> None:
    """Write ``meta`` into the model's ``metadata_props`` (JSON values). ``drop_value_info`` removes the
    intermediate shape annotations quantize_dynamic leaves behind (~7 % of an int8 file; onnxruntime
    infers shapes itself)."""
    import onnx

    proto = onnx.load(str(path))
    if drop_value_info:
        del proto.graph.value_info[:]
    del proto.metadata_props[:]
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, json.dumps(value, ensure_ascii=False)
    proto.producer_name, proto.producer_version = "asr-kd", __version__
    onnx.save(proto, str(path))


def _trace(step: _ChunkStep, example: tuple[torch.Tensor, ...], names: tuple[str, ...], path: Path) -> None:
    with warnings.catch_warnings():
        # The TorchScript exporter warns that it is legacy, and the tracer warns about forward_chunk's
        # shape checks (constant for every chunk with at least one output frame): expected, see above.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            step, example, str(path), dynamo=False, opset_version=OPSET,
            input_names=[INPUT_NAME, *names], output_names=[OUTPUT_NAME, *(f"new_{n}" for n in names)],
            dynamic_axes={INPUT_NAME: {1: "frames"}, OUTPUT_NAME: {1: "out_frames"}},
            do_constant_folding=True,
        )


def _check_parity(path: Path, step: _ChunkStep, init: list[torch.Tensor], names: tuple[str, ...],
                  chunk_frames: int, num_mel_bins: int) -> float:
    """Run 3 full chunks and a shorter last chunk of random fbank through ONNX and PyTorch; return the
    max abs log-prob difference (states are compared too)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    gen = torch.Generator().manual_seed(0)
    sizes = [chunk_frames] * 3 + ([chunk_frames - 4] if chunk_frames > 4 else [4])
    st_t = list(init)
    st_o = [s.numpy() for s in init]
    worst = 0.0
    for n in sizes:
        fbank = 12.0 + 3.0 * torch.randn(1, n, num_mel_bins, generator=gen)  # raw log-mel-like values
        with torch.inference_mode():
            out_t = step(fbank, *st_t)
        out_o = sess.run(None, {INPUT_NAME: fbank.numpy(), **dict(zip(names, st_o))})
        for a, b in zip(out_t, out_o):
            if tuple(a.shape) != b.shape:
                raise OnnxModelError(f"{path}: exported graph returns shape {b.shape} where PyTorch returns "
                                     f"{tuple(a.shape)} for a {n}-frame chunk; the export is wrong")
            if a.dtype.is_floating_point:
                worst = max(worst, float(np.abs(a.numpy() - b).max()) if b.size else 0.0)
            elif not np.array_equal(a.numpy(), b):
                raise OnnxModelError(f"{path}: integer state differs between ONNX and PyTorch")
        st_t, st_o = list(out_t[1:]), out_o[1:]
    return worst


def _quantize(src: Path, dst: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # quantize_dynamic logs shape-inference chatter on the root logger: quiet it for this call only (a lasting
    # root level of ERROR would silence every later warning of the process, ours included)
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, op_types_to_quantize=list(INT8_OP_TYPES))
    finally:
        root.setLevel(level)


def export_onnx(model_dir: str | Path, out_path: str | Path, int8: bool = False) -> ExportResult:
    """Export the streaming student in ``model_dir`` to ``out_path`` (+ ``out_path.json`` sidecar).

    Raises ``OnnxModelError`` for a non-streaming (full-context) model, and if the exported float graph
    does not reproduce PyTorch's ``forward_chunk`` within ``PARITY_TOLERANCE``. The file is written to a
    temporary name and renamed, so a failed export leaves no half-written model under ``out_path``.
    """
    from asr_kd.models.model_dir import load_model_dir

    loaded = load_model_dir(model_dir)
    model = loaded.model
    kind = loaded.model_config.kind
    if not getattr(model, "is_streaming", False):
        raise OnnxModelError(
            f"{model_dir}: a {kind} model with streaming: false is a full-context model (a teacher): every "
            f"output frame attends to the whole utterance, so it cannot run chunk by chunk on a device. "
            f"Export a streaming student instead (conformer with streaming: true, or lstm).")
    if kind == "lstm" and getattr(loaded.model_config, "proj_size", 0):
        raise OnnxModelError(f"{model_dir}: LSTM with proj_size > 0 (LSTMP) has no ONNX LSTM operator "
                             f"(ONNX LSTM has no projection); train the student with proj_size: 0")
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    model.eval()
    step = _ChunkStep(model, loaded.cmvn).eval()
    names = STATE_NAMES[kind]
    init = [s.cpu() for s in model.init_state(1, "cpu")]
    if len(init) != len(names):
        raise OnnxModelError(f"{model_dir}: {kind} state has {len(init)} tensors, the exporter knows {len(names)} "
                             f"({', '.join(names)})")
    chunk = model.chunk_input_frames
    num_mel_bins = loaded.fbank_config.num_mel_bins

    with tempfile.TemporaryDirectory(prefix=f".{out_path.name}.", dir=out_path.parent) as tmp:
        float_path = Path(tmp) / "float.onnx"
        example = (torch.zeros(1, chunk, num_mel_bins), *init)
        _trace(step, example, names, float_path)
        worst = _check_parity(float_path, step, init, names, chunk, num_mel_bins)
        if worst > PARITY_TOLERANCE:
            raise OnnxModelError(f"{model_dir}: exported graph differs from PyTorch by {worst:.2e} in log-probs "
                                 f"(tolerance {PARITY_TOLERANCE:g}); not writing {out_path}")
        log.info("%s: ONNX float graph matches PyTorch forward_chunk (max abs log-prob difference %.1e)", model_dir, worst)
        meta = _metadata(loaded, init)
        _set_metadata(float_path, meta)
        float_size = float_path.stat().st_size
        final = float_path
        if int8:
            final = Path(tmp) / "int8.onnx"
            _quantize(float_path, final)
            meta["quantization"] = {"method": "onnxruntime.quantization.quantize_dynamic", "weight_type": "QInt8",
                                    "op_types": list(INT8_OP_TYPES), "activations": "dynamic uint8 per call"}
            _set_metadata(final, meta, drop_value_info=True)
        os.replace(final, out_path)
    sidecar = out_path.with_name(out_path.name + ".json")
    tmp_sidecar = sidecar.with_name(f".{sidecar.name}.tmp-{os.getpid()}")
    tmp_sidecar.write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp_sidecar, sidecar)
    return ExportResult(path=out_path, metadata=meta, size_bytes=out_path.stat().st_size,
                        float_size_bytes=float_size, max_abs_diff=worst)
