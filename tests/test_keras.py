"""Keras in and out (fastlstm.keras): the weight mapping against Keras's results
committed in tests/golden/keras (no Keras needed), and, where Keras 3 is installed
(KERAS_BACKEND=torch here), single, stacked and Bidirectional layers against
Keras's outputs and return_state, to_keras into Keras layers, and the clear
errors for other layers and options."""

import glob
import os

import numpy as np
import pytest

import fastlstm

GOLDEN_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "golden", "keras")
ATOL = 1e-5


def _golden(name):
    with np.load(os.path.join(GOLDEN_DIR, f"{name}.npz")) as f:
        return {k: f[k] for k in f.files}


def test_golden_lstm_without_keras():
    g = _golden("lstm")
    lstm = fastlstm.from_keras([g["w0"], g["w1"], g["w2"]])
    y, (h, c) = lstm.forward(g["x"])
    np.testing.assert_allclose(y, g["y"], atol=ATOL)
    np.testing.assert_allclose(h[0], g["states"][0], atol=ATOL)
    np.testing.assert_allclose(c[0], g["states"][1], atol=ATOL)


def test_golden_bidirectional_without_keras():
    g = _golden("bidirectional")
    fw = fastlstm.from_keras([g["w0"], g["w1"], g["w2"]])
    bw = fastlstm.from_keras([g["w3"], g["w4"], g["w5"]])
    lstm = fastlstm.LSTM(fw.input_size, fw.hidden_size, bidirectional=True, batch_first=True)
    sd = fw.state_dict()
    sd.update({k + "_reverse": v for k, v in bw.state_dict().items()})
    lstm.load_state_dict(sd)
    y, (h, c) = lstm.forward(g["x"])
    np.testing.assert_allclose(y, g["y"], atol=ATOL)   # Keras aligns the backward outputs in time
    for k, want in enumerate(g["states"]):              # h_fw, c_fw, h_bw, c_bw
        got = (h, c)[k % 2][k // 2]
        np.testing.assert_allclose(got, want, atol=ATOL)


def test_to_keras_is_from_keras_inverse():
    lstm = fastlstm.LSTM(3, 4, num_layers=2, bidirectional=True, batch_first=True, seed=1)
    weights = fastlstm.to_keras(lstm)
    assert [w.shape for w in weights[1]] == [(8, 16), (4, 16), (16,)] * 2
    x = np.random.default_rng(0).standard_normal((2, 5, 3)).astype(np.float32)
    y, _ = lstm.forward(x)
    # rebuilt from the Keras weights (bias summed into bias_ih): the same function
    back = fastlstm.LSTM(3, 4, num_layers=2, bidirectional=True, batch_first=True)
    sd = {}
    for k, w in enumerate(weights):
        for d in range(2):
            part = fastlstm.from_keras(w[3 * d:3 * d + 3]).state_dict()
            sd.update({n.replace("_l0", f"_l{k}") + ("_reverse" if d else ""): a for n, a in part.items()})
    back.load_state_dict(sd)
    np.testing.assert_allclose(back.forward(x)[0], y, atol=1e-6)


def test_projection_cannot_go_to_keras():
    with pytest.raises(ValueError, match="proj_size"):
        fastlstm.to_keras(fastlstm.LSTM(3, 4, proj_size=2))


# -- with Keras --------------------------------------------------------------------
os.environ.setdefault("KERAS_BACKEND", "torch")
keras = pytest.importorskip("keras")


def _built(layer, I, rng):
    x = rng.standard_normal((2, 5, I)).astype(np.float32)
    layer(x)
    layer.set_weights([(0.4 * rng.standard_normal(w.shape)).astype(np.float32) for w in layer.get_weights()])
    return layer


def _numpy(t):
    return np.asarray(keras.ops.convert_to_numpy(t))


@pytest.mark.parametrize("bidir", [False, True])
def test_single_layer_matches_keras(bidir):
    rng = np.random.default_rng(2)
    inner = keras.layers.LSTM(6, return_sequences=True, return_state=True)
    layer = _built(keras.layers.Bidirectional(inner) if bidir else inner, 4, rng)
    x = rng.standard_normal((3, 7, 4)).astype(np.float32)
    out = [_numpy(o) for o in layer(x)]
    y, (h, c) = fastlstm.from_keras(layer).forward(x)
    np.testing.assert_allclose(y, out[0], atol=ATOL)
    states = out[1:]
    for k, want in enumerate(states):
        np.testing.assert_allclose((h, c)[k % 2][k // 2], want, atol=ATOL)


def test_stacked_layers_match_a_keras_model():
    rng = np.random.default_rng(3)
    l1 = keras.layers.Bidirectional(keras.layers.LSTM(5, return_sequences=True))
    l2 = keras.layers.Bidirectional(keras.layers.LSTM(5, return_sequences=True))
    model = keras.Sequential([keras.Input((6, 3)), l1, l2])
    for layer in (l1, l2):
        layer.set_weights([(0.4 * rng.standard_normal(w.shape)).astype(np.float32) for w in layer.get_weights()])
    x = rng.standard_normal((4, 6, 3)).astype(np.float32)
    want = model.predict(x, verbose=0)
    lstm = fastlstm.from_keras([l1, l2])
    assert lstm.num_layers == 2 and lstm.bidirectional and lstm.batch_first
    np.testing.assert_allclose(lstm.forward(x)[0], want, atol=ATOL)


def test_to_keras_sets_keras_layers():
    lstm = fastlstm.LSTM(3, 4, num_layers=2, batch_first=True, seed=4)
    x = np.random.default_rng(5).standard_normal((2, 5, 3)).astype(np.float32)
    layers = [keras.layers.LSTM(4, return_sequences=True) for _ in range(2)]
    model = keras.Sequential([keras.Input((5, 3)), *layers])
    for layer, w in zip(layers, fastlstm.to_keras(lstm)):
        layer.set_weights(w)
    np.testing.assert_allclose(model.predict(x, verbose=0), lstm.forward(x)[0], atol=ATOL)


def test_no_bias_layer():
    rng = np.random.default_rng(6)
    layer = _built(keras.layers.LSTM(4, use_bias=False, return_sequences=True), 3, rng)
    x = rng.standard_normal((2, 5, 3)).astype(np.float32)
    lstm = fastlstm.from_keras(layer)
    assert not lstm.bias
    np.testing.assert_allclose(lstm.forward(x)[0], _numpy(layer(x)), atol=ATOL)


@pytest.mark.parametrize("make,fragment", [
    (lambda: keras.layers.GRU(4), "GRU"), (lambda: keras.layers.SimpleRNN(4), "SimpleRNN"),
    (lambda: keras.layers.LSTM(4, activation="relu"), "activation='relu'"),
    (lambda: keras.layers.LSTM(4, recurrent_activation="hard_sigmoid"), "recurrent_activation"),
    (lambda: keras.layers.LSTM(4, go_backwards=True), "go_backwards"),
    (lambda: keras.layers.Bidirectional(keras.layers.LSTM(4, return_sequences=True), merge_mode="sum"),
     "merge_mode='sum'")])
def test_refused_layers_name_the_problem(make, fragment):
    layer = _built(make(), 3, np.random.default_rng(7))
    with pytest.raises(ValueError, match=fragment):
        fastlstm.from_keras(layer)


def test_mismatched_stack_is_refused():
    rng = np.random.default_rng(8)
    a = _built(keras.layers.LSTM(4, return_sequences=True), 3, rng)
    b = _built(keras.layers.LSTM(5, return_sequences=True), 4, rng)
    with pytest.raises(ValueError, match="layer 1"):
        fastlstm.from_keras([a, b])


def test_unbuilt_layer_is_refused():
    with pytest.raises(ValueError, match="no weights yet"):
        fastlstm.from_keras(keras.layers.LSTM(4))


def test_golden_files_present():
    assert len(glob.glob(os.path.join(GOLDEN_DIR, "*.npz"))) >= 2
