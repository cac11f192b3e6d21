"""Reference on-device runtime for an exported streaming student: numpy + onnxruntime + soundfile, no torch.

This is what a device integration has to do, in ~300 lines a C++/Kotlin/Swift port can follow:

1. read the model's metadata from the ONNX ``metadata_props`` (see ``asr_kd.export.onnx_export``;
   each key holds a JSON value): fbank options, chunk sizes, units, blank id, state names and shapes;
2. compute Kaldi-compatible log-mel fbank frames (25 ms window, 10 ms shift, ``snip_edges``) from the
   audio as it arrives (``KaldiFbank``: numpy port of ``torchaudio.compliance.kaldi.fbank``); CMVN is
   inside the ONNX graph, so raw fbank goes in;
3. every ``chunk_input_frames`` frames (10 ms each), run the graph once with the state tensors it
   returned last time (zeros at the start of an utterance);
4. greedy CTC over the chunk's log-probs (40 ms frames), carrying the last best unit across chunks;
5. at the end of the audio, run the remaining frames as one shorter chunk, cut down to a multiple of
   ``subsampling`` (the 1-3 trailing 10 ms frames that cannot fill a 40 ms output frame are dropped,
   exactly as the PyTorch model drops them offline); see ``OnnxStreamingRecognizer.finalize``.

Command line::

    python -m asr_kd.export.runtime student.onnx a.wav [b.wav ...] [--partial] [--threads 1] [--rtf]

prints ``path<TAB>transcript`` per file (partial results on stderr with ``--partial``). Importing this
module must never import torch (a test checks ``sys.modules``).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from asr_kd.errors import (AsrKdError, AudioChannelError, AudioEmptyError, AudioError, AudioMissingError,
                           AudioRateError, AudioUnreadableError)

FORMAT = "asr-kd-streaming-ctc"
FORMAT_VERSION = 1
INPUT_NAME = "fbank"
OUTPUT_NAME = "log_probs"
WORD_BOUNDARY = "\u2581"
"""Word-boundary symbol of the units (``▁``, as in sentencepiece); decoded to a space."""


class OnnxModelError(AsrKdError):
    """An exported ONNX model cannot be used: missing or unsupported metadata, or it cannot be exported."""


# --------------------------------------------------------------------------------------------- fbank
def _mel_scale(freq: np.ndarray | float) -> np.ndarray | float:
    """Kaldi's mel scale: ``1127 ln(1 + f / 700)``."""
    return 1127.0 * np.log(1.0 + np.asarray(freq, dtype=np.float64) / 700.0)


def kaldi_mel_banks(num_bins: int, padded_window_size: int, sample_rate: float, low_freq: float,
                    high_freq: float) -> np.ndarray:
    """Triangular mel filters ``(num_bins, padded_window_size // 2 + 1)`` as Kaldi / torchaudio's
    ``compliance.kaldi.get_mel_banks`` build them (no VTLN), with the zero Nyquist column appended the
    way ``compliance.kaldi.fbank`` pads them. ``high_freq <= 0`` means ``nyquist + high_freq``."""
    num_fft_bins = padded_window_size // 2
    nyquist = 0.5 * sample_rate
    if high_freq <= 0.0:
        high_freq += nyquist
    if not 0.0 <= low_freq < high_freq <= nyquist:
        raise OnnxModelError(f"fbank: bad frequency range low_freq={low_freq} high_freq={high_freq} "
                             f"(nyquist {nyquist})")
    fft_bin_width = sample_rate / padded_window_size
    mel_low, mel_high = _mel_scale(low_freq), _mel_scale(high_freq)
    delta = (mel_high - mel_low) / (num_bins + 1)
    b = np.arange(num_bins, dtype=np.float64)[:, None]
    left, center, right = mel_low + b * delta, mel_low + (b + 1.0) * delta, mel_low + (b + 2.0) * delta
    mel = _mel_scale(fft_bin_width * np.arange(num_fft_bins, dtype=np.float64))[None, :]
    up = (mel - left) / (center - left)
    down = (right - mel) / (right - center)
    banks = np.maximum(0.0, np.minimum(up, down))
    return np.pad(banks, ((0, 0), (0, 1)))


