"""ONNX in and out (fastlstm.onnx): the weight mapping against onnxruntime's results
committed in tests/golden/onnx (no onnx needed), and, where onnx and onnxruntime are
installed, to_onnx under onnxruntime against fastlstm's forward (layers, directions,
batch_first, initial states, sequence_lens), from_onnx of hand-written graphs, the
round trip, and the clear errors for what fastlstm cannot compute."""

import glob
import os

import numpy as np
import pytest

import fastlstm
from fastlstm.onnx import lstm_weights, onnx_weights

GOLDEN = sorted(glob.glob(os.path.join(os.path.dirname(os.path.abspath(__file__)), "golden", "onnx", "*.npz")))
ATOL = 1e-5


def _golden_layer(g):
    D, G, I = g["W"].shape
    H = G // 4
    lstm = fastlstm.LSTM(I, H, bias="B" in g, bidirectional=D == 2, backend="numpy")
    weights = lstm_weights(g["W"], g["R"], g.get("B"), 0)
    if "B" not in g:
        weights = {k: v for k, v in weights.items() if not k.startswith("bias")}
    lstm.load_state_dict(weights)
    return lstm, D, H


@pytest.mark.parametrize("path", GOLDEN, ids=[os.path.basename(p)[:-4] for p in GOLDEN])
def test_mapping_matches_onnxruntime_golden(path):
    with np.load(path) as f:
        g = {k: f[k] for k in f.files}
    lstm, D, H = _golden_layer(g)
    T, N, _ = g["X"].shape
    state = (g["h0"], g["c0"]) if "h0" in g else None
    y, (h, c) = lstm.forward(g["X"], state, lengths=g.get("lengths"))
    want = g["Y"].transpose(0, 2, 1, 3).reshape(T, N, D * H)
    np.testing.assert_allclose(y, want, atol=ATOL)
    np.testing.assert_allclose(h, g["Y_h"], atol=ATOL)
    np.testing.assert_allclose(c, g["Y_c"], atol=ATOL)


def test_golden_fixtures_present():
    assert len(GOLDEN) >= 2


def test_weight_mapping_round_trip():
    lstm = fastlstm.LSTM(3, 4, num_layers=2, bidirectional=True, seed=1)
    sd = lstm.state_dict()
    for k in range(2):
        W, R, B = onnx_weights(sd, k, 2)
        assert W.shape == (2, 16, 3 if k == 0 else 8) and R.shape == (2, 16, 4) and B.shape == (2, 32)
        back = lstm_weights(W, R, B, k)
        for name, a in back.items():
            np.testing.assert_array_equal(a, sd[name])


# -- with onnx and onnxruntime --------------------------------------------------------
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402


def _run(model, feed):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feed)


@pytest.mark.parametrize("L,bidir,batch_first,lengths,dtype", [
    (1, False, False, False, np.float32), (2, False, True, False, np.float32),
    (3, True, False, True, np.float32), (2, True, True, True, np.float32)])
def test_to_onnx_runs_in_onnxruntime_as_fastlstm(tmp_path, L, bidir, batch_first, lengths, dtype):
    T, N, I, H = 6, 3, 5, 4
    lstm = fastlstm.LSTM(I, H, num_layers=L, bidirectional=bidir, batch_first=batch_first, dtype=dtype, seed=3)
    path = tmp_path / "m.onnx"
    fastlstm.to_onnx(lstm, path, lengths=lengths)
    rng = np.random.default_rng(0)
    D = 2 if bidir else 1
    x = rng.standard_normal((N, T, I) if batch_first else (T, N, I)).astype(dtype)
    h0 = rng.standard_normal((D * L, N, H)).astype(dtype)
    c0 = rng.standard_normal((D * L, N, H)).astype(dtype)
    lens = np.array([6, 2, 4], np.int32)
    feed = {"X": x, "initial_h": h0, "initial_c": c0}
    if lengths:
        feed["sequence_lens"] = lens
    Y, Y_h, Y_c = _run(onnx.load(str(path)), feed)
    y, (h, c) = lstm.forward(x, (h0, c0), lengths=lens if lengths else None)
    np.testing.assert_allclose(Y, y, atol=ATOL)
    np.testing.assert_allclose(Y_h, h, atol=ATOL)
    np.testing.assert_allclose(Y_c, c, atol=ATOL)


def test_round_trip_keeps_the_layer(tmp_path):
    lstm = fastlstm.LSTM(5, 4, num_layers=2, bidirectional=True, batch_first=True, seed=2)
    back = fastlstm.from_onnx(fastlstm.to_onnx(lstm, tmp_path / "m.onnx"))
    assert (back.num_layers, back.bidirectional, back.batch_first, back.hidden_size) == (2, True, True, 4)
    for name, a in lstm.state_dict().items():
        np.testing.assert_array_equal(back.state_dict()[name], a)
    again = fastlstm.from_onnx(tmp_path / "m.onnx")
    assert again.batch_first


