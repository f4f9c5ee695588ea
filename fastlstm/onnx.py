"""ONNX in and out: ``to_onnx(lstm, path)`` writes a ``fastlstm.LSTM`` as ONNX LSTM
nodes, ``from_onnx(path_or_model)`` reads such a graph back into an ``LSTM``. The
``onnx`` package is needed for both (``pip install "fastlstm[onnx]"``); the weight
mapping itself (``onnx_weights`` / ``lstm_weights``) is plain NumPy.

The mapping, one ONNX ``LSTM`` node per layer (d: 0 forward, 1 reverse):

=====================================  ==============================================
fastlstm / torch.nn.LSTM                ONNX LSTM (opset >= 14)
=====================================  ==============================================
gate order i, f, g, o                   i, o, f, c (the blocks of 4H rows reordered)
``weight_ih_l{k}[_reverse]`` (4H, I)    ``W[d]`` (4H, I)
``weight_hh_l{k}[_reverse]`` (4H, H)    ``R[d]`` (4H, H)
``bias_ih_l{k}``, ``bias_hh_l{k}``      ``B[d]`` = [Wb, Rb] (8H); B absent: zero biases
``bidirectional``                       ``direction`` "forward" or "bidirectional"
x (T, N, I), time-major                 ``X`` (T, N, I), ``layout`` 0
output (T, N, D*H)                      ``Y`` (T, D, N, H), transposed and reshaped
h_n, c_n (D*L, N, H)                    ``Y_h``, ``Y_c`` (D, N, H) per layer, concatenated
state h0, c0 (D*L, N, H)                ``initial_h``, ``initial_c``, sliced per layer
``lengths`` (N,)                        ``sequence_lens`` (N,) int32
``batch_first``                         a Transpose on X and on Y in the graph
=====================================  ==============================================

What ONNX's LSTM has and fastlstm does not (peepholes ``P``, ``clip``, other
activations, ``input_forget``, the direction "reverse" alone) is refused by
``from_onnx`` with a ValueError that names it; ``proj_size`` has no ONNX LSTM
equivalent and is refused by ``to_onnx``.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from .layer import LSTM

#: ONNX's gate blocks (i, o, f, c) taken from fastlstm's (i, f, g, o), and back.
TO_ONNX_GATES = (0, 3, 1, 2)
FROM_ONNX_GATES = (0, 2, 3, 1)
DEFAULT_OPSET = 14   # the first with LSTM's layout attribute
DEFAULT_ACTIVATIONS = ("Sigmoid", "Tanh", "Tanh")


def _blocks(a, order):
    parts = np.split(np.asarray(a), 4, axis=0)
    return np.concatenate([parts[k] for k in order], axis=0)


def onnx_weights(params: dict[str, np.ndarray], layer: int, directions: int, bias: bool = True):
    """(W, R, B) of one layer in ONNX's layout from fastlstm/torch parameters (B None
    without biases)."""
    W, R, B = [], [], []
    for d in range(directions):
        sfx = f"_l{layer}" + ("_reverse" if d else "")
        W.append(_blocks(params["weight_ih" + sfx], TO_ONNX_GATES))
        R.append(_blocks(params["weight_hh" + sfx], TO_ONNX_GATES))
        if bias:
            B.append(np.concatenate([_blocks(params["bias_ih" + sfx], TO_ONNX_GATES),
                                     _blocks(params["bias_hh" + sfx], TO_ONNX_GATES)]))
    return np.stack(W), np.stack(R), (np.stack(B) if bias else None)


def lstm_weights(W, R, B, layer: int) -> dict[str, np.ndarray]:
    """fastlstm/torch parameters of one layer from ONNX's (W, R, B) (B None: zero biases)."""
    W, R = np.asarray(W), np.asarray(R)
    D, G, _ = W.shape
    out = {}
    for d in range(D):
        sfx = f"_l{layer}" + ("_reverse" if d else "")
        out["weight_ih" + sfx] = _blocks(W[d], FROM_ONNX_GATES)
        out["weight_hh" + sfx] = _blocks(R[d], FROM_ONNX_GATES)
        b = np.zeros(2 * G, W.dtype) if B is None else np.asarray(B)[d]
        out["bias_ih" + sfx] = _blocks(b[:G], FROM_ONNX_GATES)
        out["bias_hh" + sfx] = _blocks(b[G:], FROM_ONNX_GATES)
    return out


