"""pytest-benchmark suite: forward, forward+backward and one-step generation, per backend and torch.

Each group is one shape of the CPU-speed grid (fastlstm.bench.GRID; BENCH_GRID=quick
for four cases) and holds every fastlstm backend plus torch.nn.LSTM when installed;
extra_info carries GFLOP/s (passes) or characters/s (step). test_lstm_options: torch.nn.LSTM's
other options (bidirectional, lengths against the same batch padded and torch's packed path,
projection). Threads: bench/conftest.py.
Summaries: `python bench/report.py` on the JSON, or `python -m fastlstm.bench`.
"""

import os
import time

import numpy as np
import pytest

import fastlstm
from fastlstm.bench import GRID, QUICK, forward_flop

try:
    import torch
except ImportError:
    torch = None

CASES = QUICK if os.environ.get("BENCH_GRID", "full") == "quick" else GRID
PASSES = ["forward", "forward+backward"]
#: Seconds of timed calls aimed at per test (rounds derived from a warm-up call).
TARGET_S = float(os.environ.get("BENCH_TARGET_S", "1"))
MIN_ROUNDS, MAX_ROUNDS = 3, 100
STEP_CHARS = 50  # characters generated per timed call of the step benchmark

# The NumPy backend is the slow reference: time it on the tutorial's shapes only.
IMPLS = fastlstm.available_backends() + [
    pytest.param("torch", marks=pytest.mark.skipif(torch is None, reason="torch not installed"))]


def _skip_slow(impl, case):
    if impl == "numpy" and not case[0].startswith("tutorial N30") and not case[0].startswith("tutorial N128 I64"):
        pytest.skip("numpy backend timed on the tutorial's N=30/128 shapes only")


def make_case(impl, pass_, L, H, T, N, I):
    """A zero-argument callable doing one pass on fixed float32 data."""
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
        def fwd():
            with torch.no_grad():
                lstm(xt)
        return fwd

    def fwd_bwd_torch():
        y, _ = lstm(xt.detach().requires_grad_(True))  # dx too, as fastlstm computes it
        y.backward(dyt)
    return fwd_bwd_torch


def _rounds(fn):
    fn()  # warm-up (allocations, torch's first-call setup)
    t0 = time.perf_counter()
    fn()
    est = time.perf_counter() - t0
    return int(min(MAX_ROUNDS, max(MIN_ROUNDS, TARGET_S / max(est, 1e-6))))


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", CASES, ids=[c[0].replace(" ", "-") for c in CASES])
@pytest.mark.parametrize("pass_", PASSES, ids=["fwd", "fwdbwd"])
def test_lstm(benchmark, pass_, case, impl, bench_threads):
    _skip_slow(impl, case)
    name, L, H, T, N, I = case
    fn = make_case(impl, pass_, L, H, T, N, I)
    rounds = _rounds(fn)
    gflop = forward_flop(L, H, T, N, I) * (3 if pass_ == "forward+backward" else 1) / 1e9
    benchmark.group = f"{pass_} {name}: T={T} N={N} I={I} H={H} L={L} float32"
    benchmark.extra_info.update(backend=impl, pass_=pass_, T=T, N=N, I=I, H=H, L=L, dtype="float32",
                                threads=bench_threads, gflop=gflop)
    benchmark.pedantic(fn, rounds=rounds, iterations=1, warmup_rounds=1)
    benchmark.extra_info["gflops"] = gflop / benchmark.stats.stats.median


@pytest.mark.parametrize("impl", IMPLS)
def test_step(benchmark, impl, bench_threads):
    """Generation on the tutorial's model at N=1: one step per character, state carried."""
    I, H, L = 64, 300, 2
    model = fastlstm.LSTM(I, H, L, backend="numpy" if impl == "torch" else impl, seed=0)
    if impl == "torch":
        lstm = torch.nn.LSTM(I, H, L)
        xt = torch.zeros((1, 1, I))
        state = [None]

        def fn():
            with torch.no_grad():
                for _ in range(STEP_CHARS):
                    _, state[0] = lstm(xt, state[0])
    else:
        x = np.zeros((1, I), np.float32)
        state = [model.step(x)[1]]

        def fn():
            for _ in range(STEP_CHARS):
                _, state[0] = model.step(x, state[0])
    rounds = _rounds(fn)
    benchmark.group = f"step (generation) I={I} H={H} L={L} N=1 float32"
    benchmark.extra_info.update(backend=impl, pass_="step", chars=STEP_CHARS, threads=bench_threads)
    benchmark.pedantic(fn, rounds=rounds, iterations=1, warmup_rounds=1)
    benchmark.extra_info["chars_per_s"] = STEP_CHARS / benchmark.stats.stats.median


