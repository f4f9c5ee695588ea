"""``fastlstm.torch.LSTM``: ``torch.nn.LSTM`` with fastlstm's kernels underneath.

A subclass of ``torch.nn.LSTM``: the same constructor, parameters (torch
``Parameter``s with torch's names, so ``load_state_dict`` of a ``torch.nn.LSTM``
works unchanged, and the other way round), call signature and results, padded
or ``PackedSequence`` input. On CPU float32 and float64 tensors the forward and
backward run in fastlstm (a ``torch.autograd.Function``; the tensors' memory is
handed to the kernels as NumPy views, no copies of parameters or inputs). A
unidirectional module runs a ``PackedSequence`` on its rows as they are (the C
loops' own layout, _packed_rows.py); a bidirectional one through a padded batch. A
PyTorch CPU user swaps one line::

    lstm = fastlstm.torch.LSTM(64, 300, num_layers=2, batch_first=True)   # was torch.nn.LSTM

What runs in torch instead (``torch.nn.LSTM``'s own forward, with a one-time
warning): tensors on another device or of another dtype. Double backward
(gradients of gradients) is an error. Dropout between layers draws its masks
from fastlstm's generator (seeded by ``torch.initial_seed()`` at construction),
not torch's, so a run with dropout differs from ``torch.nn.LSTM``'s in which
units are dropped, not in what dropout is. Importing this module needs torch;
``import fastlstm`` does not.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch
from torch.autograd.function import once_differentiable
from torch.nn.utils.rnn import PackedSequence

from . import _packed_rows
from .layer import LSTM as _Layer

__all__ = ["LSTM"]

_DTYPES = {torch.float32: np.float32, torch.float64: np.float64}
_WARNED: set = set()


def _view(t: torch.Tensor) -> np.ndarray:
    """A NumPy view of a CPU tensor's memory (a contiguous copy only when it is strided)."""
    return t.detach().contiguous().numpy()


def _replay(layer, rng_state, run):
    """run() with the layer's generator as it was at the forward (the same dropout masks),
    the generator's state put back after: another backward of a retained graph runs the
    forward again, since the first backward used up the saved gates."""
    now = layer._rng.bit_generator.state
    layer._rng.bit_generator.state = rng_state
    try:
        return run()
    finally:
        layer._rng.bit_generator.state = now


def _param_grads(layer):
    """The layer's parameter gradients as tensors, in the module's parameter order."""
    return [torch.from_numpy(layer.grads[name].copy()) for name in layer.param_order]


class _Run(torch.autograd.Function):
    """fastlstm's forward and backward of one call, as one autograd node."""

    @staticmethod
    def forward(ctx, module, x, h0, c0, lengths, *params):
        layer = module._layer_for(x.dtype, params)
        lens = None if lengths is None else lengths.numpy()
        ctx.layer, ctx.params, ctx.rng_state = layer, params, layer._rng.bit_generator.state
        ctx.inputs = (_view(x), (_view(h0), _view(c0)), lens)
        ctx.tensors = (x, h0, c0)   # the views' memory
        # (grad mode is off inside an autograd Function: whether backward can come is needs_input_grad)
        y, (h, c) = layer.forward(*ctx.inputs[:2], lengths=lens, training=any(ctx.needs_input_grad))
        ctx.saved, layer._saved = layer._saved, None   # this call's, kept apart from later calls
        return torch.from_numpy(y), torch.from_numpy(h), torch.from_numpy(c)

    @staticmethod
    @once_differentiable
    def backward(ctx, dy, dh, dc):
        layer = ctx.layer
        layer.point_at(ctx.params)
        if ctx.saved is None:  # another backward of a retained graph
            x, state, lens = ctx.inputs
            _replay(layer, ctx.rng_state, lambda: layer.forward(x, state, lengths=lens, training=True))
        else:
            layer._saved, ctx.saved = ctx.saved, None
        layer.zero_grad()
        dx, (dh0, dc0) = layer.backward(_view(dy), (_view(dh), _view(dc)))
        return (None, torch.from_numpy(np.ascontiguousarray(dx)), torch.from_numpy(dh0), torch.from_numpy(dc0),
                None, *_param_grads(layer))


