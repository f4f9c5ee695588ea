"""Dropout masks drawn from a seeded generator: the one helper that ``fastlstm.LSTM`` (between
layers) and the char model's ``Dropout`` layer share, so that both draw masks the same way
and a checkpoint of the generator's state replays them exactly; and ``batch_rows``, under which
a process that computes some rows of a larger batch (a rank of data-parallel training) gets
exactly its rows of the masks the whole batch would get.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

import numpy as np
from numpy.typing import NDArray

__all__ = ["apply_keep", "batch_rows", "keep_bits", "keep_mask", "random_words", "words_needed"]

#: (start, stop, total) while a ``batch_rows`` block runs, else None.
_ROWS: contextvars.ContextVar[tuple[int, int, int] | None] = contextvars.ContextVar("fastlstm_batch_rows",
                                                                                     default=None)


@contextlib.contextmanager
def batch_rows(start: int, stop: int, total: int) -> Iterator[None]:
    """Within the block, masks are rows ``start:stop`` of a batch of ``total`` rows.

    ``keep_mask`` then draws the mask of the whole batch (the batch axis is the
    second-to-last one, as in (T, N, H) and (N, H)) and returns those rows: a process
    that computes rows ``start:stop`` of a batch gets exactly the masks that one process
    computing all of them would apply to those rows, and its generator advances as that
    process's would.

    Parameters
    ----------
    start, stop : int
        The rows this process computes, ``0 <= start <= stop <= total``.
    total : int
        The rows of the whole batch.
    """
    if not 0 <= start <= stop <= total:
        raise ValueError(f"batch rows need 0 <= start <= stop <= total, got {start}, {stop}, {total}")
    token = _ROWS.set((int(start), int(stop), int(total)))
    try:
        yield
    finally:
        _ROWS.reset(token)


def keep_mask(rng: np.random.Generator, shape: tuple[int, ...], p: float) -> NDArray[np.bool_]:
    """Dropout's keep mask: True with probability 1 - p (to within 2**-16) per element
    (``bits >= threshold`` of ``keep_bits``, which takes the same draws).

    16 random bits per element, four to a 64-bit word of ``random_words``, whose key is
    one raw 64-bit draw of ``rng`` (so the generator advances by one draw per mask).

    Parameters
    ----------
    rng : numpy.random.Generator
        The generator to draw from (its bit generator advances).
    shape : tuple of int
        Shape of the mask (inside ``batch_rows``, of this process's rows).
    p : float
        Drop probability in [0, 1).

    Returns
    -------
    ndarray of bool
        The mask, ``shape``.
    """
    bits, threshold = keep_bits(rng, shape, p)
    return bits >= threshold


def keep_bits(rng: np.random.Generator, shape: tuple[int, ...], p: float,
              words: NDArray[np.uint64] | None = None) -> tuple[NDArray[np.uint16], np.uint16]:
    """(bits, threshold): the 16 random bits of each element of ``keep_mask``'s draws, whose
    mask is ``bits >= threshold`` (the same draws; for ``apply_keep``, which saves the pass
    that makes the mask). ``words``: a buffer of ``words_needed(shape)`` uint64 for the
    draws (one the caller reuses from step to step: a fresh one costs page faults), which
    the bits are then a view of; else a new one."""
    full = _whole_batch_shape(shape)
    size = int(np.prod(full))
    n = (size + 3) // 4
    if words is None or words.shape != (n,) or words.dtype != np.uint64 or not words.flags.c_contiguous:
        words = np.empty(n, np.uint64)
    random_words(int(rng.bit_generator.random_raw()), n, out=words)
    bits = words.view(np.uint16)[:size].reshape(full)
    if full != tuple(shape):
        start, stop, _ = _ROWS.get()  # type: ignore[misc]
        bits = bits[..., start:stop, :]
    return bits, np.uint16(min(round(p * 65536), 65535))


def words_needed(shape: tuple[int, ...]) -> int:
    """The 64-bit words under ``keep_bits``' draws for a mask of ``shape`` (inside
    ``batch_rows``, the whole batch's)."""
    return (int(np.prod(_whole_batch_shape(shape))) + 3) // 4


def _whole_batch_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    """``shape``, or inside ``batch_rows`` the whole batch's (its rows on the second-to-last axis)."""
    rows = _ROWS.get()
    if rows is None or len(shape) < 2:
        return tuple(shape)
    start, stop, total = rows
    if shape[-2] != stop - start:
        raise ValueError(f"a dropout mask of shape {tuple(shape)} inside batch_rows({start}, {stop}, "
                         f"{total}) should have {stop - start} rows on its second-to-last axis")
    return (*shape[:-2], total, shape[-1])


def random_words(key: int, n: int, out: NDArray[np.uint64] | None = None) -> NDArray[np.uint64]:
    """Words 1..n of the SplitMix64 sequence from state ``key``: word i is SplitMix64's output
    function of ``key + i * 0x9E3779B97F4A7C15`` (mod 2**64). Counter-based, so that the C
    backend computes them on its threads (a quarter of the time of the generator's own raw
    draws here); this NumPy form gives the same words where it is not built. ``out``: an
    (n,) uint64 C-contiguous array to fill."""
    out = np.empty(n, np.uint64) if out is None else out
    c = _c_pass("splitmix_words")
    if c is not None:
        c(key, out)
        return out
    z = np.arange(1, n + 1, dtype=np.uint64)
    z *= np.uint64(0x9E3779B97F4A7C15)
    z += np.uint64(key)
    z ^= z >> np.uint64(30)
    z *= np.uint64(0xBF58476D1CE4E5B9)
    z ^= z >> np.uint64(27)
    z *= np.uint64(0x94D049BB133111EB)
    np.bitwise_xor(z, z >> np.uint64(31), out=out)
    return out


def apply_keep(bits: NDArray[np.uint16], threshold: np.uint16, scale: float, x: NDArray[np.floating],
               out: NDArray[np.floating] | None = None,
               mask: NDArray[np.floating] | None = None) -> NDArray[np.floating]:
    """Inverted dropout by ``keep_bits``' draws: ``(x * keep) * scale``, keep = bits >=
    threshold, into ``out`` (a new array when None; may be ``x``); with ``mask``, also
    ``keep * scale`` there (what the backward multiplies by). One pass on the C backend's
    threads for contiguous host float arrays of one shape, else NumPy; the same numbers
    either way, bit for bit."""
    out = np.empty_like(x) if out is None else out
    c = _c_pass("dropout")
    if (c is not None and x.dtype in (np.float32, np.float64) and out.dtype == x.dtype
            and (mask is None or mask.dtype == x.dtype) and bits.shape == x.shape == out.shape
            and (mask is None or mask.shape == x.shape) and x.flags.c_contiguous
            and out.flags.c_contiguous and (mask is None or mask.flags.c_contiguous)):
        c(np.ascontiguousarray(bits).reshape(-1), int(threshold), float(scale), x.reshape(-1),
          out.reshape(-1), None if mask is None else mask.reshape(-1))
        return out
    keep = bits >= threshold
    if mask is not None:
        np.multiply(keep, x.dtype.type(scale), out=mask)
    np.multiply(x, keep, out=out)
    out *= x.dtype.type(scale)
    return out


def _c_pass(name: str):
    """The C backend's pass ``name`` (dropout, splitmix_words), or None where it is not built."""
    try:
        from .backends import _c
    except ImportError:
        return None
    return getattr(_c, name, None)
