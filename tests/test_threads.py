"""Inference calls on one shared LSTM object from several threads at once
(forward with training=False, __call__, step) give the same bits as the same
calls made one after another; also the rule for replaced parameters."""

import threading

import numpy as np
import pytest

import fastlstm
from lstm_testing import BACKENDS


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "cuda"])
def test_eight_threads_share_one_layer(backend):
    T, I, H, L = 4, 7, 160, 2   # kernels long enough for the threads to overlap in them
    lstm = fastlstm.LSTM(I, H, L, backend=backend, seed=4)
    rng = np.random.default_rng(0)
    jobs = []
    for k in range(200):
        n = 1 + k % 2  # two batch sizes: per-shape buffers are shared between calls
        if k % 4:
            jobs.append(("step", rng.standard_normal((n, I)).astype(np.float32),
                         (rng.standard_normal((L, n, H)).astype(np.float32),
                          rng.standard_normal((L, n, H)).astype(np.float32))))
        else:
            jobs.append(("forward", rng.standard_normal((T, n, I)).astype(np.float32), None))

    def run(job):
        kind, x, state = job
        if kind == "step":
            h, (hs, cs) = lstm.step(x, state)
            return h, hs, cs
        y, (hs, cs) = lstm(x) if job is not jobs[0] else lstm.forward(x, training=False)
        return y, hs, cs

    serial = [run(job) for job in jobs]
    results = [None] * len(jobs)
    errors = []

    def worker(start):
        try:
            for _ in range(4):  # each job four times, interleaved with the other threads
                for k in range(start, len(jobs), 8):
                    got = run(jobs[k])
                    results[k] = got if results[k] is None or all(
                        np.array_equal(a, b) for a, b in zip(got, results[k])) else "mismatch"
        except Exception as exc:  # reported below, with the thread's job
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    bad = [k for k, (got, want) in enumerate(zip(results, serial))
           if isinstance(got, str) or not all(np.array_equal(a, b) for a, b in zip(got, want))]
    assert not bad, f"{len(bad)} of {len(jobs)} calls differ from the serial result: {bad[:10]}"


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "cuda"])
@pytest.mark.parametrize("replace, error, words", [
    (lambda p: p * np.float64(1), TypeError, "dtype float64"),
    (lambda p: np.ones((p.shape[0], 2), np.float32), ValueError, "shape (16, 2)"),
    (lambda p: np.asfortranarray(p), TypeError, "not C-contiguous"),
    (lambda p: p.tolist(), TypeError, "list"),
], ids=["float64", "shape", "layout", "list"])
def test_replaced_parameter_is_named(backend, replace, error, words):
    lstm = fastlstm.LSTM(3, 4, backend=backend, seed=1)
    lstm.params["weight_hh_l0"] = replace(lstm.params["weight_hh_l0"])
    for call in (lambda: lstm(np.ones((2, 1, 3), np.float32)), lambda: lstm.step(np.ones((1, 3)))):
        with pytest.raises(error, match=r"params\['weight_hh_l0'\]") as info:
            call()
        assert words in str(info.value)


def test_in_place_update_is_the_way():
    lstm = fastlstm.LSTM(3, 4, seed=1)
    lstm.params["weight_hh_l0"][...] = lstm.params["weight_hh_l0"] * np.float64(2)
    y, _ = lstm(np.ones((2, 1, 3), np.float32))
    assert y.dtype == np.float32