def test_float64_layer_exports_as_double(tmp_path):
    # onnxruntime's LSTM runs float32 only; the model is still valid ONNX and reads back exactly.
    lstm = fastlstm.LSTM(3, 4, dtype=np.float64, seed=4)
    model = fastlstm.to_onnx(lstm, None)
    assert model.graph.input[0].type.tensor_type.elem_type == TensorProto.DOUBLE
    back = fastlstm.from_onnx(model)
    assert back.dtype == np.float64
    for name, a in lstm.state_dict().items():
        np.testing.assert_array_equal(back.state_dict()[name], a)


def _hand_node(I, H, *, with_b=True, direction="forward", layout=0, extra_inputs=(), **attrs):
    """A one-node model written with onnx.helper, W/R/B random."""
    rng = np.random.default_rng(5)
    D = 2 if direction == "bidirectional" else 1
    W = (0.5 * rng.standard_normal((D, 4 * H, I))).astype(np.float32)
    R = (0.5 * rng.standard_normal((D, 4 * H, H))).astype(np.float32)
    B = (0.5 * rng.standard_normal((D, 8 * H))).astype(np.float32)
    inits = [numpy_helper.from_array(W, "W"), numpy_helper.from_array(R, "R")]
    if with_b:
        inits.append(numpy_helper.from_array(B, "B"))
    ins = ["X", "W", "R", "B" if with_b else "", "", "initial_h", "initial_c", *extra_inputs]
    node = helper.make_node("LSTM", ins, ["Y", "Y_h", "Y_c"], hidden_size=H, direction=direction, layout=layout,
                            **attrs)
    dims = ["N", "T", I] if layout else ["T", "N", I]
    st = ["N", D, H] if layout else [D, "N", H]
    inputs = [helper.make_tensor_value_info("X", TensorProto.FLOAT, dims)] + [
        helper.make_tensor_value_info(n, TensorProto.FLOAT, st) for n in ("initial_h", "initial_c")]
    outputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("Y", "Y_h", "Y_c")]
    return helper.make_model(helper.make_graph([node], "hand", inputs, outputs, inits),
                             opset_imports=[helper.make_opsetid("", 14)])


@pytest.mark.parametrize("with_b,direction,layout", [(True, "forward", 0), (False, "bidirectional", 0),
                                                     (True, "forward", 1)])
def test_from_onnx_of_a_hand_written_node(with_b, direction, layout):
    T, N, I, H = 5, 2, 3, 4
    D = 2 if direction == "bidirectional" else 1
    model = _hand_node(I, H, with_b=with_b, direction=direction, layout=layout)
    lstm = fastlstm.from_onnx(model)
    assert lstm.batch_first == bool(layout) and lstm.bias == with_b
    rng = np.random.default_rng(1)
    x = rng.standard_normal((N, T, I) if layout else (T, N, I)).astype(np.float32)
    h0 = rng.standard_normal((D, N, H)).astype(np.float32)
    c0 = rng.standard_normal((D, N, H)).astype(np.float32)
    # onnxruntime refuses layout 1: it runs the same weights in a layout-0 twin, time-major.
    twin = _hand_node(I, H, with_b=with_b, direction=direction) if layout else model
    Y, Y_h, _ = _run(twin, {"X": x.transpose(1, 0, 2).copy() if layout else x, "initial_h": h0, "initial_c": c0})
    y, (h, _) = lstm.forward(x, (h0, c0))
    want = Y.transpose(0, 2, 1, 3).reshape(T, N, D * H)   # Y (T, D, N, H)
    np.testing.assert_allclose(y.transpose(1, 0, 2) if layout else y, want, atol=ATOL)
    np.testing.assert_allclose(h, Y_h, atol=ATOL)


@pytest.mark.parametrize("kw,fragment", [
    (dict(clip=2.0), "'clip'"), (dict(input_forget=1), "'input_forget'"),
    (dict(activations=["Sigmoid", "Relu", "Tanh"]), "'activations'"), (dict(direction="reverse"), "'reverse'"),
    (dict(extra_inputs=("P",)), "peephole")])
def test_from_onnx_refuses_what_fastlstm_cannot_compute(kw, fragment):
    model = _hand_node(3, 4, **kw)
    with pytest.raises(ValueError, match=fragment):
        fastlstm.from_onnx(model)


def test_from_onnx_bad_files(tmp_path):
    graph = helper.make_graph([helper.make_node("Relu", ["X"], ["Y"])], "relu",
                              [helper.make_tensor_value_info("X", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [2])])
    with pytest.raises(ValueError, match="no LSTM node .*Relu"):
        fastlstm.from_onnx(helper.make_model(graph))
    good = _hand_node(3, 4).SerializeToString()
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(good[: len(good) // 3])
    with pytest.raises(ValueError, match="not an ONNX model|empty graph|LSTM"):
        fastlstm.from_onnx(cut)
    with pytest.raises(ValueError, match="cannot read"):
        fastlstm.from_onnx(tmp_path / "missing.onnx")


def test_to_onnx_refuses_a_projection(tmp_path):
    with pytest.raises(ValueError, match="proj_size"):
        fastlstm.to_onnx(fastlstm.LSTM(3, 4, proj_size=2), tmp_path / "p.onnx")