def _window(kind: str, size: int) -> np.ndarray:
    """Kaldi analysis windows (symmetric, as torchaudio builds them with ``periodic=False``)."""
    n = np.arange(size, dtype=np.float64)
    a = 2.0 * math.pi / (size - 1)
    if kind == "hanning":
        return 0.5 - 0.5 * np.cos(a * n)
    if kind == "povey":
        return (0.5 - 0.5 * np.cos(a * n)) ** 0.85
    if kind == "hamming":
        return 0.54 - 0.46 * np.cos(a * n)
    if kind == "rectangular":
        return np.ones(size)
    if kind == "blackman":
        return 0.42 - 0.5 * np.cos(a * n) + 0.08 * np.cos(2 * a * n)
    raise OnnxModelError(f"fbank: window {kind!r} is not supported (povey, hanning, hamming, rectangular, blackman)")


_FBANK_KEYS = {"sample_rate", "num_mel_bins", "frame_length_ms", "frame_shift_ms", "dither", "preemphasis",
               "remove_dc_offset", "window", "low_freq", "high_freq", "energy_floor", "snip_edges"}


class KaldiFbank:
    """Log-mel filterbank identical to ``torchaudio.compliance.kaldi.fbank`` (power spectrum, no energy,
    ``use_log_fbank``), for the fbank options of a model dir's ``FbankConfig``.

    Hand-written in numpy (rather than calling torchaudio) because the device runtime must not need
    torch; ``tests/test_export.py`` checks it against torchaudio within 1e-3 in the log domain.
    ``compute(samples)`` takes 1-D float samples (already multiplied by ``waveform_scale``) and returns
    ``(frames, num_mel_bins)`` float32 at ``frame_shift_ms`` (10 ms) per frame. With ``snip_edges`` and
    no dither, each frame depends on its own 25 ms of samples only, so fbank of a prefix = first frames
    of the fbank of the whole: the streaming recognizer relies on that.
    """

    def __init__(self, options: Mapping[str, Any]):
        unknown = sorted(set(options) - _FBANK_KEYS)
        if unknown:
            raise OnnxModelError(f"fbank options {unknown} are not implemented by this runtime; "
                                 f"it knows {sorted(_FBANK_KEYS)}")
        self.sample_rate = int(options.get("sample_rate", 16000))
        self.num_mel_bins = int(options.get("num_mel_bins", 80))
        if float(options.get("dither", 0.0)) != 0.0:
            raise OnnxModelError("fbank: dither must be 0 for inference (it makes features random)")
        if not options.get("snip_edges", True):
            raise OnnxModelError("fbank: snip_edges=False reads samples before the start and after the end "
                                 "of the audio; streaming needs snip_edges=True")
        # Kaldi framing: window and shift in samples are int(rate * ms * 0.001).
        self.window_size = int(self.sample_rate * float(options.get("frame_length_ms", 25.0)) * 0.001)
        self.window_shift = int(self.sample_rate * float(options.get("frame_shift_ms", 10.0)) * 0.001)
        self.padded_window_size = 1 << (self.window_size - 1).bit_length()  # round up to a power of two
        self.preemphasis = float(options.get("preemphasis", 0.97))
        self.remove_dc_offset = bool(options.get("remove_dc_offset", True))
        self.window = _window(str(options.get("window", "povey")), self.window_size)
        self.mel_banks_t = kaldi_mel_banks(self.num_mel_bins, self.padded_window_size, self.sample_rate,
                                           float(options.get("low_freq", 20.0)),
                                           float(options.get("high_freq", 0.0))).T.copy()
        self.eps = float(np.finfo(np.float32).eps)  # torchaudio's log floor for float32 input

    def num_frames(self, num_samples: int) -> int:
        """Kaldi's ``snip_edges`` frame count: ``1 + (S - window) // shift``, 0 when ``S < window``."""
        return 0 if num_samples < self.window_size else 1 + (num_samples - self.window_size) // self.window_shift

    def compute(self, samples: np.ndarray) -> np.ndarray:
        """``samples (S,)`` -> log-mel ``(num_frames(S), num_mel_bins)`` float32."""
        x = np.asarray(samples, dtype=np.float64)
        n = self.num_frames(x.shape[0])
        if n == 0:
            return np.zeros((0, self.num_mel_bins), dtype=np.float32)
        frames = np.lib.stride_tricks.sliding_window_view(x, self.window_size)[:: self.window_shift][:n].copy()
        if self.remove_dc_offset:
            frames -= frames.mean(axis=1, keepdims=True)
        if self.preemphasis != 0.0:
            prev = np.concatenate([frames[:, :1], frames[:, :-1]], axis=1)  # first sample repeats itself
            frames -= self.preemphasis * prev
        frames *= self.window
        power = np.abs(np.fft.rfft(frames, n=self.padded_window_size, axis=1)) ** 2
        mel = power @ self.mel_banks_t
        return np.log(np.maximum(mel, self.eps)).astype(np.float32)


