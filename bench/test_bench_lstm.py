"""Forward and forward+backward of the tutorial's 2-layer LSTM, per backend and torch.

Groups compare every fastlstm backend (and torch.nn.LSTM when installed) on one
shape; extra_info carries GFLOP/s. Run: see bench/RESULTS.md; summarise with bench/report.py.
"""

import os
import time

import numpy as np
import pytest

import fastlstm

try:
    import torch
except ImportError:
    torch = None

T, I, H, L = 50, 64, 300, 2
BATCHES = [30, 128]
PASSES = ["forward", "forward+backward"]
#: Seconds of timed calls aimed at per test (rounds derived from a warm-up call).
TARGET_S = float(os.environ.get("BENCH_TARGET_S", "2"))
MIN_ROUNDS, MAX_ROUNDS = 5, 100

IMPLS = fastlstm.available_backends() + [
    pytest.param("torch", marks=pytest.mark.skipif(torch is None, reason="torch not installed"))]


def forward_flop(N):
    """2·T·N·4H·(I_k + H) summed over layers."""
    return sum(2 * T * N * 4 * H * ((I if k == 0 else H) + H) for k in range(L))


def flop(pass_, N):
    return forward_flop(N) * (3 if pass_ == "forward+backward" else 1)


def make_case(impl, pass_, N):
    """A zero-argument callable doing one pass on fresh float32 data."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((T, N, I)).astype(np.float32)
    dy = rng.standard_normal((T, N, H)).astype(np.float32)
    model = fastlstm.LSTM(I, H, L, dtype=np.float32, backend="numpy" if impl == "torch" else impl, seed=0)
    if impl != "torch":
        if pass_ == "forward":
            return lambda: model.forward(x, training=False)

        def fwd_bwd():
            model.forward(x, training=True)
            model.backward(dy)
        return fwd_bwd

    lstm = torch.nn.LSTM(I, H, L)
    lstm.load_state_dict({k: torch.from_numpy(v) for k, v in model.state_dict().items()})
    xt, dyt = torch.from_numpy(x), torch.from_numpy(dy)
    if pass_ == "forward":
        lstm.eval()

        def fwd():
            with torch.no_grad():
                lstm(xt)
        return fwd

    xt.requires_grad_(True)  # dx too, as fastlstm's backward computes it

    def fwd_bwd_torch():
        y, _ = lstm(xt)
        y.backward(dyt)
    return fwd_bwd_torch


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("N", BATCHES, ids=lambda n: f"N{n}")
@pytest.mark.parametrize("pass_", PASSES, ids=["fwd", "fwdbwd"])
def test_lstm(benchmark, pass_, N, impl, bench_threads):
    fn = make_case(impl, pass_, N)
    t0 = time.perf_counter()
    fn()  # warm-up (allocations, torch's first-call setup) and a time estimate
    est = time.perf_counter() - t0
    rounds = int(min(MAX_ROUNDS, max(MIN_ROUNDS, TARGET_S / max(est, 1e-6))))
    benchmark.group = f"{pass_} T={T} N={N} I={I} H={H} L={L} float32"
    benchmark.extra_info.update(backend=impl, pass_=pass_, T=T, N=N, I=I, H=H, L=L, dtype="float32",
                                threads=bench_threads, gflop=flop(pass_, N) / 1e9)
    benchmark.pedantic(fn, rounds=rounds, iterations=1, warmup_rounds=1)
    benchmark.extra_info["gflops"] = flop(pass_, N) / 1e9 / benchmark.stats.stats.median
