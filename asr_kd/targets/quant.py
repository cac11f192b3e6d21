"""Quantization of top-k probabilities and the fixed-size frame record of the soft-target store.

One stored frame is a record of ``k`` unit ids followed by ``k`` probability codes (a packed numpy
structured dtype, no padding)::

    ids:   k x uint8   (vocab_size <= 256)   or k x uint16 (vocab_size <= 65536), little-endian
    codes: k x uint8   ("log8")              or k x float16 ("float16"),           little-endian

so a frame costs ``k * (id_bytes + code_bytes)`` bytes: 16 bytes for top-8, 1-byte ids, log8
(= 400 bytes per audio-second at 40 ms frames, the same as icefall's 8-codebook MVQ targets at 20 ms).
That is store format version 1; format 2 (``asr_kd.targets.codec``) keeps a variable number of
entries per frame with the same id and code types, compressed.

Quantizations (``decode(encode(p))`` error bounds are what ``error_bound`` returns and the tests check):

``log8``
    8-bit codes uniform in log-odds ``x = ln p - ln(1 - p)`` on ``[lo, hi] = [ln 1e-10, ln 1e6]``
    (recorded in the store's meta as ``log8_range``): ``code = round(255 * (x - lo) / (hi - lo))``,
    clipped to 0..255; ``p = 1 / (1 + exp(-x))``. For small ``p`` the log-odds are (nearly) the
    log-probability, so this is a log-probability code (step 0.145 nats, at most 7.5 % relative error
    for ``1e-10 <= p <= 0.5``) that *also* keeps ``1 - p`` to 7.5 % relative for ``0.5 <= p <= 1 - 1e-6``.
    Why not codes uniform in ``ln p`` on ``[ln 1e-10, 0]``: near ``p = 1`` their step (0.09 nats)
    jumps from 0.914 straight to 1.0, so a typical CTC blank frame with ``p = 0.98`` is stored as 1.0
    and the tail mass ``1 - sum(top-k)`` is lost; measured KL(teacher || stored, missing mass spread
    uniformly) on peaked top-8 frames was 0.098 nats for that code and 0.0027 nats for this one (the
    exact top-8 gives 0.0026). Probabilities below ``1e-10`` (and 0) decode to ``1e-10``; above
    ``1 - 1e-6`` to ``1 - 1e-6``.
``float16``
    IEEE half precision: relative error ``<= 2**-11`` for ``p >= 2**-14``, absolute error
    ``<= 2**-25`` below (subnormals).
"""

from __future__ import annotations

import functools
import math

import numpy as np

from asr_kd.errors import StoreError

QUANTIZATIONS = ("log8", "float16")
LOG8_RANGE = (math.log(1e-10), math.log(1e6))
"""Default log-odds range ``(lo, hi)`` of the log8 codes: probabilities 1e-10 .. 1 - 1e-6."""
LOG8_LEVELS = 255


def id_dtype(vocab_size: int) -> np.dtype:
    """Smallest unsigned little-endian integer type holding unit ids ``0 .. vocab_size - 1``."""
    if vocab_size <= 256:
        return np.dtype("u1")
    if vocab_size <= 65536:
        return np.dtype("<u2")
    raise StoreError(f"vocabulary of {vocab_size} units does not fit the store's 16-bit unit ids (max 65536)")


def code_dtype(quantization: str) -> np.dtype:
    if quantization == "log8":
        return np.dtype("u1")
    if quantization == "float16":
        return np.dtype("<f2")
    raise StoreError(f"unknown quantization {quantization!r}; use one of {QUANTIZATIONS}")


def record_dtype(vocab_size: int, k: int, quantization: str) -> np.dtype:
    """Packed structured dtype of one frame: ``ids (k,)`` then ``codes (k,)``."""
    return np.dtype([("ids", id_dtype(vocab_size), (k,)), ("codes", code_dtype(quantization), (k,))])


def bytes_per_frame(vocab_size: int, k: int, quantization: str) -> int:
    return record_dtype(vocab_size, k, quantization).itemsize


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # overflow-free logistic


@functools.lru_cache(maxsize=8)
def log8_table(log8_range: tuple[float, float]) -> np.ndarray:
    """The 256 float32 probabilities of the log8 codes (decoding is one table lookup per entry)."""
    lo, hi = log8_range
    x = lo + np.arange(LOG8_LEVELS + 1, dtype=np.float64) * ((hi - lo) / LOG8_LEVELS)
    table = _sigmoid(x).astype(np.float32)
    table.setflags(write=False)
    return table


def encode(probs: np.ndarray, quantization: str, log8_range: tuple[float, float] = LOG8_RANGE) -> np.ndarray:
    """Probabilities (any shape, values in [0, 1]) -> codes of ``code_dtype(quantization)``."""
    p = np.asarray(probs, dtype=np.float64)
    if quantization == "float16":
        return p.astype("<f2")
    if quantization == "log8":
        lo, hi = log8_range
        p = np.clip(p, 0.0, 1.0)
        with np.errstate(divide="ignore"):
            x = np.log(p) - np.log1p(-p)
        codes = np.rint(LOG8_LEVELS * (np.clip(x, lo, hi) - lo) / (hi - lo))
        return codes.astype(np.uint8)
    raise StoreError(f"unknown quantization {quantization!r}; use one of {QUANTIZATIONS}")


def decode(codes: np.ndarray, quantization: str, log8_range: tuple[float, float] = LOG8_RANGE) -> np.ndarray:
    """Codes -> float32 probabilities (see the module docstring for the mapping)."""
    if quantization == "float16":
        return np.asarray(codes).astype(np.float32)
    if quantization == "log8":
        return log8_table(tuple(log8_range))[np.asarray(codes, dtype=np.uint8)]
    raise StoreError(f"unknown quantization {quantization!r}; use one of {QUANTIZATIONS}")


def error_bound(probs: np.ndarray, quantization: str, log8_range: tuple[float, float] = LOG8_RANGE) -> np.ndarray:
    """Largest ``|decode(encode(p)) - p|`` for each ``p`` (elementwise, float64), incl. float32 output rounding.

    log8: within the range, a log-odds error of at most half a step ``h`` moves ``p`` by at most
    ``min(p, 1 - p) * (exp(h) - 1)``; outside it ``p`` is clipped to the range ends.
    """
    p = np.asarray(probs, dtype=np.float64)
    f32 = np.maximum(p, 2.0 ** -126) * 2.0 ** -23
    if quantization == "float16":
        return np.maximum(p * 2.0 ** -11, 2.0 ** -25) + f32
    if quantization == "log8":
        lo, hi = log8_range
        h = (hi - lo) / LOG8_LEVELS / 2
        p_lo, p_hi = float(_sigmoid(np.float64(lo))), float(_sigmoid(np.float64(hi)))
        inside = np.minimum(p, 1.0 - p) * math.expm1(h)
        clipped = np.where(p < p_lo, p_lo - p, np.where(p > p_hi, p - p_hi, 0.0))
        return np.maximum(inside, clipped) + f32 + 1e-15
    raise StoreError(f"unknown quantization {quantization!r}; use one of {QUANTIZATIONS}")
