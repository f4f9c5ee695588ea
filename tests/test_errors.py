"""Bad input raises the same exception, with a message naming the argument, on every backend.

Covers the layer (constructor, forward, backward, step, load_state_dict), the
functional API, and backend selection (names, FASTLSTM_BACKEND).
"""

import re

import numpy as np
import pytest

import fastlstm
from lstm_testing import BACKENDS

T, N, I, H, L = 3, 2, 4, 5, 2


def _layer(backend, **kw):
    return fastlstm.LSTM(I, H, L, backend=backend, seed=0, **kw)


def _x(*shape, dtype=np.float32):
    return np.ones(shape or (T, N, I), dtype)


def _state(shape=(L, N, H)):
    return np.zeros(shape, np.float32), np.zeros(shape, np.float32)


def _trained(backend, **kw):
    layer = _layer(backend, **kw)
    layer.forward(_x(N, T, I) if kw.get("batch_first") else _x(), training=True)
    return layer


def _backward_twice(backend):
    layer = _trained(backend)
    layer.backward(np.ones((T, N, H), np.float32))
    layer.backward(np.ones((T, N, H), np.float32))


def _backward_after_eval(backend):
    layer = _trained(backend)
    layer.forward(_x())  # an inference pass drops what backward needs
    layer.backward(np.ones((T, N, H), np.float32))


def _functional(backend, x=None, W_ih=None, W_hh=None, b_ih=None, state=None):
    W_ih = np.zeros((4 * H, I), np.float32) if W_ih is None else W_ih
    W_hh = np.zeros((4 * H, H), np.float32) if W_hh is None else W_hh
    return fastlstm.lstm_forward(_x() if x is None else x, W_ih, W_hh, b_ih, None, state,
                                 backend=backend)


def _functional_backward_twice(backend):
    y, _, cache = _functional(backend)
    fastlstm.lstm_backward(cache, np.ones_like(y))
    fastlstm.lstm_backward(cache, np.ones_like(y))


