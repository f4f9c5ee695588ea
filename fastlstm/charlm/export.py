"""`fastlstm export`: a trained character model as one ONNX graph, for deployment with
nothing of fastlstm (onnxruntime or any ONNX runtime).

The graph: inputs ``ids`` (T, N) int64 (time-major character ids), ``h0``, ``c0``
(L, N, H) float; outputs ``logits`` (T, N, V) (the next character's, before softmax),
``h_n``, ``c_n`` (the state to feed back: T=1 steps one character at a time). Inside:
the embedding as a Gather (or, for the tutorial's "scaled" input, ids / V as the one
feature), the LSTM as one ONNX LSTM node per layer (fastlstm.onnx.lstm_nodes), the
dense layer as MatMul + Add. The model's metadata holds the vocabulary (JSON list of
characters, id order), the input mode and whether the model lower-cases its text.
"""

from __future__ import annotations

import json
import os

import numpy as np

from ..onnx import GraphParts, check_opset, elem_type, lstm_nodes


def char_model_onnx(model, vocab: list[str], *, lowercase: bool = False, opset: int | None = None):
    """The ONNX ModelProto of ``model`` (a CharModel) with ``vocab`` in its metadata."""
    from ..onnx import _onnx
    onnx = _onnx()
    from onnx import TensorProto, helper

    opset = check_opset(opset)
    dt = np.dtype(model.dtype)
    elem = elem_type(dt)
    V, H, L = model.vocab_size, model.hidden_size, model.num_layers
    parts = GraphParts()
    if model.embedding is not None:
        x = parts.node("Gather", [parts.const("embedding", model.embedding.params["weight"]), "ids"], ["x"], axis=0)
    else:  # the tutorial's input: the id scaled to [0, 1), one feature
        ids = parts.node("Cast", ["ids"], ["ids_float"], to=elem)
        scaled = parts.node("Div", [ids, parts.const("vocab_size", np.array(V, dt))], ["ids_scaled"])
        x = parts.node("Unsqueeze", [scaled, parts.const("feature_axis", np.array([2], np.int64))], ["x"])
    y, h_n, c_n = lstm_nodes(parts, model.lstm, x, "h0", "c0")
    dense_w = np.ascontiguousarray(model.dense.params["weight"].T)       # (H, V)
    prod = parts.node("MatMul", [y, parts.const("dense_weight_t", dense_w)], ["dense_product"])
    parts.node("Add", [prod, parts.const("dense_bias", model.dense.params["bias"])], ["logits"])
    parts.node("Identity", [h_n], ["h_n"])
    parts.node("Identity", [c_n], ["c_n"])
    inputs = [helper.make_tensor_value_info("ids", TensorProto.INT64, ["T", "N"]),
              helper.make_tensor_value_info("h0", elem, [L, "N", H]),
              helper.make_tensor_value_info("c0", elem, [L, "N", H])]
    outputs = [helper.make_tensor_value_info("logits", elem, ["T", "N", V]),
               helper.make_tensor_value_info("h_n", elem, [L, "N", H]),
               helper.make_tensor_value_info("c_n", elem, [L, "N", H])]
    graph = helper.make_graph(parts.nodes, "fastlstm_char_model", inputs, outputs, parts.inits)
    onnx_model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="fastlstm")
    helper.set_model_props(onnx_model, {"vocab": json.dumps(list(vocab)), "input_mode": model.input_mode,
                                        "lowercase": json.dumps(bool(lowercase))})
    onnx.checker.check_model(onnx_model)
    return onnx_model


def export_checkpoint(checkpoint, path, *, opset: int | None = None):
    """Write the ONNX graph of a checkpoint's model (its best one, as `generate` uses) to
    ``path``; returns (the model's description, the vocabulary size)."""
    from ..onnx import _onnx
    from .checkpoints import load_checkpoint, model_from_checkpoint
    onnx = _onnx()
    meta, arrays = load_checkpoint(checkpoint, prefer_best=True)
    model = model_from_checkpoint(meta, arrays)
    proto = char_model_onnx(model, list(meta["vocab"]), lowercase=bool(meta["options"].get("lowercase")),
                            opset=opset)
    onnx.save(proto, os.fspath(path))
    return meta["model"], len(meta["vocab"])