class _RunRows(torch.autograd.Function):
    """As _Run, on a PackedSequence's rows as they are (unidirectional layers: _packed_rows)."""

    @staticmethod
    def forward(ctx, module, data, batch, perm, h0, c0, *params):
        layer = module._layer_for(data.dtype, params)
        ctx.layer, ctx.params, ctx.rng_state = layer, params, layer._rng.bit_generator.state
        ctx.inputs = (_view(data), batch, perm, _view(h0), _view(c0))
        ctx.tensors = (data, h0, c0)
        y, h, c, ctx.saved = _packed_rows.forward(layer, *ctx.inputs, training=any(ctx.needs_input_grad))
        return torch.from_numpy(y), torch.from_numpy(h), torch.from_numpy(c)

    @staticmethod
    @once_differentiable
    def backward(ctx, dy, dh, dc):
        layer = ctx.layer
        layer.point_at(ctx.params)
        saved, ctx.saved = ctx.saved, None
        if saved is None:  # another backward of a retained graph
            saved = _replay(layer, ctx.rng_state,
                            lambda: _packed_rows.forward(layer, *ctx.inputs, training=True)[3])
        layer.zero_grad()
        dx, dh0, dc0 = _packed_rows.backward(layer, saved, _view(dy), _view(dh), _view(dc))
        return (None, torch.from_numpy(dx), None, None, torch.from_numpy(dh0), torch.from_numpy(dc0),
                *_param_grads(layer))


class _BoundLayer(_Layer):
    """A fastlstm.LSTM whose parameter arrays are views of a torch module's tensors."""

    param_order: list[str]

    def point_at(self, tensors):
        for name, t in zip(self.param_order, tensors):
            self.params[name] = _view(t)


class LSTM(torch.nn.LSTM):
    """``torch.nn.LSTM`` computed by fastlstm on CPU tensors (see the module's docstring).

    Parameters
    ----------
    *args, **kwargs
        Exactly ``torch.nn.LSTM``'s (input_size, hidden_size, num_layers, bias,
        batch_first, dropout, bidirectional, proj_size, device, dtype).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._layers: dict = {}
        self._seed = int(torch.initial_seed()) % (2**63)

    def _layer_for(self, dtype, params):
        """The fastlstm layer of this dtype and mode (dropout only while training, as
        torch), its parameters pointed at ``params`` (no copies)."""
        dropout = self.dropout if self.training else 0.0
        key = (dtype, dropout)
        layer = self._layers.get(key)
        if layer is None:
            with warnings.catch_warnings():  # torch.nn.LSTM has warned about a lone layer's dropout
                warnings.simplefilter("ignore", UserWarning)
                layer = _BoundLayer(self.input_size, self.hidden_size, self.num_layers, bias=self.bias,
                                    batch_first=False, dropout=dropout, bidirectional=self.bidirectional,
                                    proj_size=self.proj_size, dtype=_DTYPES[dtype], seed=self._seed)
            layer.param_order = list(self._flat_weights_names)
            self._layers[key] = layer
        layer.point_at(params)
        return layer

    def __getstate__(self):
        # The fastlstm layers are a cache (made again on first use): not copied or pickled.
        state = dict(super().__getstate__())
        state["_layers"] = {}
        return state

    def _unsupported(self, x) -> str | None:
        if x.device.type != "cpu":
            return f"{x.device.type} tensors"
        if x.dtype not in _DTYPES:
            return f"{x.dtype} tensors"
        if any(p.device.type != "cpu" or p.dtype != x.dtype for p in self._flat_weights):
            return "parameters on another device or of another dtype than the input"
        return None

    def forward(self, input: Any, hx: Any = None) -> Any:  # noqa: A002 (torch's name)
        """``torch.nn.LSTM.forward``: output and (h_n, c_n), padded or packed like the input.

        Parameters
        ----------
        input : Tensor or PackedSequence
            (T, N, I), (N, T, I) with ``batch_first``, (T, I) unbatched, or packed.
        hx : pair of Tensors, optional
            (h_0, c_0), each (D*L, N, H_out) / (D*L, N, H); zeros when omitted.

        Returns
        -------
        tuple
            (output, (h_n, c_n)) as ``torch.nn.LSTM`` returns them.
        """
        packed = isinstance(input, PackedSequence)
        data = input.data if packed else input
        why = self._unsupported(data)
        if why is not None:
            if why not in _WARNED:
                _WARNED.add(why)
                warnings.warn(f"fastlstm.torch.LSTM runs CPU float32/float64 tensors; {why} run in "
                              "torch.nn.LSTM", RuntimeWarning, stacklevel=2)
            return super().forward(input, hx)
        lengths = None
        if packed and hx is not None:
            self.check_forward_args(data, hx, input.batch_sizes)  # torch's own errors, either route
        if packed and not self.bidirectional and _packed_rows.available():
            return self._forward_rows(input, hx)
        if packed:
            x, lengths = _padded(input)
        else:
            x = input.transpose(0, 1) if self.batch_first and input.dim() == 3 else input
        unbatched = x.dim() == 2
        if unbatched:
            x = x.unsqueeze(1)
        N = x.shape[1]
        D = 2 if self.bidirectional else 1
        H_out = self.proj_size or self.hidden_size
        if hx is None:
            h0 = x.new_zeros(D * self.num_layers, N, H_out)
            c0 = x.new_zeros(D * self.num_layers, N, self.hidden_size)
        else:
            h0, c0 = hx
            if unbatched:
                h0, c0 = h0.unsqueeze(1), c0.unsqueeze(1)
        y, h, c = _Run.apply(self, x, h0, c0, lengths, *self._flat_weights)
        if packed:
            out = _packed_like(y, input)
        else:
            out = y.transpose(0, 1) if self.batch_first and not unbatched else y
            if unbatched:
                out = out.squeeze(1)
        if unbatched:
            h, c = h.squeeze(1), c.squeeze(1)
        return out, (h, c)


    def _forward_rows(self, packed: PackedSequence, hx: Any) -> Any:
        """forward on a PackedSequence's rows as they are: no padded batch in between."""
        N = int(packed.batch_sizes[0])
        H_out = self.proj_size or self.hidden_size
        if hx is None:
            h0 = packed.data.new_zeros(self.num_layers, N, H_out)
            c0 = packed.data.new_zeros(self.num_layers, N, self.hidden_size)
        else:
            h0, c0 = hx
        perm = None if packed.sorted_indices is None else packed.sorted_indices.numpy()
        y, h, c = _RunRows.apply(self, packed.data, packed.batch_sizes.numpy(), perm, h0, c0,
                                 *self._flat_weights)
        return PackedSequence(y, packed.batch_sizes, packed.sorted_indices,
                              packed.unsorted_indices), (h, c)