# (id, call(backend), exception type, regex the message must match)
CASES = [
    # forward: x
    ("x-1d", lambda b: _layer(b)(_x(T)), ValueError,
     r"^x must be 3-D \(T, N, I\) \(or 2-D \(T, I\) unbatched\), got shape \(3,\)"),
    ("x-2d-feature-size", lambda b: _layer(b)(_x(T, I + 1)), ValueError,
     r"^x must have shape \(T, I\) = \(\?, 4\), got shape \(3, 5\)"),
    ("x-4d", lambda b: _layer(b)(_x(T, N, I, 1)), ValueError, r"^x must be 3-D"),
    ("x-feature-size", lambda b: _layer(b)(_x(T, N, I + 1)), ValueError,
     r"^x must have shape \(T, N, I\) = \(\?, \?, 4\), got shape \(3, 2, 5\)"),
    ("x-feature-size-bfirst", lambda b: _layer(b, batch_first=True)(_x(N, T, I + 1)), ValueError,
     r"^x must have shape \(N, T, I\)"),
    ("x-complex", lambda b: _layer(b)(_x(dtype=np.complex64)),
     TypeError, r"^x must hold real numbers.*complex64"),
    ("x-object", lambda b: _layer(b)(_x(dtype=object)), TypeError, r"^x must hold real numbers.*object"),
    ("x-string", lambda b: _layer(b)(np.full((T, N, I), "a")), TypeError, r"^x must hold real numbers"),
    ("x-ragged", lambda b: _layer(b)([[[1.0] * I], [[1.0] * (I - 1)]]),
     ValueError, r"^x could not be converted"),
    # forward: state
    ("state-single-array", lambda b: _layer(b)(_x(), np.zeros((L, N, H), np.float32)), TypeError,
     r"^state must be a pair \(h, c\).*array of shape \(2, 2, 5\)"),
    ("state-3-tuple", lambda b: _layer(b)(_x(), _state() + (np.zeros((L, N, H)),)), TypeError,
     r"^state must be a pair \(h, c\)"),
    ("state-h-shape", lambda b: _layer(b)(_x(), (np.zeros((L, N + 1, H)), np.zeros((L, N, H)))), ValueError,
     r"^state\[0\] must have shape \(L, N, H\) = \(2, 2, 5\), got shape \(2, 3, 5\)"),
    ("state-c-shape", lambda b: _layer(b)(_x(), (np.zeros((L, N, H)), np.zeros((L - 1, N, H)))), ValueError,
     r"^state\[1\] must have shape \(L, N, H\)"),
    ("state-2d", lambda b: _layer(b)(_x(), (np.zeros((N, H)), np.zeros((N, H)))), ValueError,
     r"^state\[0\] must be 3-D \(L, N, H\)"),
    ("state-complex", lambda b: _layer(b)(_x(), (np.zeros((L, N, H), complex), np.zeros((L, N, H)))),
     TypeError, r"^state\[0\] must hold real numbers"),
    # backward
    ("backward-without-forward", lambda b: _layer(b).backward(np.ones((T, N, H))), RuntimeError,
     r"^backward needs a preceding forward\(\.\.\., training=True\)"),
    ("backward-after-eval-forward", _backward_after_eval,
     RuntimeError, r"^backward needs a preceding forward"),
    ("backward-twice", _backward_twice, RuntimeError, r"^backward needs a preceding forward"),
    ("dy-shape", lambda b: _trained(b).backward(np.ones((T, N, H + 1))), ValueError,
     r"^dy must have shape \(T, N, H\) = \(3, 2, 5\), got shape \(3, 2, 6\)"),
    ("dy-ndim", lambda b: _trained(b).backward(np.ones((T, N))), ValueError, r"^dy must be 3-D"),
    ("dy-time-major-when-batch-first", lambda b: _trained(b, batch_first=True).backward(np.ones((T, N, H))),
     ValueError, r"^dy must have shape \(N, T, H\)"),
    ("dy-complex", lambda b: _trained(b).backward(np.ones((T, N, H), complex)),
     TypeError, r"^dy must hold real numbers"),
    ("dstate-shape", lambda b: _trained(b).backward(np.ones((T, N, H)), _state((L, N, H + 1))), ValueError,
     r"^dstate\[0\] must have shape \(L, N, H\)"),
    ("dstate-single-array", lambda b: _trained(b).backward(np.ones((T, N, H)), np.zeros((L, N, H))),
     TypeError, r"^dstate must be a pair"),
    # step
    ("step-x-ndim", lambda b: _layer(b).step(np.ones(I)), ValueError, r"^x_t must be 2-D \(N, I\)"),
    ("step-x-feature-size", lambda b: _layer(b).step(np.ones((N, I + 1))),
     ValueError, r"^x_t must have shape \(N, I\)"),
    ("step-state-single-array", lambda b: _layer(b).step(np.ones((N, I)), np.zeros((L, N, H))), TypeError,
     r"^state must be a pair"),
    ("step-state-shape", lambda b: _layer(b).step(np.ones((N, I)), _state((L, N + 1, H))), ValueError,
     r"^state\[0\] must have shape \(L, N, H\)"),
    # constructor
    ("ctor-input-size-zero", lambda b: fastlstm.LSTM(0, H, backend=b),
     ValueError, r"^input_size must be >= 1, got 0"),
    ("ctor-hidden-size-negative", lambda b: fastlstm.LSTM(I, -1, backend=b),
     ValueError, r"^hidden_size must be >= 1"),
    ("ctor-num-layers-zero", lambda b: fastlstm.LSTM(I, H, 0, backend=b),
     ValueError, r"^num_layers must be >= 1"),
    ("ctor-hidden-size-float", lambda b: fastlstm.LSTM(I, 5.0, backend=b),
     TypeError, r"^hidden_size must be an integer"),
    ("ctor-input-size-str", lambda b: fastlstm.LSTM("4", H, backend=b),
     TypeError, r"^input_size must be an integer"),
    ("ctor-num-layers-bool", lambda b: fastlstm.LSTM(I, H, True, backend=b),
     TypeError, r"^num_layers must be an integer"),
    ("ctor-dropout-one", lambda b: fastlstm.LSTM(I, H, 2, dropout=1.0, backend=b), ValueError,
     r"^dropout must be a number in \[0, 1\), got 1.0"),
    ("ctor-dropout-negative", lambda b: fastlstm.LSTM(I, H, 2, dropout=-0.1, backend=b),
     ValueError, r"^dropout must"),
    ("ctor-dropout-nan", lambda b: fastlstm.LSTM(I, H, 2, dropout=float("nan"), backend=b),
     ValueError, r"^dropout must"),
    ("ctor-dropout-str", lambda b: fastlstm.LSTM(I, H, 2, dropout="0.5", backend=b),
     ValueError, r"^dropout must"),
    ("ctor-dtype-float16", lambda b: fastlstm.LSTM(I, H, dtype=np.float16, backend=b), TypeError,
     r"^dtype must be float32 or float64, got float16"),
    ("ctor-dtype-int", lambda b: fastlstm.LSTM(I, H, dtype=np.int64, backend=b),
     TypeError, r"^dtype must be float32 or float64"),
    ("ctor-dtype-complex", lambda b: fastlstm.LSTM(I, H, dtype=np.complex128, backend=b),
     TypeError, r"^dtype must be"),
    ("ctor-dtype-bogus", lambda b: fastlstm.LSTM(I, H, dtype="no-such-dtype", backend=b),
     TypeError, r"^dtype must be"),
    # functional
    ("fn-x-2d", lambda b: _functional(b, x=_x(T, I)), ValueError, r"^x must be 3-D \(T, N, I\)"),
    ("fn-x-feature-size", lambda b: _functional(b, x=_x(T, N, I + 1)),
     ValueError, r"^x must have shape \(T, N, I\)"),
    ("fn-x-complex", lambda b: _functional(b, x=_x(dtype=np.complex128)),
     TypeError, r"^x must hold real numbers"),
    ("fn-weight-ih-not-4h", lambda b: _functional(b, W_ih=np.zeros((4 * H + 1, I), np.float32)), ValueError,
     r"^weight_ih must have shape \(4H, I\)"),
    ("fn-weight-ih-1d", lambda b: _functional(b, W_ih=np.zeros(4 * H, np.float32)),
     ValueError, r"^weight_ih must be 2-D"),
    ("fn-weight-hh-shape", lambda b: _functional(b, W_hh=np.zeros((4 * H, H + 1), np.float32)), ValueError,
     r"^weight_hh must have shape \(4H, H\)"),
    ("fn-weight-float16", lambda b: _functional(b, W_ih=np.zeros((4 * H, I), np.float16)), TypeError,
     r"^dtype must be float32 or float64"),
    ("fn-bias-shape", lambda b: _functional(b, b_ih=np.zeros(4 * H + 1, np.float32)), ValueError,
     r"^bias_ih must have shape \(4H,\)"),
    ("fn-state-single-array", lambda b: _functional(b, state=np.zeros((N, H))),
     TypeError, r"^state must be a pair"),
    ("fn-state-shape", lambda b: _functional(b, state=(np.zeros((N, H)), np.zeros((N + 1, H)))), ValueError,
     r"^state\[1\] must have shape \(N, H\)"),
    ("fn-backward-twice", _functional_backward_twice, RuntimeError, r"^backward was already run"),
    ("fn-backward-no-cache", lambda b: fastlstm.lstm_backward(
        fastlstm.lstm_forward(_x(), np.zeros((4 * H, I)), np.zeros((4 * H, H)),
                              training=False, backend=b)[2], np.ones((T, N, H))),
     TypeError, r"^cache must be the LSTMCache"),
    ("fn-dy-shape", lambda b: fastlstm.lstm_backward(_functional(b)[2], np.ones((T, N + 1, H))), ValueError,
     r"^dy must have shape \(T, N, H\)"),
    ("fn-dstate-shape",
     lambda b: fastlstm.lstm_backward(_functional(b)[2], np.ones((T, N, H)), _state((N, H + 1))),
     ValueError, r"^dstate\[0\] must have shape \(N, H\)"),
]


