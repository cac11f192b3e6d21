"""Streaming recognition: audio in as it arrives, partial text out, final text = offline decoding.

``StreamingRecognizer`` buffers samples, computes fbank frames as soon as their 25 ms window is
complete, runs the model's ``forward_chunk`` whenever ``chunk_size x 4`` frames are ready, and decodes
greedily with the last best unit carried across chunks. Exactness relies on three properties, each
tested: (1) Kaldi fbank with ``snip_edges=True`` and no dither computes every frame from its own
samples only, so features computed piecewise (from a frame-aligned sample offset) equal the offline
features; (2) ``forward_chunk`` reproduces the offline chunk-masked forward; (3) incremental greedy CTC
equals offline greedy CTC. ``finalize`` runs the last, shorter chunk exactly as the offline forward sees
the end of the utterance (no padding frames are invented; 1-3 trailing fbank frames that cannot fill a
40 ms output frame are dropped offline too).
"""

from __future__ import annotations

import torch

from asr_kd.decode.greedy import GreedyCTCStream


class StreamingRecognizer:
    """One audio stream through a streaming model of a ``LoadedModel`` (see asr_kd.models.model_dir).

    ``accept_waveform(samples)`` takes 1-D float samples at the model's fbank sample rate (the same
    scale that offline decoding feeds ``LoadedModel.featurize``) and returns the partial text so far;
    ``finalize()`` flushes and returns the final text; ``reset()`` starts a new stream.
    """

    def __init__(self, loaded, chunk_size: int | None = None):
        model = loaded.model
        if not getattr(model, "is_streaming", False):
            raise ValueError(f"{loaded.path}: model kind {loaded.model_config.kind!r} is not streaming "
                             f"(a full-context teacher); decode it offline")
        if chunk_size is not None:
            model.set_chunking(chunk_size)
        self.loaded = loaded
        self.model = model.eval()
        cfg = loaded.fbank_config
        # Kaldi framing: window and shift in samples are int(rate * ms / 1000).
        self.window = int(cfg.sample_rate * cfg.frame_length_ms / 1000)
        self.shift = int(cfg.sample_rate * cfg.frame_shift_ms / 1000)
        self.reset()

    @property
    def chunk_frames(self) -> int:
        """Input fbank frames (10 ms) per model chunk."""
        return self.model.chunk_input_frames

    def reset(self) -> None:
        """Forget all audio and model state; the next sample starts a new utterance."""
        device = self.loaded.device
        self._samples = torch.zeros(0, device=device)
        self._feats = torch.zeros(0, self.loaded.fbank_config.num_mel_bins, device=device)
        self._state = self.model.init_state(1, device)
        self._greedy = GreedyCTCStream(blank_id=self.loaded.tokenizer.blank_id)
        self._finished = False
        self.frames_out = 0
        """Output frames (40 ms) decoded so far."""

    @property
    def ids(self) -> list[int]:
        """Unit ids decoded so far."""
        return list(self._greedy.ids)

    @property
    def text(self) -> str:
        return self.loaded.tokenizer.decode(self._greedy.ids)

    def _compute_features(self) -> None:
        num = self._samples.shape[0]
        frames = 0 if num < self.window else 1 + (num - self.window) // self.shift
        if frames == 0:
            return
        used = (frames - 1) * self.shift + self.window
        wave = self._samples[:used].unsqueeze(0)
        feats, feat_lens = self.loaded.featurize(wave, torch.tensor([used], device=wave.device))
        if int(feat_lens[0]) != frames:
            raise RuntimeError(f"fbank returned {int(feat_lens[0])} frames for {used} samples, expected {frames}")
        self._feats = torch.cat([self._feats, feats[0, :frames]], dim=0)
        self._samples = self._samples[frames * self.shift:]  # next frame starts here

    def _run(self, feats: torch.Tensor) -> None:
        log_probs, self._state = self.model.forward_chunk(feats.unsqueeze(0), self._state)
        self.frames_out += log_probs.shape[1]
        self._greedy.accept(log_probs[0])

    @torch.inference_mode()
    def accept_waveform(self, samples: torch.Tensor) -> str:
        """Append ``samples`` (1-D float); decode every complete chunk; return the partial text."""
        if self._finished:
            raise RuntimeError("finalize() was called; call reset() before starting a new utterance")
        samples = torch.as_tensor(samples, dtype=torch.float32)
        if samples.dim() != 1:
            raise ValueError(f"accept_waveform takes 1-D mono samples, got shape {tuple(samples.shape)}")
        self._samples = torch.cat([self._samples, samples.to(self._samples.device)])
        self._compute_features()
        n = self.chunk_frames
        while self._feats.shape[0] >= n:
            self._run(self._feats[:n])
            self._feats = self._feats[n:]
        return self.text

    @torch.inference_mode()
    def finalize(self) -> str:
        """Decode the remaining (shorter than a chunk) frames and return the final text."""
        if not self._finished:
            if self._feats.shape[0] > 0:
                self._run(self._feats)
                self._feats = self._feats[:0]
            self._finished = True
        return self.text
