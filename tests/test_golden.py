"""Every backend against committed torch.nn.LSTM results (tests/golden/*.npz).

Needs no PyTorch: the fixtures are written by tests/golden/make_golden.py.
Each fixture is run through fastlstm.LSTM forward(training=True) + backward.
"""

import glob
import os
import re
import warnings

import numpy as np
import pytest

import fastlstm
from lstm_testing import REL_TOL, rel_err

GOLDEN_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "golden")
FIXTURES = sorted(glob.glob(os.path.join(GOLDEN_DIR, "*.npz")))
PARAM_RE = re.compile(r"^(weight|bias)_(ih|hh|hr)_l\d+(_reverse)?$")
BACKENDS = fastlstm.available_backends()


def load(path):
    with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def test_fixtures_present():
    assert len(FIXTURES) >= 10, f"golden fixtures missing in {GOLDEN_DIR}"


@pytest.fixture(params=FIXTURES, ids=lambda p: os.path.basename(p)[:-4])
def golden(request):
    return load(request.param)


def make_model(g, backend):
    dtype = g["x"].dtype
    model = fastlstm.LSTM(int(g["input_size"]), int(g["hidden_size"]), int(g["num_layers"]),
                          bias=bool(g["bias"]), batch_first=bool(g["batch_first"]),
                          bidirectional=bool(g.get("bidirectional", False)),
                          proj_size=int(g.get("proj_size", 0)), dtype=dtype, backend=backend, seed=0)
    model.load_state_dict({k: v for k, v in g.items() if PARAM_RE.match(k)})
    return model


def test_state_dict_matches_fixture(golden):
    model = make_model(golden, "numpy")
    want = {k: v for k, v in golden.items() if PARAM_RE.match(k)}
    got = model.state_dict()
    assert list(got) == list(want)  # same names, in torch's order
    for k in want:
        assert got[k].shape == want[k].shape, k
        assert got[k].dtype == want[k].dtype, k
        np.testing.assert_array_equal(got[k], want[k])


@pytest.mark.parametrize("backend", BACKENDS)
def test_forward_backward_matches_torch(golden, backend):
    g = golden
    dtype = g["x"].dtype
    tol = REL_TOL[dtype]
    model = make_model(g, backend)

    lengths = g.get("lengths")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a backend without an option falls back
        y_inf, (h_inf, c_inf) = model.forward(g["x"], (g["h0"], g["c0"]), lengths=lengths, training=False)
        y, (h_n, c_n) = model.forward(g["x"], (g["h0"], g["c0"]), lengths=lengths, training=True)
    dx, (dh0, dc0) = model.backward(g["dy"], (g["dh_n"], g["dc_n"]))

    got = {"y": y, "h_n": h_n, "c_n": c_n, "dx": dx, "dh0": dh0, "dc0": dc0,
           "y (inference)": y_inf, "h_n (inference)": h_inf, "c_n (inference)": c_inf}
    got.update({f"grad_{k}": v for k, v in model.grads.items()})
    want_keys = [k for k in g if k.startswith("grad_")]
    assert sorted(k for k in got if k.startswith("grad_")) == sorted(want_keys)

    errors = {}
    for name, value in got.items():
        want = g[name.split(" ")[0]]
        assert value.dtype == dtype, name
        errors[name] = rel_err(value, want)
    bad = {k: e for k, e in errors.items() if not e < tol}
    assert not bad, f"relative error above {tol:g} ({dtype}, backend {backend}): {bad}"