def _onnx():
    try:
        import onnx
    except ImportError:
        raise ImportError("ONNX conversion needs the onnx package: pip install 'fastlstm[onnx]'") from None
    return onnx


# -- out ----------------------------------------------------------------------------
class GraphParts:
    """Nodes and initialisers of a graph under construction (names made unique by prefix)."""

    def __init__(self, prefix: str = ""):
        self.prefix, self.nodes, self.inits = prefix, [], []

    def const(self, name: str, value) -> str:
        from onnx import numpy_helper
        name = self.prefix + name
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def node(self, op: str, inputs: list, outputs: list, **attrs) -> str:
        from onnx import helper
        self.nodes.append(helper.make_node(op, inputs, outputs, **attrs))
        return outputs[0]


def lstm_nodes(parts: GraphParts, lstm: LSTM, x: str, h0: str, c0: str, seq: str = ""):
    """Add ``lstm``'s layers (time-major, input ``x`` (T, N, I)) to ``parts``: one ONNX LSTM
    node per layer on the states ``h0``/``c0`` (D*L, N, H) sliced per layer. Returns the
    names of the output (T, N, D*H) and of the final states (D*L, N, H) (h, c)."""
    if lstm.proj_size:
        raise ValueError("proj_size has no ONNX LSTM equivalent (the projection would be a MatMul inside "
                         "the recurrence): a layer with a projection cannot be exported")
    D, H = lstm.num_directions, lstm.hidden_size
    params = lstm.state_dict()
    p = parts.prefix
    hs, cs = [], []
    for k in range(lstm.num_layers):
        W, R, B = onnx_weights(params, k, D, lstm.bias)
        span = [parts.const(f"l{k}_start", np.array([k * D], np.int64)),
                parts.const(f"l{k}_end", np.array([(k + 1) * D], np.int64))]
        h_k = parts.node("Slice", [h0, *span], [f"{p}l{k}_h0"])
        c_k = parts.node("Slice", [c0, *span], [f"{p}l{k}_c0"])
        ins = [x, parts.const(f"l{k}_W", W), parts.const(f"l{k}_R", R),
               parts.const(f"l{k}_B", B) if B is not None else "", seq, h_k, c_k]
        outs = [f"{p}l{k}_Y", f"{p}l{k}_Yh", f"{p}l{k}_Yc"]
        parts.node("LSTM", ins, outs, hidden_size=H, direction="bidirectional" if D == 2 else "forward",
                   layout=0, name=f"{p}lstm_l{k}")
        # (T, D, N, H) -> (T, N, D, H) -> (T, N, D*H): the next layer's input, or the output
        yt = parts.node("Transpose", [outs[0]], [f"{p}l{k}_YT"], perm=[0, 2, 1, 3])
        x = parts.node("Reshape", [yt, parts.const(f"l{k}_shape", np.array([0, 0, -1], np.int64))],
                       [f"{p}l{k}_out"])
        hs.append(outs[1])
        cs.append(outs[2])
    h_n = parts.node("Concat", hs, [f"{p}lstm_h_n"], axis=0)
    c_n = parts.node("Concat", cs, [f"{p}lstm_c_n"], axis=0)
    return x, h_n, c_n


def check_opset(opset: int | None) -> int:
    opset = DEFAULT_OPSET if opset is None else int(opset)
    if opset < DEFAULT_OPSET:
        raise ValueError(f"opset must be at least {DEFAULT_OPSET} (LSTM's layout attribute), got {opset}")
    return opset


def elem_type(dtype) -> int:
    from onnx import TensorProto
    return TensorProto.DOUBLE if np.dtype(dtype) == np.float64 else TensorProto.FLOAT