# ------------------------------------------------------------------------------------------ metadata
@dataclass
class StateSpec:
    """One state tensor the chunk graph takes (``name``) and returns (``output``)."""

    name: str
    output: str
    shape: tuple[int, ...]
    dtype: str

    def zeros(self) -> np.ndarray:
        return np.zeros(self.shape, dtype=np.dtype(self.dtype))


@dataclass
class ModelInfo:
    """The metadata an exported model carries (everything a device runtime needs)."""

    raw: dict[str, Any]
    chunk_size: int
    """Output frames (``frame_shift_ms`` each, 40 ms) per full chunk."""
    chunk_input_frames: int
    """Fbank frames (10 ms) per full chunk: ``chunk_size x subsampling``."""
    subsampling: int
    frame_shift_ms: float
    algorithmic_latency_ms: float
    units: list[str]
    blank_id: int
    fbank: dict[str, Any]
    waveform_scale: float
    """Factor applied to float samples in [-1, 1] before fbank (32768 = Kaldi's int16 convention)."""
    states: list[StateSpec] = field(default_factory=list)

    @property
    def sample_rate(self) -> int:
        return int(self.fbank.get("sample_rate", 16000))

    @property
    def fingerprint(self) -> str | None:
        return self.raw.get("model_fingerprint")


def parse_metadata(props: Mapping[str, str], source: str = "model") -> ModelInfo:
    """ONNX ``metadata_props`` (each value JSON-encoded) -> ``ModelInfo``; errors name what is missing."""
    raw: dict[str, Any] = {}
    for key, value in props.items():
        try:
            raw[key] = json.loads(value)
        except json.JSONDecodeError:
            raw[key] = value  # a foreign, non-JSON property: keep it as text
    if raw.get("format") != FORMAT:
        raise OnnxModelError(f"{source}: not an asr-kd streaming export (metadata 'format' is "
                             f"{raw.get('format')!r}, expected {FORMAT!r}); export it with 'asr-kd export'")
    if raw.get("format_version") != FORMAT_VERSION:
        raise OnnxModelError(f"{source}: export format_version {raw.get('format_version')} is not supported "
                             f"(this runtime reads {FORMAT_VERSION}); re-export with this asr-kd version")
    need = ["chunk_size", "chunk_input_frames", "subsampling", "frame_shift_ms", "algorithmic_latency_ms",
            "units", "blank_id", "fbank", "waveform_scale", "states"]
    missing = [k for k in need if k not in raw]
    if missing:
        raise OnnxModelError(f"{source}: metadata keys {missing} are missing")
    states = [StateSpec(s["name"], s["output"], tuple(int(d) for d in s["shape"]), s["dtype"]) for s in raw["states"]]
    return ModelInfo(raw=raw, chunk_size=int(raw["chunk_size"]), chunk_input_frames=int(raw["chunk_input_frames"]),
                     subsampling=int(raw["subsampling"]), frame_shift_ms=float(raw["frame_shift_ms"]),
                     algorithmic_latency_ms=float(raw["algorithmic_latency_ms"]), units=list(raw["units"]),
                     blank_id=int(raw["blank_id"]), fbank=dict(raw["fbank"]),
                     waveform_scale=float(raw["waveform_scale"]), states=states)


def decode_units(ids: Iterable[int], units: Sequence[str]) -> str:
    """Unit ids (CTC-collapsed, no blanks) -> text: concatenate the symbols, ``▁`` becomes a space.
    Works for character units and sentencepiece pieces alike; ``<...>`` specials (e.g. ``<unk>``) are
    kept as written."""
    text = "".join(units[i] for i in ids).replace(WORD_BOUNDARY, " ")
    return " ".join(text.split())