def _padded_places(like: PackedSequence, N: int) -> torch.Tensor:
    """For each row of ``like.data``, its place t * N + n in a padded (T, N) batch in the
    caller's batch order."""
    sizes = like.batch_sizes
    order = like.sorted_indices if like.sorted_indices is not None else torch.arange(N)
    step = torch.repeat_interleave(torch.arange(len(sizes)), sizes)
    rank = torch.arange(step.numel()) - (torch.cumsum(sizes, 0) - sizes)[step]   # place within its step
    return step * N + order[rank]


def _padded(packed: PackedSequence) -> tuple[torch.Tensor, torch.Tensor]:
    """(x (T, N, F) zero-padded, lengths (N,)) in the caller's batch order: one scatter (its
    backward one gather), where pad_packed_sequence's backward slices step by step."""
    sizes = packed.batch_sizes
    T, N, F = len(sizes), int(sizes[0]), packed.data.shape[1]
    x = packed.data.new_zeros(T * N, F).index_copy(0, _padded_places(packed, N), packed.data).view(T, N, F)
    ranked = (sizes.unsqueeze(1) > torch.arange(N)).sum(0)      # lengths in sorted order
    lengths = torch.empty_like(ranked)
    order = packed.sorted_indices if packed.sorted_indices is not None else torch.arange(N)
    lengths[order] = ranked
    return x, lengths


def _packed_like(y: torch.Tensor, like: PackedSequence) -> PackedSequence:
    """y (T, N, F), batch order, as a PackedSequence with ``like``'s batch sizes and order:
    one gather of its rows (one autograd node, whose backward is one scatter)."""
    T, N, F = y.shape
    data = y.reshape(T * N, F)[_padded_places(like, N)]
    return PackedSequence(data, like.batch_sizes, like.sorted_indices, like.unsorted_indices)
