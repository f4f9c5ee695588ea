"""`fastlstm export`: a trained character model as one ONNX graph. In onnxruntime it
gives CharModel's next-character logits (so the same distribution) on the same prime,
stepping one character at a time with the state fed back as well as on the whole
prime at once; both input modes; the vocabulary is in the metadata; bad input exits 2.
Skips without onnx and onnxruntime."""

import json

import numpy as np
import pytest

from fastlstm.charlm import cli
from fastlstm.charlm.checkpoints import load_checkpoint, model_from_checkpoint

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

TEXT = "the quick brown fox jumps over the lazy dog; " * 40


def _train(tmp_path, *extra):
    text = tmp_path / "text.txt"
    text.write_text(TEXT)
    out = tmp_path / "run"
    code = cli.main(["train", "--text", str(text), "--out", str(out), "--max-steps", "4", "--hidden-size", "8",
                     "--layers", "2", "--embed-dim", "5", "--batch-size", "4", "--seq-len", "12", "--eval-every", "2",
                     "--sample-length", "0", "--progress", "none", *extra])
    assert code == 0
    return out


@pytest.mark.parametrize("mode", ["embedding", "scaled"])
def test_exported_model_gives_char_models_logits(tmp_path, capsys, mode):
    out = _train(tmp_path, "--input", mode)
    path = tmp_path / "model.onnx"
    assert cli.main(["export", "--checkpoint", str(out), "--onnx", str(path)]) == 0
    assert "wrote" in capsys.readouterr().out
    meta, arrays = load_checkpoint(out, prefer_best=True)
    model = model_from_checkpoint(meta, arrays, backend="numpy")
    proto = onnx.load(str(path))
    props = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(props["vocab"]) == list(meta["vocab"]) and props["input_mode"] == mode
    index = {c: i for i, c in enumerate(json.loads(props["vocab"]))}
    prime = "the lazy fox"
    ids = np.array([[index[c]] for c in prime], np.int64)          # (T, 1)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    L, H = model.num_layers, model.hidden_size
    zeros = np.zeros((L, 1, H), np.float32)
    logits, h, c = sess.run(None, {"ids": ids, "h0": zeros, "c0": zeros})
    want, (wh, wc) = model.forward(ids)
    np.testing.assert_allclose(logits, want, atol=1e-5)
    np.testing.assert_allclose(h, wh, atol=1e-5)
    # one character at a time, the state fed back: the same last logits
    state = (zeros, zeros)
    for t in range(len(prime)):
        step, *state = sess.run(None, {"ids": ids[t:t + 1], "h0": state[0], "c0": state[1]})
    np.testing.assert_allclose(step[0], want[-1], atol=1e-5)
    p = np.exp(step[0, 0] - step[0, 0].max())
    q = np.exp(want[-1, 0] - want[-1, 0].max())
    np.testing.assert_allclose(p / p.sum(), q / q.sum(), atol=1e-6)


def test_export_errors_exit_2(tmp_path, capsys):
    assert cli.main(["export", "--checkpoint", str(tmp_path / "nothing"), "--onnx", str(tmp_path / "m.onnx")]) == 2
    assert "fastlstm export: error" in capsys.readouterr().err
    out = _train(tmp_path)
    assert cli.main(["export", "--checkpoint", str(out), "--onnx", str(tmp_path / "m.onnx"), "--opset", "9"]) == 2
    assert "opset" in capsys.readouterr().err