# -------------------------------------------------------------------------------------------- model
class OnnxStudent:
    """An exported chunk-step graph in an ``onnxruntime.InferenceSession`` (CPU, ``threads`` intra-op)."""

    def __init__(self, onnx_path: str | Path, threads: int = 1):
        import onnxruntime as ort

        self.path = Path(onnx_path)
        if not self.path.is_file():
            raise OnnxModelError(f"{self.path}: ONNX model not found")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(self.path), sess_options=opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types for corrupt files
            raise OnnxModelError(f"{self.path}: onnxruntime cannot load it: {exc}") from None
        self.info = parse_metadata(self.session.get_modelmeta().custom_metadata_map, source=str(self.path))
        inputs = {i.name for i in self.session.get_inputs()}
        expected = {INPUT_NAME, *(s.name for s in self.info.states)}
        if inputs != expected:
            raise OnnxModelError(f"{self.path}: graph inputs {sorted(inputs)} differ from the metadata's "
                                 f"{sorted(expected)}")
        self._outputs = [OUTPUT_NAME, *(s.output for s in self.info.states)]
        self.fbank = KaldiFbank(self.info.fbank)

    def init_state(self) -> list[np.ndarray]:
        """Zero state tensors for a new utterance (batch 1)."""
        return [s.zeros() for s in self.info.states]

    def run_chunk(self, fbank: np.ndarray, state: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        """``fbank (n, F)`` raw log-mel frames, ``n`` a positive multiple of ``subsampling`` ->
        ``(log_probs (n // subsampling, V), new_state)``."""
        n = fbank.shape[0]
        if n == 0 or n % self.info.subsampling:
            raise ValueError(f"a chunk needs a positive multiple of {self.info.subsampling} fbank frames, got {n}")
        feeds = {INPUT_NAME: np.ascontiguousarray(fbank[None], dtype=np.float32)}
        feeds.update({s.name: v for s, v in zip(self.info.states, state)})
        out = self.session.run(self._outputs, feeds)
        return out[0][0], list(out[1:])


class OnnxStreamingRecognizer:
    """One audio stream through an ``OnnxStudent``; mirrors ``asr_kd.decode.streaming.StreamingRecognizer``
    (same framing, chunking, final chunk and incremental greedy CTC), so transcripts are identical.

    ``accept_waveform(samples)`` takes 1-D float samples in [-1, 1] at the model's sample rate and
    returns the partial text; ``finalize()`` returns the final text; ``reset()`` starts a new stream.
    ``chunk_ms`` collects the compute time of each chunk-graph call (milliseconds).
    """

    def __init__(self, student: OnnxStudent):
        self.student = student
        self.info = student.info
        self.fbank = student.fbank
        self.chunk_ms: list[float] = []
        self.reset()

    def reset(self) -> None:
        self._samples = np.zeros(0, dtype=np.float64)
        self._feats = np.zeros((0, self.fbank.num_mel_bins), dtype=np.float32)
        self._state = self.student.init_state()
        self._last = self.info.blank_id
        self.ids: list[int] = []
        self.frames_out = 0
        """Output frames (40 ms) decoded so far."""
        self._finished = False

    @property
    def text(self) -> str:
        return decode_units(self.ids, self.info.units)

    def _compute_features(self) -> None:
        frames = self.fbank.num_frames(self._samples.shape[0])
        if frames:
            used = (frames - 1) * self.fbank.window_shift + self.fbank.window_size
            self._feats = np.concatenate([self._feats, self.fbank.compute(self._samples[:used])])
            self._samples = self._samples[frames * self.fbank.window_shift:]  # the next frame starts here

    def _run(self, feats: np.ndarray) -> None:
        t = time.perf_counter()
        log_probs, self._state = self.student.run_chunk(feats, self._state)
        for tok in log_probs.argmax(axis=-1).tolist():  # greedy CTC, repeats collapsed across chunks
            if tok != self._last and tok != self.info.blank_id:
                self.ids.append(tok)
            self._last = tok
        self.chunk_ms.append((time.perf_counter() - t) * 1000.0)
        self.frames_out += log_probs.shape[0]

    def accept_waveform(self, samples: np.ndarray) -> str:
        """Append samples, run every complete chunk, return the partial text."""
        if self._finished:
            raise RuntimeError("finalize() was called; call reset() before starting a new utterance")
        samples = np.asarray(samples, dtype=np.float64)
        if samples.ndim != 1:
            raise ValueError(f"accept_waveform takes 1-D mono samples, got shape {samples.shape}")
        self._samples = np.concatenate([self._samples, samples * self.info.waveform_scale])
        self._compute_features()
        n = self.info.chunk_input_frames
        while self._feats.shape[0] >= n:
            self._run(self._feats[:n])
            self._feats = self._feats[n:]
        return self.text

    def finalize(self) -> str:
        """Run the remaining frames (fewer than a chunk) and return the final text. The 1-3 frames past
        the last multiple of ``subsampling`` produce no output frame, in PyTorch too, so they are cut."""
        if not self._finished:
            usable = self._feats.shape[0] - self._feats.shape[0] % self.info.subsampling
            if usable:
                self._run(self._feats[:usable])
            self._feats = self._feats[:0]
            self._finished = True
        return self.text


# ------------------------------------------------------------------------------------------- audio
def read_wav(path: str | Path, sample_rate: int) -> np.ndarray:
    """Mono audio file -> float64 samples in [-1, 1] at ``sample_rate`` (soundfile; resampled with soxr
    when the file's rate differs, if soxr is installed)."""
    import soundfile as sf

    if not Path(path).is_file():
        raise AudioMissingError("file not found", path=str(path))
    try:
        samples, rate = sf.read(str(path), dtype="float64", always_2d=True)
    except (OSError, RuntimeError, sf.LibsndfileError) as exc:
        raise AudioUnreadableError(f"cannot read audio: {exc}", path=str(path)) from None
    if samples.shape[1] != 1:
        raise AudioChannelError(f"{samples.shape[1]} channels; the model takes mono audio (downmix, e.g. "
                         f"'sox in.wav -c 1 out.wav')", path=str(path))
    samples = samples[:, 0]
    if samples.size == 0:
        raise AudioEmptyError("no samples", path=str(path))
    if rate != sample_rate:
        try:
            import soxr
        except ImportError:
            raise AudioRateError(f"{rate} Hz audio, the model needs {sample_rate} Hz and soxr is not installed "
                                 f"to resample (e.g. 'sox in.wav -r {sample_rate} out.wav')", path=str(path)) from None
        samples = soxr.resample(samples, rate, sample_rate)
    return samples


def stream_file(rec: OnnxStreamingRecognizer, wave: np.ndarray, feed: int, on_partial=None, path=None) -> str:
    """Feed ``wave`` to ``rec`` in pieces of ``feed`` samples (a live stream), then finalize."""
    rec.reset()
    shown = ""
    for start in range(0, wave.shape[0], feed):
        partial = rec.accept_waveform(wave[start: start + feed])
        if on_partial is not None and partial != shown:
            shown = partial
            on_partial(path, partial)
    return rec.finalize()


def transcribe(onnx_path: str | Path | OnnxStudent, wav_paths: Sequence[str | Path], threads: int = 1,
               feed_ms: int | None = None, on_partial=None) -> list[str]:
    """Stream each file through the model and return the final transcripts (in order).

    ``onnx_path``: an exported model file (or an already loaded ``OnnxStudent``); ``feed_ms``: audio is
    fed in pieces of this many ms, as a live stream would arrive (default: one chunk of audio);
    ``on_partial(path, text)`` is called whenever the partial text changes.
    """
    student = onnx_path if isinstance(onnx_path, OnnxStudent) else OnnxStudent(onnx_path, threads=threads)
    rec = OnnxStreamingRecognizer(student)
    feed = _feed_samples(student.info, feed_ms)
    return [stream_file(rec, read_wav(p, student.info.sample_rate), feed, on_partial, p) for p in wav_paths]


def _feed_samples(info: ModelInfo, feed_ms: int | None) -> int:
    if feed_ms is None:
        return info.chunk_input_frames * KaldiFbank(info.fbank).window_shift
    if feed_ms <= 0:
        raise ValueError(f"feed_ms must be positive, got {feed_ms}")
    return max(1, info.sample_rate * feed_ms // 1000)


@dataclass
class RtfResult:
    """Real-time factor of streaming recognition: compute seconds / audio seconds (fbank, the graph and
    greedy decoding; not reading the files), with per-chunk graph latency in ms."""

    rtf: float
    audio_s: float
    compute_s: float
    chunks: int
    chunk_ms_mean: float
    chunk_ms_p95: float
    threads: int
    texts: list[str]

    def as_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d.pop("texts")
        return d


def measure_rtf(onnx_path: str | Path, wav_paths: Sequence[str | Path], threads: int = 1,
                warmup: bool = True) -> RtfResult:
    """Stream every file chunk by chunk (as audio would arrive) on ``threads`` onnxruntime threads and
    measure the real-time factor. One warm-up pass over the first file is not counted (session
    initialisation and first-call allocations are not steady-state cost)."""
    student = OnnxStudent(onnx_path, threads=threads)
    rec = OnnxStreamingRecognizer(student)
    rate = student.info.sample_rate
    feed = _feed_samples(student.info, None)
    waves = [read_wav(p, rate) for p in wav_paths]
    if not waves:
        raise ValueError("measure_rtf needs at least one audio file")
    if warmup:
        rec.reset()
        rec.accept_waveform(waves[0])
        rec.finalize()
    rec.chunk_ms.clear()
    texts = []
    compute_s = 0.0
    for wave in waves:
        rec.reset()
        t = time.perf_counter()
        for start in range(0, wave.shape[0], feed):
            rec.accept_waveform(wave[start: start + feed])
        texts.append(rec.finalize())
        compute_s += time.perf_counter() - t
    audio_s = sum(w.shape[0] for w in waves) / rate
    ms = sorted(rec.chunk_ms)
    return RtfResult(rtf=compute_s / audio_s if audio_s else float("nan"), audio_s=audio_s, compute_s=compute_s,
                     chunks=len(ms), chunk_ms_mean=float(np.mean(ms)) if ms else 0.0,
                     chunk_ms_p95=ms[int(0.95 * (len(ms) - 1))] if ms else 0.0, threads=threads, texts=texts)


# --------------------------------------------------------------------------------------------- CLI
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m asr_kd.export.runtime",
        description="Stream audio files through an exported asr-kd student (onnxruntime, no torch) and "
                    "print 'path<TAB>transcript'.")
    parser.add_argument("model", type=Path, help="exported model (asr-kd export --out FILE.onnx)")
    parser.add_argument("audio", nargs="+", type=Path, help="mono wav/flac files")
    parser.add_argument("--partial", action="store_true", help="show partial transcripts on stderr as they grow")
    parser.add_argument("--feed-ms", type=int, default=None,
                        help="feed audio in pieces of this many ms (default: one chunk)")
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads (default 1)")
    parser.add_argument("--rtf", action="store_true", help="also measure and print the real-time factor")
    args = parser.parse_args(argv)
    tty = sys.stderr.isatty()

    def show(path, text):
        if tty:
            print(f"\r{path}\t{text}\033[K", end="", file=sys.stderr, flush=True)
        else:
            print(f"partial\t{path}\t{text}", file=sys.stderr, flush=True)

    try:
        student = OnnxStudent(args.model, threads=args.threads)
        failed = 0
        for path in args.audio:
            try:
                text = transcribe(student, [path], feed_ms=args.feed_ms, on_partial=show if args.partial else None)[0]
            except AudioError as exc:
                print(f"error: {exc}", file=sys.stderr)
                failed += 1
                continue
            if args.partial and tty:
                print("\r\033[K", end="", file=sys.stderr, flush=True)
            print(f"{path}\t{text}", flush=True)
        ok = [p for p in args.audio if p.is_file()]
        if args.rtf and ok:
            r = measure_rtf(args.model, ok, threads=args.threads)
            print(f"RTF {r.rtf:.4f} on {r.threads} thread(s): {r.audio_s:.2f} s audio, {r.chunks} chunks, "
                  f"{r.chunk_ms_mean:.2f} ms/chunk mean, {r.chunk_ms_p95:.2f} ms p95", file=sys.stderr)
    except AsrKdError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
