"""Keras in and out: ``from_keras(obj)`` makes a ``fastlstm.LSTM`` from Keras 3 ``LSTM``
layers (or their weights), ``to_keras(lstm)`` gives the weights to ``set_weights`` on
Keras layers of the same size. Keras itself is needed only to pass layers in; the
weight mapping is plain NumPy.

The mapping, per layer and direction (Keras and torch share the gate order i, f, g, o):

======================================  =========================================
fastlstm / torch.nn.LSTM                 Keras ``LSTM``
======================================  =========================================
``weight_ih_l{k}[_reverse]`` (4H, I)     ``kernel`` (I, 4H), transposed
``weight_hh_l{k}[_reverse]`` (4H, H)     ``recurrent_kernel`` (H, 4H), transposed
``bias_ih_l{k}`` + ``bias_hh_l{k}``      ``bias`` (4H,): from Keras, all in bias_ih
``bidirectional``                        ``Bidirectional(LSTM)``, merge_mode "concat"
batch-major (N, T, I)                    ``batch_first=True``
======================================  =========================================

Outputs match Keras's ``return_sequences=True`` outputs and its ``return_state``
states ((h, c), for Bidirectional forward then backward). Keras options that change
the math and that fastlstm does not have are refused with a ValueError naming the
option: activations other than tanh / sigmoid, ``go_backwards`` alone, a
Bidirectional ``merge_mode`` other than "concat". ``use_bias=False`` gives
``bias=False``; dropout options do not apply at inference and are ignored.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .layer import LSTM


def _name(fn) -> str:
    name = getattr(fn, "__name__", fn)
    return str(name).lower()


def _check_lstm(layer, where):
    kind = type(layer).__name__
    if kind != "LSTM":
        raise ValueError(f"{where} is a Keras {kind} layer: from_keras takes LSTM layers, Bidirectional(LSTM), "
                         "a list of them, or [kernel, recurrent_kernel, bias]")
    if _name(layer.activation) != "tanh":
        raise ValueError(f"{where} has activation={_name(layer.activation)!r}: fastlstm's cell uses tanh")
    if _name(layer.recurrent_activation) != "sigmoid":
        raise ValueError(f"{where} has recurrent_activation={_name(layer.recurrent_activation)!r}: fastlstm's "
                         "gates use sigmoid")
    if not layer.get_weights():
        raise ValueError(f"{where} has no weights yet: build it (call it once, or build(input_shape)) first")


def _layer_weights(layer):
    """(kernel, recurrent_kernel, bias or None) of a built Keras LSTM layer."""
    w = layer.get_weights()
    return w[0], w[1], (w[2] if layer.use_bias else None)


def _directions(obj, where):
    """[(kernel, recurrent_kernel, bias), ...] per direction of one Keras layer."""
    if type(obj).__name__ == "Bidirectional":
        if obj.merge_mode != "concat":
            raise ValueError(f"{where} is Bidirectional with merge_mode={obj.merge_mode!r}: fastlstm concatenates "
                             "the two directions (merge_mode='concat')")
        fw, bw = obj.forward_layer, obj.backward_layer
        _check_lstm(fw, f"{where}'s forward layer")
        _check_lstm(bw, f"{where}'s backward layer")
        if fw.go_backwards or not bw.go_backwards:
            raise ValueError(f"{where}: a Bidirectional whose forward layer runs backwards is not torch's "
                             "bidirectional LSTM")
        return [_layer_weights(fw), _layer_weights(bw)]
    if isinstance(obj, (list, tuple)) and len(obj) in (2, 3) and all(hasattr(a, "shape") for a in obj):
        kernel, recurrent = np.asarray(obj[0]), np.asarray(obj[1])
        bias = np.asarray(obj[2]) if len(obj) == 3 else None
        return [(kernel, recurrent, bias)]
    _check_lstm(obj, where)
    if obj.go_backwards:
        raise ValueError(f"{where} has go_backwards=True alone: fastlstm runs a reverse direction only as the "
                         "second half of a bidirectional layer (use Bidirectional)")
    return [_layer_weights(obj)]


def from_keras(obj: Any, *, dtype: Any = np.float32, backend: str = "auto") -> LSTM:
    """A ``fastlstm.LSTM`` (``batch_first=True``) computing what the Keras layers compute.

    Parameters
    ----------
    obj : Keras LSTM, Bidirectional(LSTM), a list of them, or [kernel, recurrent_kernel, bias]
        Built layers; a list is one stacked ``LSTM`` (sizes and directions must agree).
    dtype : numpy dtype
        The layer's dtype (float32 by default).
    backend : str
        The layer's backend.

    Returns
    -------
    fastlstm.LSTM
        Its outputs are Keras's ``return_sequences=True`` outputs, its final state
        Keras's ``return_state`` states, to float rounding.

    Raises
    ------
    ValueError
        A layer of another kind, an option fastlstm does not compute (named), or stacked
        layers that do not fit together.
    """
    items = obj if isinstance(obj, (list, tuple)) and not all(hasattr(a, "shape") for a in obj) else [obj]
    if not items:
        raise ValueError("from_keras got an empty list of layers")
    layers = [_directions(item, f"layer {k}" if len(items) > 1 else "the layer") for k, item in enumerate(items)]
    D = len(layers[0])
    H = layers[0][0][1].shape[0]
    I = layers[0][0][0].shape[0]
    bias = layers[0][0][2] is not None
    for k, dirs in enumerate(layers):
        kernel, recurrent, b = dirs[0]
        if len(dirs) != D or recurrent.shape != (H, 4 * H) or (b is not None) != bias:
            raise ValueError(f"layer {k} ({len(dirs)} direction(s), {recurrent.shape[0]} units"
                             f"{', no bias' if b is None else ''}) does not match layer 0 ({D} direction(s), "
                             f"{H} units{'' if bias else ', no bias'}): one fastlstm.LSTM needs them equal")
        want_in = I if k == 0 else D * H
        if kernel.shape != (want_in, 4 * H):
            raise ValueError(f"layer {k} has a kernel of shape {kernel.shape}; a layer of {H} units after "
                             f"{'the input' if k == 0 else f'{D} x {H} features'} needs ({want_in}, {4 * H})")
    lstm = LSTM(I, H, num_layers=len(layers), bias=bias, batch_first=True, bidirectional=D == 2, dtype=dtype,
                backend=backend)
    params = {}
    for k, dirs in enumerate(layers):
        for d, (kernel, recurrent, b) in enumerate(dirs):
            sfx = f"_l{k}" + ("_reverse" if d else "")
            params["weight_ih" + sfx] = np.asarray(kernel).T
            params["weight_hh" + sfx] = np.asarray(recurrent).T
            if bias:
                params["bias_ih" + sfx] = np.asarray(b)
                params["bias_hh" + sfx] = np.zeros(4 * H)
    lstm.load_state_dict(params)
    return lstm


def to_keras(lstm: LSTM) -> list:
    """For each layer of ``lstm``, the weights to ``set_weights`` on a Keras ``LSTM`` (or
    ``Bidirectional(LSTM)``) layer of the same size.

    Parameters
    ----------
    lstm : fastlstm.LSTM
        Without a projection (Keras's LSTM has none).

    Returns
    -------
    list of lists of ndarray
        Per layer: [kernel, recurrent_kernel, bias] (bias = b_ih + b_hh; no bias without
        one), forward then backward for a bidirectional layer.
    """
    if lstm.proj_size:
        raise ValueError("proj_size has no Keras LSTM equivalent: a layer with a projection cannot be converted")
    sd = lstm.state_dict()
    out = []
    for k in range(lstm.num_layers):
        weights = []
        for d in range(lstm.num_directions):
            sfx = f"_l{k}" + ("_reverse" if d else "")
            weights += [sd["weight_ih" + sfx].T.copy(), sd["weight_hh" + sfx].T.copy()]
            if lstm.bias:
                weights.append(sd["bias_ih" + sfx] + sd["bias_hh" + sfx])
        out.append(weights)
    return out