@pytest.mark.parametrize("call, exc, pattern", [pytest.param(c, e, p, id=i) for i, c, e, p in CASES])
def test_bad_input_raises(backend, call, exc, pattern):
    with pytest.raises(exc, match=pattern):
        call(backend)


@pytest.mark.parametrize("call", [pytest.param(c, id=i) for i, c, _, _ in CASES])
def test_same_exception_on_every_backend(call):
    seen = {}
    for b in BACKENDS:
        with pytest.raises(Exception) as info:
            call(b)
        seen[b] = (type(info.value), str(info.value))
    assert len(set(seen.values())) == 1, seen


def test_layer_still_usable_after_errors(backend):
    layer = _layer(backend)
    with pytest.raises(ValueError):
        layer(_x(T, N, I + 1))
    y, _ = layer.forward(_x(), training=True)
    with pytest.raises(ValueError, match="dy"):
        layer.backward(np.ones((T, N, H + 1)))
    dx, _ = layer.backward(np.ones_like(y))  # the failed backward consumed nothing
    assert dx.shape == (T, N, I) and np.all(np.isfinite(dx))


# -- load_state_dict --------------------------------------------------------

def _params_snapshot(layer):
    return {k: v.copy() for k, v in layer.params.items()}


def _assert_unchanged(layer, before):
    assert set(layer.params) == set(before)
    for k, v in before.items():
        np.testing.assert_array_equal(layer.params[k], v, err_msg=k)


def _new_values(layer):
    return {k: v + 1 for k, v in layer.state_dict().items()}


def test_load_state_dict_missing_key(backend):
    layer = _layer(backend)
    before = _params_snapshot(layer)
    sd = _new_values(layer)
    del sd["weight_hh_l1"]
    with pytest.raises(KeyError, match="weight_hh_l1"):
        layer.load_state_dict(sd)
    _assert_unchanged(layer, before)


def test_load_state_dict_unexpected_key(backend):
    layer = _layer(backend)
    before = _params_snapshot(layer)
    sd = _new_values(layer)
    sd["weight_ih_l2"] = np.zeros((4 * H, H), np.float32)
    with pytest.raises(KeyError, match="weight_ih_l2"):
        layer.load_state_dict(sd)
    _assert_unchanged(layer, before)
    layer.load_state_dict(sd, strict=False)  # extra keys ignored when not strict
    for k, v in _new_values(fastlstm.LSTM(I, H, L, seed=0)).items():
        np.testing.assert_array_equal(layer.params[k], v, err_msg=k)