def to_onnx(lstm: LSTM, path: str | os.PathLike | None, *, opset: int | None = None,
            lengths: bool = False) -> Any:
    """Write ``lstm`` as an ONNX model (one ONNX LSTM node per layer; mapping above).

    Parameters
    ----------
    lstm : fastlstm.LSTM
        The layer; ``proj_size`` must be 0 (no ONNX equivalent).
    path : str or path-like or None
        Where to save the model; None only returns it.
    opset : int, optional
        ONNX opset, at least 14 (the default).
    lengths : bool
        Add the input ``sequence_lens`` (N,) int32 (torch's packed-sequence semantics).

    Returns
    -------
    onnx.ModelProto
        Inputs ``X`` (shaped like fastlstm's x), ``initial_h``, ``initial_c`` (like its
        state) and with ``lengths`` ``sequence_lens``; outputs ``Y``, ``Y_h``, ``Y_c``
        shaped like its output and final state; float32 or float64 as the layer.
    """
    onnx = _onnx()
    from onnx import TensorProto, helper

    if not isinstance(lstm, LSTM):
        raise TypeError(f"to_onnx takes a fastlstm.LSTM, got {type(lstm).__name__}")
    opset = check_opset(opset)
    elem = elem_type(lstm.dtype)
    D, L, H, I = lstm.num_directions, lstm.num_layers, lstm.hidden_size, lstm.input_size
    parts = GraphParts()
    x = parts.node("Transpose", ["X"], ["X_tmajor"], perm=[1, 0, 2]) if lstm.batch_first else "X"
    y, h_n, c_n = lstm_nodes(parts, lstm, x, "initial_h", "initial_c", "sequence_lens" if lengths else "")
    if lstm.batch_first:
        parts.node("Transpose", [y], ["Y"], perm=[1, 0, 2])
    else:
        parts.node("Identity", [y], ["Y"])
    parts.node("Identity", [h_n], ["Y_h"])
    parts.node("Identity", [c_n], ["Y_c"])
    seq_in = ["N", "T"] if lstm.batch_first else ["T", "N"]
    inputs = [helper.make_tensor_value_info("X", elem, [*seq_in, I]),
              helper.make_tensor_value_info("initial_h", elem, [D * L, "N", H]),
              helper.make_tensor_value_info("initial_c", elem, [D * L, "N", H])]
    if lengths:
        inputs.append(helper.make_tensor_value_info("sequence_lens", TensorProto.INT32, ["N"]))
    outputs = [helper.make_tensor_value_info("Y", elem, [*seq_in, D * H]),
               helper.make_tensor_value_info("Y_h", elem, [D * L, "N", H]),
               helper.make_tensor_value_info("Y_c", elem, [D * L, "N", H])]
    graph = helper.make_graph(parts.nodes, "fastlstm", inputs, outputs, parts.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                              producer_name="fastlstm")
    onnx.checker.check_model(model)
    if path is not None:
        onnx.save(model, os.fspath(path))
    return model


# -- in -----------------------------------------------------------------------------
def _load_model(path_or_model):
    onnx = _onnx()
    if isinstance(path_or_model, onnx.ModelProto):
        return path_or_model
    if isinstance(path_or_model, (bytes, bytearray)):
        data = bytes(path_or_model)
    else:
        try:
            with open(os.fspath(path_or_model), "rb") as fh:
                data = fh.read()
        except OSError as exc:
            raise ValueError(f"cannot read the ONNX file {str(path_or_model)!r}: {exc}") from None
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except Exception as exc:  # noqa: BLE001 (protobuf's DecodeError and friends)
        raise ValueError(f"not an ONNX model (truncated or another format): {exc}") from None
    if not model.graph.node:
        raise ValueError("the ONNX model has an empty graph (truncated or another format)")
    return model


def _attributes(node) -> dict[str, Any]:
    from onnx import helper
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _check_node(node, attrs):
    where = f"ONNX LSTM node {node.name or '(unnamed)'!r}"
    if "clip" in attrs:
        raise ValueError(f"{where} has attribute 'clip' ({attrs['clip']}): fastlstm's cell does not clip")
    if attrs.get("input_forget", 0):
        raise ValueError(f"{where} has attribute 'input_forget' = 1 (coupled gates): fastlstm has no such cell")
    acts = tuple(a.decode() if isinstance(a, bytes) else a for a in attrs.get("activations", ()))
    if acts and any(a.lower() != b.lower() for a, b in zip(acts, DEFAULT_ACTIVATIONS * 2)):
        raise ValueError(f"{where} has attribute 'activations' {list(acts)}: fastlstm computes "
                         f"{list(DEFAULT_ACTIVATIONS)} only")
    if "activation_alpha" in attrs or "activation_beta" in attrs:
        raise ValueError(f"{where} has attribute 'activation_alpha'/'activation_beta': fastlstm's "
                         "activations take no parameters")
    direction = attrs.get("direction", b"forward")
    direction = direction.decode() if isinstance(direction, bytes) else direction
    if direction not in ("forward", "bidirectional"):
        raise ValueError(f"{where} has attribute 'direction' = {direction!r}: fastlstm runs 'forward' or "
                         "'bidirectional' (a reverse direction alone is not an LSTM layer of torch's)")
    if len(node.input) > 7 and node.input[7]:
        raise ValueError(f"{where} has input 'P' (peephole weights): fastlstm's cell has no peepholes")
    return direction


