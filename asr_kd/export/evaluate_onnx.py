"""Score an exported ONNX student with ``asr-kd evaluate --model student.onnx``.

Decoding goes through the device reference runtime (``asr_kd.export.runtime``: numpy Kaldi fbank,
onnxruntime chunk graph, greedy CTC), so the WER is the WER of what ships, not of the PyTorch model.
Both modes stream chunk by chunk, since the graph is a chunk step: offline mode hands each utterance
over whole and finalizes (the recognizer cuts it into chunks), streaming mode feeds one chunk of audio
at a time as a live stream would arrive and records the compute time of each piece. Both give the same
transcripts; the PyTorch model's offline masked forward gives them too (tested).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from asr_kd.export.runtime import OnnxStreamingRecognizer, OnnxStudent, _feed_samples


class OnnxEvaluation:
    """An exported model loaded for evaluation on ``threads`` onnxruntime threads."""

    def __init__(self, onnx_path: str | Path, threads: int = 1):
        self.path = Path(onnx_path)
        self.student = OnnxStudent(self.path, threads=threads)
        self.info = self.student.info
        self.threads = threads

    @property
    def sample_rate(self) -> int:
        """Sample rate (Hz) the audio must be loaded at."""
        return self.info.sample_rate

    @property
    def chunk_size(self) -> int:
        """Output frames (40 ms) per chunk, fixed at export."""
        return self.info.chunk_size

    @property
    def target_delay_ms(self) -> float:
        """The distillation target delay the exported student was trained with (0 if none)."""
        return float(self.info.raw.get("target_delay_ms") or 0.0)

    def report_fields(self) -> dict[str, Any]:
        """Fields for ``wer.json`` that describe the model: latency (algorithmic + target delay),
        fingerprint, parameters, quantization."""
        return {
            "latency_ms": self.info.algorithmic_latency_ms + self.target_delay_ms,
            "target_delay_ms": self.target_delay_ms,
            "fingerprint": self.info.fingerprint,
            "params": self.info.raw.get("num_params"),
            "quantization": (self.info.raw.get("quantization") or {}).get("weight_type", "float32"),
            "runtime": "onnxruntime (asr_kd.export.runtime)",
        }

    def decode(self, waves: Mapping[str, Any], streaming: bool = False,
               progress: bool = False) -> tuple[dict[str, str], float, list[float]]:
        """Transcribe ``waves`` (utt -> 1-D float samples in [-1, 1] at ``sample_rate``: numpy arrays or
        CPU torch tensors). Returns ``(hyps, compute_s, per_chunk_ms)``: compute seconds cover fbank,
        the graph and greedy decoding; ``per_chunk_ms`` (streaming only) is the time to process each
        piece of one chunk of audio, as ``evaluate --streaming`` reports for checkpoints."""
        from tqdm import tqdm

        rec = OnnxStreamingRecognizer(self.student)
        piece = _feed_samples(self.info, None)
        hyps: dict[str, str] = {}
        per_chunk_ms: list[float] = []
        compute_s = 0.0
        for utt in tqdm(sorted(waves), desc="onnx stream" if streaming else "onnx decode", unit="utt",
                        disable=not progress):
            wave = np.asarray(waves[utt], dtype=np.float64)
            rec.reset()
            if streaming:
                for start in range(0, wave.shape[0], piece):
                    t = time.perf_counter()
                    rec.accept_waveform(wave[start: start + piece])
                    dt = time.perf_counter() - t
                    compute_s += dt
                    per_chunk_ms.append(dt * 1000.0)
                t = time.perf_counter()
            else:
                t = time.perf_counter()
                rec.accept_waveform(wave)
            hyps[utt] = rec.finalize()
            compute_s += time.perf_counter() - t
        return hyps, compute_s, per_chunk_ms


def load_onnx_for_evaluation(onnx_path: str | Path, threads: int = 1) -> OnnxEvaluation:
    """Load an exported student for ``asr-kd evaluate``."""
    return OnnxEvaluation(onnx_path, threads=threads)