# -- the rest of torch.nn.LSTM (issue 14's targets): bidirectional, lengths, projection ------
#: (name, L, H, T, N, I, layer options, lengths?)
OPTION_CASES = [(f"bidirectional tutorial N{n}", 2, 300, 50, n, 64, dict(bidirectional=True), False)
                for n in (1, 30, 128)] + [
    ("lengths U[1,100] T100 N64 I128 H256", 1, 256, 100, 64, 128, {}, True),
    ("proj P256 H1024 I256 T100 N32", 1, 1024, 100, 32, 256, dict(proj_size=256), False),
]
#: fastlstm backends, fastlstm on the same batch padded (no lengths: the cost to beat), torch
#: (packed through pack_padded_sequence -> LSTM -> pad_packed_sequence when lengths are given).
OPTION_IMPLS = [b for b in fastlstm.available_backends() if b != "numpy"] + ["c-padded"] + [
    pytest.param("torch", marks=pytest.mark.skipif(torch is None, reason="torch not installed"))]


def option_flop(L, H, T, N, I, options, lengths):
    """Forward FLOPs: per direction and layer 2*steps*4H*(I_k + K) (+ 2*steps*P*H projected)."""
    D = 2 if options.get("bidirectional") else 1
    P = options.get("proj_size", 0)
    K = P or H
    steps = int(lengths.sum()) if lengths is not None else T * N
    return sum(D * 2 * steps * (4 * H * ((I if k == 0 else D * K) + K) + P * H) for k in range(L))


def make_option_case(impl, pass_, L, H, T, N, I, options, with_lengths):
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, T + 1, N) if with_lengths else None
    D = 2 if options.get("bidirectional") else 1
    K = options.get("proj_size", 0) or H
    x = rng.standard_normal((T, N, I)).astype(np.float32)
    dy = rng.standard_normal((T, N, D * K)).astype(np.float32)
    backend = {"torch": "numpy", "c-padded": "c"}.get(impl, impl)
    model = fastlstm.LSTM(I, H, L, dtype=np.float32, backend=backend, seed=0, **options)
    if impl != "torch":
        lens = None if impl == "c-padded" else lengths
        if pass_ == "forward":
            return (lambda: model.forward(x, lengths=lens)), lengths

        def fwd_bwd():
            model.forward(x, lengths=lens, training=True)
            model.backward(dy)
        return fwd_bwd, lengths

    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
    lstm = torch.nn.LSTM(I, H, L, **options)
    lstm.load_state_dict({k: torch.from_numpy(v) for k, v in model.state_dict().items()})
    xt, dyt = torch.from_numpy(x), torch.from_numpy(dy)

    def run(inp):
        if lengths is None:
            return lstm(inp)[0]
        out, _ = lstm(pack_padded_sequence(inp, torch.from_numpy(lengths), enforce_sorted=False))
        return pad_packed_sequence(out, total_length=T)[0]

    if pass_ == "forward":
        def fwd():
            with torch.no_grad():
                run(xt)
        return fwd, lengths

    def fwd_bwd_torch():
        run(xt.detach().requires_grad_(True)).backward(dyt)
    return fwd_bwd_torch, lengths


@pytest.mark.parametrize("impl", OPTION_IMPLS)
@pytest.mark.parametrize("case", OPTION_CASES, ids=[c[0].split(" T")[0].replace(" ", "-") for c in OPTION_CASES])
@pytest.mark.parametrize("pass_", PASSES, ids=["fwd", "fwdbwd"])
def test_lstm_options(benchmark, pass_, case, impl, bench_threads):
    name, L, H, T, N, I, options, with_lengths = case
    if impl == "c-padded" and not with_lengths:
        pytest.skip("the padded comparison belongs to the lengths case")
    if impl not in ("torch", "c-padded") and impl not in fastlstm.available_backends():
        pytest.skip(f"{impl} backend not available")
    fn, lengths = make_option_case(impl, pass_, L, H, T, N, I, options, with_lengths)
    rounds = _rounds(fn)
    gflop = option_flop(L, H, T, N, I, options, lengths) * (3 if pass_ == "forward+backward" else 1) / 1e9
    benchmark.group = f"{pass_} {name}: L={L} float32"
    benchmark.extra_info.update(backend=impl, pass_=pass_, T=T, N=N, I=I, H=H, L=L, dtype="float32",
                                threads=bench_threads, gflop=gflop, **{k: v for k, v in options.items()})
    benchmark.pedantic(fn, rounds=rounds, iterations=1, warmup_rounds=1)
    benchmark.extra_info["gflops"] = gflop / benchmark.stats.stats.median
