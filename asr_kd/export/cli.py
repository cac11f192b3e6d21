"""``asr-kd export --model DIR --out FILE.onnx [--int8]``: a streaming student's chunk step to ONNX.

Writes ``FILE.onnx`` (metadata inside) and ``FILE.onnx.json`` (the same metadata, for people and
tools), checks the float graph against PyTorch, and prints one summary line. See
``asr_kd.export.onnx_export`` for the graph's inputs/outputs and ``asr_kd.export.runtime`` for the
torch-free reference runtime (``python -m asr_kd.export.runtime FILE.onnx a.wav``).
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, type=Path, help="model dir of a streaming student (asr-kd train output)")
    parser.add_argument("--out", required=True, type=Path, help="output ONNX file, e.g. student.onnx")
    parser.add_argument("--int8", action="store_true",
                        help="quantize weights to int8 (onnxruntime dynamic quantization of MatMul/Gemm/Conv/LSTM)")


def run(args: argparse.Namespace) -> int:
    from asr_kd.export.onnx_export import export_onnx

    if args.out.suffix != ".onnx":
        from asr_kd.errors import ConfigError

        raise ConfigError(f"--out {args.out}: give a file name ending in .onnx")
    res = export_onnx(args.model, args.out, int8=args.int8)
    meta = res.metadata
    size = f"{res.size_bytes / 1024:.1f} KiB"
    if args.int8:
        size += f" (float {res.float_size_bytes / 1024:.1f} KiB, {res.float_size_bytes / res.size_bytes:.2f}x smaller)"
    print(f"exported {meta['model_kind']} student {meta['model_fingerprint']} ({meta['num_params']} params) -> "
          f"{res.path} [{'int8' if args.int8 else 'float32'}, {size}]; chunk {meta['chunk_size']} x "
          f"{meta['frame_shift_ms']:g} ms, latency {meta['algorithmic_latency_ms']:g} ms, "
          f"max |ONNX - PyTorch| {res.max_abs_diff:.1e}; metadata also in {res.path.name}.json")
    return 0
