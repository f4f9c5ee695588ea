"""Shared test helpers: the one tolerance table (TOL, GRADCHECK), assert_close, seeded inputs.
Its own module name rather than ``from conftest import``: a conftest.py in a subfolder
(tests/golden/) would shadow "conftest" during collection. conftest.py re-exports it.
"""

import os
import zlib

import numpy as np
import pytest

import fastlstm

#: Backend vs reference, per dtype: |actual - expected| <= atol + rtol * |expected|.
TOL = {
    np.float32: dict(atol=1e-5, rtol=1e-4),
    np.float64: dict(atol=1e-12, rtol=1e-9),
}

#: Central finite differences of the float64 reference: step and tolerance
#: (truncation error ~ eps**2, rounding error ~ 1e-16 / eps).
GRADCHECK = dict(eps=1e-6, atol=1e-7, rtol=1e-6)

#: Against PyTorch (golden files, live): relative 2-norm error ||got - want|| / ||want||,
#: the project's acceptance thresholds.
REL_TOL = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-10}

REFERENCE = "numpy"
DTYPES = [np.float32, np.float64]
BACKENDS = fastlstm.available_backends()


#: The cuda backend under Numba's simulator runs every GPU thread as Python code:
#: cases above this many multiply-adds (T * N * 4H * (I + H) * L) are GPU-only.
SIMULATED_CUDA = os.environ.get("NUMBA_ENABLE_CUDASIM", "") not in ("", "0")
SIMULATOR_WORK = 200_000


def skip_if_too_big_to_simulate(backend, T, N, I, H, L=1):
    """Skip a cuda case that the simulator would take minutes over (it runs on a GPU)."""
    work = T * N * 4 * H * (I + H) * L
    if backend == "cuda" and SIMULATED_CUDA and work > SIMULATOR_WORK:
        pytest.skip(f"{work:,} multiply-adds is too large for the CUDA simulator (runs on a GPU)")


def tol(dtype):
    """The TOL entry of a dtype given as a type, a dtype or a name."""
    return TOL[np.dtype(dtype).type]


def check_close(actual, expected, atol, rtol, name):
    """Elementwise |a - e| <= atol + rtol*|e| with NaNs in the same places."""
    actual = np.asarray(actual)
    expected = np.asarray(expected)
    assert actual.shape == expected.shape, f"{name}: shape {actual.shape} != expected {expected.shape}"
    a = actual.astype(np.float64)
    e = expected.astype(np.float64)
    nan_a, nan_e = np.isnan(a), np.isnan(e)
    assert np.array_equal(nan_a, nan_e), (
        f"{name}: NaN in different places ({nan_a.sum()} actual vs {nan_e.sum()} expected)")
    ok = ~nan_e
    if not ok.any():
        return
    err = np.abs(a[ok] - e[ok])
    bound = atol + rtol * np.abs(e[ok])
    if not np.all(err <= bound):
        k = int(np.argmax(err - bound))
        idx = np.argwhere(ok)[k]
        raise AssertionError(
            f"{name}: {int((err > bound).sum())} of {err.size} elements out of tolerance "
            f"(atol={atol:g}, rtol={rtol:g}); max abs error {err.max():.3e}, "
            f"worst at index {tuple(int(i) for i in idx)}: actual {a[tuple(idx)]!r}, "
            f"expected {e[tuple(idx)]!r}")


def assert_close(actual, expected, dtype, name):
    """Compare with the tolerance of ``dtype`` from TOL; reports name and max error."""
    t = tol(dtype)
    check_close(actual, expected, t["atol"], t["rtol"], name)


def seed_of(*key):
    """A stable integer seed from a test's parameters (distinct per case, same every run)."""
    return zlib.crc32(repr(key).encode())


def randn(rng, shape, dtype=np.float64, scale=1.0):
    """Seeded standard-normal array of ``dtype``."""
    return (scale * rng.standard_normal(shape)).astype(dtype)


def make_inputs(seed, T, N, I, H, L, dtype, *, batch_first=False, state=True, dstate=True):
    """Seeded inputs of one layer-API case: x, state, dy, dstate (None when not wanted)."""
    rng = np.random.default_rng(seed)
    xshape = (N, T, I) if batch_first else (T, N, I)
    yshape = (N, T, H) if batch_first else (T, N, H)
    x = randn(rng, xshape, dtype)
    st = (randn(rng, (L, N, H), dtype, 0.5), randn(rng, (L, N, H), dtype, 0.5)) if state else None
    dy = randn(rng, yshape, dtype)
    ds = (randn(rng, (L, N, H), dtype), randn(rng, (L, N, H), dtype)) if dstate else None
    return x, st, dy, ds


def shape_id(T=None, N=None, I=None, H=None, L=None):
    """Test id in the project's letters, e.g. "T7-N3-I4-H5-L2"."""
    parts = [f"{k}{v}" for k, v in (("T", T), ("N", N), ("I", I), ("H", H), ("L", L)) if v is not None]
    return "-".join(parts)


def run_layer(layer, x, state=None, dy=None, dstate=None):
    """Training forward, then backward (with dy, or ones) on a zeroed layer.

    Returns a dict of every output and gradient: y, h_n, c_n, dx, dh0, dc0 and
    ``grad.<param>`` for each entry of ``layer.grads``.
    """
    layer.zero_grad()
    y, (h_n, c_n) = layer.forward(x, state, training=True)
    dx, (dh0, dc0) = layer.backward(np.ones_like(y) if dy is None else dy, dstate)
    out = dict(y=y, h_n=h_n, c_n=c_n, dx=dx, dh0=dh0, dc0=dc0)
    out.update({f"grad.{k}": g.copy() for k, g in layer.grads.items()})
    return out


def assert_all_close(actual, expected, dtype, case=""):
    """assert_close on every key of two run_layer dicts (same keys required)."""
    assert sorted(actual) == sorted(expected)
    for key in expected:
        assert_close(actual[key], expected[key], dtype, f"{case} {key}".strip())


def rel_err(got, want):
    """||got - want|| / ||want|| (the absolute error when want is all zeros)."""
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape, (got.shape, want.shape)
    diff = np.linalg.norm(got - want)
    norm = np.linalg.norm(want)
    return diff / norm if norm > 0 else diff


def numeric_grad(f, arr):
    """Central differences of the scalar f() w.r.t. every element of ``arr`` (perturbed in place)."""
    eps = GRADCHECK["eps"]
    grad = np.zeros_like(arr, dtype=np.float64)
    flat, gflat = arr.reshape(-1), grad.reshape(-1)
    for k in range(flat.size):
        orig = flat[k]
        flat[k] = orig + eps
        fp = f()
        flat[k] = orig - eps
        fm = f()
        flat[k] = orig
        gflat[k] = (fp - fm) / (2 * eps)
    return grad


def gc_close(actual, expected, name):
    """Compare an analytic gradient with numeric_grad's, with the GRADCHECK tolerance."""
    check_close(actual, expected, GRADCHECK["atol"], GRADCHECK["rtol"], name)