@pytest.mark.parametrize("bad_key", ["weight_ih_l0", "bias_hh_l1"])
def test_load_state_dict_wrong_shape(backend, bad_key):
    layer = _layer(backend)
    before = _params_snapshot(layer)
    sd = _new_values(layer)  # every other entry valid: nothing may be half-loaded
    sd[bad_key] = np.zeros(sd[bad_key].shape[:-1] + (sd[bad_key].shape[-1] + 1,), np.float32)
    with pytest.raises(ValueError, match=re.escape(f"state_dict['{bad_key}']")):
        layer.load_state_dict(sd)
    _assert_unchanged(layer, before)


def test_load_state_dict_transposed_weight(backend):
    """A Keras-layout kernel (I, 4H) is refused, not silently reshaped."""
    layer = _layer(backend)
    before = _params_snapshot(layer)
    sd = _new_values(layer)
    sd["weight_ih_l0"] = sd["weight_ih_l0"].T.copy()
    with pytest.raises(ValueError, match=r"weight_ih_l0.*\(20, 4\)"):
        layer.load_state_dict(sd)
    _assert_unchanged(layer, before)


def test_load_state_dict_complex_value(backend):
    layer = _layer(backend)
    before = _params_snapshot(layer)
    sd = _new_values(layer)
    sd["bias_ih_l1"] = sd["bias_ih_l1"].astype(complex)
    with pytest.raises(TypeError, match="bias_ih_l1"):
        layer.load_state_dict(sd)
    _assert_unchanged(layer, before)


# -- backend names ----------------------------------------------------------

def _lists_available(message):
    return all(name in message.split("available here:")[-1] for name in fastlstm.available_backends())


@pytest.mark.parametrize("where", ["layer", "functional"])
def test_unknown_backend_name(where):
    with pytest.raises(ValueError, match=r"unknown backend 'no-such-backend'") as info:
        if where == "layer":
            fastlstm.LSTM(I, H, backend="no-such-backend")
        else:
            _functional("no-such-backend")
    assert "available here:" in str(info.value) and _lists_available(str(info.value))


@pytest.mark.skipif("cuda" in BACKENDS, reason="cuda is available here")
@pytest.mark.parametrize("where", ["layer", "functional"])
def test_unavailable_backend_name(where):
    with pytest.raises(ValueError, match=r"backend 'cuda' is not available") as info:
        if where == "layer":
            fastlstm.LSTM(I, H, backend="cuda")
        else:
            _functional("cuda")
    assert "available here:" in str(info.value) and _lists_available(str(info.value))


def test_backend_name_not_a_string():
    with pytest.raises(TypeError, match="backend must be a string"):
        fastlstm.LSTM(I, H, backend=None)


@pytest.mark.parametrize("call", [
    pytest.param(lambda: fastlstm.LSTM(I, H, L, seed=0)(_x()), id="forward"),
    pytest.param(lambda: fastlstm.LSTM(I, H, L, seed=0).step(np.ones((N, I))), id="step"),
    pytest.param(lambda: _functional("auto"), id="functional"),
])
def test_bogus_environment_backend(monkeypatch, call):
    monkeypatch.setenv("FASTLSTM_BACKEND", "bogus")
    with pytest.raises(ValueError, match=r"unknown backend 'bogus'") as info:
        call()
    assert _lists_available(str(info.value))


def test_environment_is_read_as_it_is_now(monkeypatch):
    # _config reads the variables at every call, from os.environ's own dictionary on
    # POSIX: a change, a removal and a replaced os.environ are all seen at once
    from fastlstm import _config
    monkeypatch.setenv("FASTLSTM_NUM_THREADS", " 3 ")
    assert _config.env_int("FASTLSTM_NUM_THREADS", 1) == 3
    monkeypatch.setenv("FASTLSTM_NUM_THREADS", "5")
    assert _config.env_int("FASTLSTM_NUM_THREADS", 1) == 5
    monkeypatch.delenv("FASTLSTM_NUM_THREADS")
    assert _config.env_int("FASTLSTM_NUM_THREADS", 1) == 1
    monkeypatch.setattr("os.environ", {"FASTLSTM_NUM_THREADS": "7"})
    assert _config.env_int("FASTLSTM_NUM_THREADS", 1) == 7
    monkeypatch.undo()
    monkeypatch.setenv("FASTLSTM_NUM_THREADS", "bogus")
    with pytest.raises(_config.ConfigError, match="FASTLSTM_NUM_THREADS='bogus'"):
        _config.env_int("FASTLSTM_NUM_THREADS", 1)
