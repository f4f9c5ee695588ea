"""`python -m fastlstm.bench --ort`: the ONNX graph it builds computes fastlstm's
LSTM (gate order and biases mapped right), and a tiny run writes its report.
Skips without onnx and onnxruntime."""

import json

import numpy as np
import pytest

import fastlstm

pytest.importorskip("onnx")
ort_runtime = pytest.importorskip("onnxruntime")

from fastlstm.bench import ort  # noqa: E402


def test_onnx_graph_matches_fastlstm():
    rng = np.random.default_rng(0)
    T, N, I, H = 5, 3, 4, 6
    w = {"W_ih": rng.standard_normal((4 * H, I)), "W_hh": rng.standard_normal((4 * H, H)),
         "b_ih": rng.standard_normal(4 * H), "b_hh": rng.standard_normal(4 * H)}
    w = {k: (0.3 * a).astype(np.float32) for k, a in w.items()}
    x = rng.standard_normal((T, N, I)).astype(np.float32)
    sess = ort_runtime.InferenceSession(ort.onnx_model(**w), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"X": x})[0][:, 0]
    want, _, _ = fastlstm.lstm_forward(x, *w.values(), backend="numpy")
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_tiny_run_writes_its_report(tmp_path):
    rows = ort.main([1], 2, 2, tmp_path, "python -m fastlstm.bench --ort", points=((8, 4),), batches=(1, 2),
                    log=lambda *a: None)
    assert [(r["H"], r["N"]) for r in rows] == [(8, 1), (8, 2)]
    assert all(r["fastlstm"] > 0 and r["ort"] > 0 and r["max_abs_diff"] < ort.AGREE for r in rows)
    text = (tmp_path / "ORT.md").read_text()
    assert "| 8 | 4 | 1 | 1 |" in text and "N=1 points at or below 1.0x ONNX Runtime" in text
    assert 'inference_weights("float32", packed=True)' in text  # both pack once, and say so
    assert json.loads((tmp_path / "ort.json").read_text())["rows"][0]["H"] == 8