def from_onnx(path_or_model: Any, *, dtype: Any = None, backend: str = "auto") -> LSTM:
    """A ``fastlstm.LSTM`` from an ONNX model whose graph is one ONNX ``LSTM`` node or a
    chain of them (as ``to_onnx`` writes), with constant W, R and B.

    Parameters
    ----------
    path_or_model : str, path-like, bytes or onnx.ModelProto
        The model.
    dtype : numpy dtype, optional
        The layer's dtype; the weights' by default.
    backend : str
        The layer's backend ("auto" by default).

    Returns
    -------
    fastlstm.LSTM
        With ``batch_first=True`` for ``layout`` 1 (or the Transpose of X that
        ``to_onnx`` writes for ``batch_first``).

    Raises
    ------
    ValueError
        For a file that is not an ONNX model, a graph without LSTM nodes, and anything
        the graph holds that fastlstm cannot compute (named).
    """
    _onnx()
    from onnx import numpy_helper

    model = _load_model(path_or_model)
    graph = model.graph
    consts = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            attrs = _attributes(node)
            if "value" in attrs:
                consts[node.output[0]] = numpy_helper.to_array(attrs["value"])
    lstms = [n for n in graph.node if n.op_type == "LSTM"]
    if not lstms:
        kinds = sorted({n.op_type for n in graph.node})
        raise ValueError(f"the ONNX graph has no LSTM node (it has {', '.join(kinds)}): not an LSTM model")
    layers, D, H, layout = [], None, None, 0
    for k, node in enumerate(lstms):
        attrs = _attributes(node)
        direction = _check_node(node, attrs)
        d = 2 if direction == "bidirectional" else 1
        names = list(node.input) + [""] * (8 - len(node.input))
        missing = [role for role, name in (("W", names[1]), ("R", names[2])) if name not in consts]
        if missing or (names[3] and names[3] not in consts):
            raise ValueError(f"ONNX LSTM node {k} takes {' and '.join(missing) or 'B'} from the graph, not from a "
                             "constant: only weights stored in the model can be read")
        W, R = consts[names[1]], consts[names[2]]
        B = consts[names[3]] if names[3] else None
        h = int(attrs.get("hidden_size", R.shape[-1]))
        if W.ndim != 3 or W.shape[0] != d or W.shape[1] != 4 * h or R.shape != (d, 4 * h, h):
            raise ValueError(f"ONNX LSTM node {k}: W {W.shape} and R {R.shape} do not fit hidden_size {h} and "
                             f"{d} direction(s)")
        if D is not None and (d, h) != (D, H):
            raise ValueError(f"ONNX LSTM nodes differ: node 0 has hidden_size {H} and {D} direction(s), node {k} "
                             f"hidden_size {h} and {d}: one fastlstm.LSTM needs them equal")
        if k and W.shape[2] != d * h:
            raise ValueError(f"ONNX LSTM node {k} takes {W.shape[2]} inputs; after a layer of {d} x {h} "
                             f"features a chained layer takes {d * h}")
        D, H = d, h
        layout = layout or int(attrs.get("layout", 0))
        layers.append((W, R, B))
    I = layers[0][0].shape[2]
    batch_first = bool(layout) or any(  # to_onnx's batch_first: X (N, T, I) transposed into the first node
        n.op_type == "Transpose" and n.output[0] == lstms[0].input[0] and graph.input
        and n.input[0] == graph.input[0].name and list(_attributes(n).get("perm", [])) == [1, 0, 2]
        for n in graph.node)
    has_bias = any(B is not None for _, _, B in layers)
    dt = np.dtype(dtype) if dtype is not None else np.dtype(layers[0][0].dtype)
    lstm = LSTM(I, H, num_layers=len(layers), bias=has_bias, batch_first=batch_first, bidirectional=D == 2,
                dtype=dt, backend=backend)
    params = {}
    for k, (W, R, B) in enumerate(layers):
        weights = lstm_weights(W, R, B, k)
        if not has_bias:
            weights = {n: a for n, a in weights.items() if not n.startswith("bias")}
        params.update(weights)
    lstm.load_state_dict({n: a.astype(dt) for n, a in params.items()})
    return lstm
