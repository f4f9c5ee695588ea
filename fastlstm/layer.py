"""fastlstm.LSTM: a multi-layer LSTM with torch.nn.LSTM's conventions.

Parameters are NumPy arrays named and shaped like torch.nn.LSTM's state_dict;
forward/backward/step validate at the edge, then run one backend call per
layer. Gradients accumulate into ``grads``; dropout (between layers, training
only) uses the layer's own seeded generator. Device (CUDA) inputs run on the
cuda backend and give device outputs; parameters and gradients stay NumPy.
Inference calls (forward with training=False, __call__, step) on one object
are safe from several threads at once: their buffers are per call or per
thread. A training forward and its backward belong to one thread.
``inference_weights("bf16")`` makes inference calls read bf16-rounded weights
(not exact; the C backend's bf16 kernels, csrc/lstm_bf16.h);
``inference_weights("float32", packed=True)`` makes them read float32 weights packed
once (exact; _packed.py).
"""

from __future__ import annotations

import functools
import numbers
import threading
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

from . import _config
from . import _validate as v
from ._arrays import backend_and_arrays, on_callers_stream
from ._bf16 import Bf16Weights, check_precision
from ._dropout import apply_keep, keep_bits, keep_mask, words_needed
from ._packed import PackedWeights, WeightSnapshot
from ._params import ParameterSet
from .backends import check_name, get_backend
from .functional import Workspace, _new_scratch, run_backward, run_directions, run_forward


def _placed(task, out):
    """task() (run_forward's (y, hT, cT, cache)), with y also copied into ``out`` (its
    direction's half of the layer's output) on the task's thread."""
    result = task()
    out[...] = result[0]
    return result


def _on_half(task, half, buf, *args, **kwargs):
    """task(a contiguous copy of ``half``, *args, **kwargs), the copy made on the task's
    thread into ``buf`` (a workspace buffer of half's shape) or a fresh array (None)."""
    if buf is None:
        return task(np.ascontiguousarray(half), *args, **kwargs)
    np.copyto(buf, half)
    return task(buf, *args, **kwargs)


class LSTM(ParameterSet):
    """Multi-layer LSTM, drop-in for ``torch.nn.LSTM`` on NumPy arrays.

    Parameters
    ----------
    input_size, hidden_size : int
        I and H.
    num_layers : int
        L, stacked layers.
    bias : bool
        With ``bias_ih_l{k}`` and ``bias_hh_l{k}`` (as PyTorch).
    batch_first : bool
        x and y are (N, T, features) instead of (T, N, features). States stay (D*L, N, H).
    dropout : float in [0, 1)
        Dropout on the output of every layer but the last, in training forward passes.
    bidirectional : bool
        D = 2 directions per layer: parameters ``*_l{k}_reverse`` too, outputs of
        2*H_out features (forward direction first), states ordered layer 0 forward,
        layer 0 reverse, layer 1 forward, ...
    proj_size : int
        P with 0 < P < H projects each h_t to P features (``weight_hr_l{k}`` (P, H));
        then H_out = P, ``weight_hh`` is (4H, P) and h states are (D*L, N, P). 0: none.
    dtype : float32 or float64
    backend : str
        "auto", "c", "numpy" or "cuda".
    seed : int or None
        Seeds initialisation (U(-1/sqrt(H), 1/sqrt(H)), like PyTorch) and dropout.

    Notes
    -----
    Reduced-precision inference (:meth:`inference_weights`): with ``"bf16"``,
    ``forward(training=False)`` and ``step`` read the weights rounded to bfloat16 and
    stored in 16 bits (biases stay float32), with every product summed in float32. This
    is **not exact**: each weight is off by at most 2^-8 of itself, so each gate
    pre-activation by at most 2^-8 * sum_k |w_k x_k| (plus float32 rounding); on the
    ``avx512bf16`` path (VDPBF16PS, CPUs with AVX512_BF16: AMD Zen 4/5, Intel Cooper
    Lake and Sapphire Rapids on) the activations are rounded to bf16 too, which doubles
    that bound to 2^-7. Other x86-64 CPUs widen the 16-bit weights to float32 in registers
    (``avx512``, ``avx2``; ``portable`` elsewhere), exact on the rounded weights;
    ``fastlstm.show_config()`` names the path (``c_bf16_kernel``) and
    ``FASTLSTM_BF16_KERNEL`` chooses one. Why: at N = 1 a step reads every weight once,
    so half the bytes is up to twice the speed, more when the weights then fit in the L2
    caches. Runs on the C backend without projections or ``lengths``; otherwise (and on
    the numpy backend, or a build without vector kernels) the float32 kernels run on the
    rounded weights: the same numbers, not faster. Training forwards always use the
    float32 weights.

    Packed float32 inference (``inference_weights("float32", packed=True)``): inference
    calls read a copy of the weights taken then, and on the C backend's fused float32
    kernels the panels of W_hh (and of W_ih, where the kernels pack it: the fused input
    or the hoisted projection) are packed once and kept, instead of at every call.
    **Exact**: the same kernels on the same panels, bit for bit the results of the
    unpacked path on those weights; for any thread count (``FASTLSTM_NUM_THREADS``, the
    directions' thread shares), since the panels' layout does not depend on it. Why: at
    N = 1 the pack is 4-15% of a forward (ONNX Runtime packs once, when its session is
    made). It costs a copy of the weights plus their panels. Other backends, float32
    without fused kernels (``FASTLSTM_KERNEL=blas``) and ``step`` (which reads W_hh in
    place, unpacked) run unchanged on the copy: the same numbers, no faster. Not for
    float64 layers (a ValueError).

    Attributes
    ----------
    params : dict of str to ndarray
        The parameters, named and shaped like ``torch.nn.LSTM.state_dict()``.
    grads : dict of str to ndarray
        Accumulated gradients, same names and shapes.

    Examples
    --------
    >>> import numpy as np, fastlstm
    >>> lstm = fastlstm.LSTM(64, 300, num_layers=2)
    >>> y, (h_n, c_n) = lstm.forward(np.zeros((50, 30, 64), np.float32), training=True)
    >>> dx, (dh0, dc0) = lstm.backward(np.ones_like(y))
    >>> y.shape, h_n.shape
    ((50, 30, 300), (2, 30, 300))
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 proj_size: int = 0, *,
                 dtype: Any = np.float32, backend: str = "auto", seed: int | None = None) -> None:
        self.input_size = v.check_size("input_size", input_size)
        self.hidden_size = v.check_size("hidden_size", hidden_size)
        self.num_layers = v.check_size("num_layers", num_layers)
        self.bias = bool(bias)
        self.batch_first = bool(batch_first)
        self.dropout = v.check_dropout("dropout", dropout)
        if self.dropout > 0 and self.num_layers == 1:
            warnings.warn("dropout adds dropout after all but the last layer, so a non-zero dropout "
                          f"expects num_layers greater than 1, but got dropout={self.dropout} and "
                          "num_layers=1", UserWarning, stacklevel=2)
        self.bidirectional = bool(bidirectional)
        if isinstance(proj_size, bool) or not isinstance(proj_size, numbers.Integral):
            raise TypeError(f"proj_size must be an integer, got {type(proj_size).__name__} {proj_size!r}")
        if proj_size < 0:
            raise ValueError("proj_size should be a positive integer or zero to disable projections, "
                             f"got {proj_size}")
        if proj_size >= self.hidden_size:
            raise ValueError(f"proj_size has to be smaller than hidden_size ({self.hidden_size}), got {proj_size}")
        self.proj_size: int = int(proj_size)
        self.dtype: np.dtype = v.check_dtype(dtype)
        self.backend: str = check_name(backend)
        self._rng: np.random.Generator = np.random.default_rng(seed)
        H, G, D = self.hidden_size, 4 * self.hidden_size, 2 if self.bidirectional else 1
        K = self.proj_size or H
        k = 1.0 / np.sqrt(H)
        self.params: dict[str, np.ndarray] = {}
        self._layer_keys: list[tuple[Any, ...]] = []   # index layer * D + direction (None: no such parameter)
        # torch's order (layer, direction, then w_ih, w_hh, b_ih, b_hh, w_hr): the same seed
        # gives the same parameters as before for the options that existed then.
        for layer in range(self.num_layers):
            I_k = self.input_size if layer == 0 else D * K
            for suffix in ("", "_reverse")[:D]:
                shapes: dict[str, tuple[int, ...]] = {"weight_ih": (G, I_k), "weight_hh": (G, K)}
                if self.bias:
                    shapes.update(bias_ih=(G,), bias_hh=(G,))
                if self.proj_size:
                    shapes["weight_hr"] = (K, H)
                for name, shape in shapes.items():
                    self.params[f"{name}_l{layer}{suffix}"] = self._rng.uniform(-k, k, shape).astype(self.dtype)
                self._layer_keys.append(tuple(f"{name}_l{layer}{suffix}" if name in shapes else None
                                              for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh",
                                                           "weight_hr")))
        self.grads: dict[str, np.ndarray] = {name: np.zeros_like(p) for name, p in self.params.items()}
        self._shapes = {name: p.shape for name, p in self.params.items()}
        self._saved: tuple[Any, ...] | None = None
        self._per_thread = threading.local()   # bias-sum buffers, one set per thread
        # per layer gates and c_t (and the projection's m); per boundary between layers the
        # output, the dropout mask and the masked output; two gradients in backward
        self._workspace: Workspace = Workspace(limit=6 * D * self.num_layers + 4)
        self._step_workspace: Workspace = Workspace(limit=4)
        self._inference: str = "float32"
        self._bf16: Bf16Weights | None = None   # the rounded weights (made on first use)
        self._packed: bool = False  # float32 inference on weights packed once
        self._f32: PackedWeights | None = None  # those weights (made on first use)
        self._bf16_lock: threading.Lock = threading.Lock()
        self._reuse_buffers: bool = True  # buffers between layers from the workspace (False: fresh ones)
        #: Called with a layer's index as soon as backward has finished that layer's parameter
        #: gradients (the layers above it are finished too): data-parallel training starts
        #: reducing them while the layers below run.
        self._after_layer_backward: Callable[[int], None] | None = None

    @property
    def num_directions(self) -> int:
        """D: 2 for a bidirectional layer, else 1."""
        return 2 if self.bidirectional else 1

    # -- reduced-precision inference -----------------------------------------
    def inference_weights(self, precision: str | None = "bf16", *, packed: bool = False) -> None:
        """Choose the weights of ``forward(training=False)`` and ``step``.

        Parameters
        ----------
        precision : {"bf16", "float32"} or None
            "bf16": the weights rounded to bfloat16 (16 bits, products summed in float32;
            **not exact**, see the class Notes for the error bound and the CPU paths);
            "float32" or None: the exact weights again (the default).
        packed : bool
            With "float32": keep the weights packed once into the C kernels' panels
            instead of packing them at every call (**exact**, bit for bit the unpacked
            results; faster at small batches; see the class Notes). False (the default)
            goes back to packing per call. bf16 weights are always packed once, so with
            "bf16" this changes nothing.

        The rounding (bf16) or packing (float32 with ``packed``) happens now and again
        whenever the parameters change through a training forward
        (``forward(training=True)``, which precedes every update), ``load_state_dict`` or
        a replaced ``params`` array. Changing a parameter in place in any other way
        (``params[name][...] = value``) is not seen: call this again.

        Raises
        ------
        ValueError
            For another precision, "bf16" or ``packed=True`` on a float64 layer.
        TypeError
            When ``packed`` is not a bool.
        """
        p = check_precision("precision", precision, self.dtype)
        if not isinstance(packed, (bool, np.bool_)):
            raise TypeError(f"packed must be a bool, got {type(packed).__name__} {packed!r}")
        if packed and self.dtype != np.float32:
            raise ValueError(f"packed=True needs a float32 layer, this one is {self.dtype}: the "
                             "packed panels are the float32 kernels' (float64 packs nothing)")
        self._inference = p
        self._packed = bool(packed) and p == "float32"
        self._parameters_loaded()
        if self._packed:
            self._snapshot("_f32", PackedWeights)  # the copy is taken now; its panels on first use

    @property
    def inference_precision(self) -> str:
        """The weights inference calls read: "float32" (exact) or "bf16" (:meth:`inference_weights`)."""
        return self._inference

    @property
    def inference_packed(self) -> bool:
        """Whether inference calls read weights packed once (:meth:`inference_weights`):
        True for bf16 and for ``"float32", packed=True``; False when each call packs."""
        return self._packed or self._inference == "bf16"

    def _parameters_loaded(self) -> None:
        with self._bf16_lock:
            self._bf16 = None
            self._f32 = None

    def _precision(self, weights, training):
        """The precision of one call: its ``weights`` argument, else the layer's inference
        precision (float32 for a training forward)."""
        if weights is None:
            return "float32" if training else self._inference
        p = check_precision("weights", weights, self.dtype)
        if p == "bf16" and training:
            raise ValueError("weights='bf16' is for inference: a training forward (training=True) "
                             "runs on the float32 weights")
        return p

    def _snapshot(self, attr: str, kind: type[WeightSnapshot]) -> Any:
        """The inference snapshot kept in ``attr`` (the bf16 or the packed float32 weights),
        made again when missing or stale."""
        with self._bf16_lock:
            snap = getattr(self, attr)
            if snap is None or snap.stale(self.params):
                for name in self.params:
                    self._param(name)  # replaced arrays are checked before they are read
                snap = kind(self.params, self._layer_keys, self.hidden_size, self.dtype)
                setattr(self, attr, snap)
            return snap

    def _inference_snapshot(self, precision, training):
        """The snapshot a call reads: the bf16 weights, the packed float32 weights (an
        inference call while they are in force), else None (the parameters as they are)."""
        if precision == "bf16":
            return self._snapshot("_bf16", Bf16Weights)
        if self._packed and not training:
            return self._snapshot("_f32", PackedWeights)
        return None

    def _bf16_backend(self, be, xp, lengths):
        """The C backend when its bf16 kernels run this call, else None (the float32
        kernels then run on the rounded weights)."""
        if (xp.on_device or self.proj_size or lengths is not None
                or getattr(be, "NAME", None) != "c" or not getattr(be, "BF16_KERNELS", None)):
            return None
        return be

    def _forward_bf16(self, be, x, h0, c0, snap):
        """forward(training=False) on the bf16 kernels: (y, h_n, c_n), time-major."""
        T, N = x.shape[0], x.shape[1]
        D, L, H = self.num_directions, self.num_layers, self.hidden_size
        h0, c0 = np.ascontiguousarray(h0), np.ascontiguousarray(c0)
        h_n, c_n = np.empty_like(h0), np.empty_like(c0)
        if D == 1:
            y = np.empty((T, N, H), self.dtype)
            be.bf16_forward(np.ascontiguousarray(x), [snap.panels(be, k) for k in range(L)],
                            [snap.weights(k)[2] for k in range(L)], h0, c0, y, h_n, c_n)
            return y, h_n, c_n
        inp = np.ascontiguousarray(x)
        for layer in range(L):
            outs = []
            for d in range(D):
                k = layer * D + d
                outs.append(np.empty((T, N, H), self.dtype))
                be.bf16_forward(inp, [snap.panels(be, k)], [snap.weights(k)[2]], h0[k:k + 1],
                                c0[k:k + 1], outs[-1], h_n[k:k + 1], c_n[k:k + 1], d == 1)
            inp = np.concatenate(outs, axis=2)
        return inp, h_n, c_n

    def _layer_weights(self, index, snap=None):
        """W_ih, W_hh, the summed bias and W_hr (or None) of one (layer, direction), index
        layer * D + direction (the bias in a buffer of this thread's, rewritten on every
        call: the parameters may have changed); with ``snap``, its rounded weights."""
        if snap is not None:
            return snap.weights(index)
        ih, hh, b_ih, b_hh, hr = self._layer_keys[index]
        sums = getattr(self._per_thread, "bias_sums", None)
        if sums is None:
            sums = self._per_thread.bias_sums = [np.zeros(4 * self.hidden_size, self.dtype)
                                                 for _ in self._layer_keys]
        b = sums[index]
        if self.bias:
            np.add(self._param(b_ih), self._param(b_hh), out=b)
        return self._param(ih), self._param(hh), b, None if hr is None else self._param(hr)

    def _state(self, name, state, N, xp, unbatched=False):
        """(h, c) of shapes (D*L, N, H_out) and (D*L, N, H) ((D*L, H_out), (D*L, H)
        unbatched); zeros when omitted."""
        DL, H = self.num_directions * self.num_layers, self.hidden_size
        K = self.proj_size or H
        shapes = ((DL, N, K), (DL, N, H))
        pair = v.as_pair(name, state)
        if pair is None:
            return xp.zeros(shapes[0], self.dtype), xp.zeros(shapes[1], self.dtype)
        out = []
        for k, value in enumerate(pair):
            if value is None:
                out.append(xp.zeros(shapes[k], self.dtype))
                continue
            arr = xp.as_array(f"{name}[{k}]", value, self.dtype)
            want = shapes[k][::2] if unbatched else shapes[k]
            arr = v.check_shape(f"{name}[{k}]", arr, want, self._state_letters(k, unbatched))
            out.append(arr.reshape(shapes[k]) if unbatched else arr)
        return tuple(out)

    def _saved_stream(self):
        """The CUDA stream of the last training forward on the device (else None)."""
        return self._saved[0][0].stream if self._saved and self._saved[0] else None

    def _state_letters(self, k, unbatched):
        """The shape of h (k = 0) or c (k = 1) in letters: (L, N, H), (2*L, N, P), ..."""
        layers = "2*L" if self.bidirectional else "L"
        features = "P" if k == 0 and self.proj_size else "H"
        return f"({layers}, {features})" if unbatched else f"({layers}, N, {features})"

    def _dropout_mask(self, shape, mask=None):
        """0 or 1/(1-p) per element, kept with probability 1-p (_dropout.keep_mask); into
        ``mask`` when given."""
        mask = np.empty(shape, self.dtype) if mask is None else mask
        scale = self.dtype.type(1.0 / (1.0 - self.dropout))
        np.multiply(keep_mask(self._rng, shape, self.dropout), scale, out=mask)
        return mask

    # -- forward / backward ----------------------------------------------
    def __call__(self, x: Any, state: Any = None, *, lengths: Any = None,
                 training: bool = False, weights: str | None = None,
                 input_projection: Any = None, input_rows: Any = None) -> tuple[Any, tuple[Any, Any]]:
        """Same as :meth:`forward`."""
        return self.forward(x, state, lengths=lengths, training=training, weights=weights,
                            input_projection=input_projection, input_rows=input_rows)

    def _projected_input(self, x, proj, lengths):
        """(backend, arrays, empty (T, N, 0) x) for a forward on the caller's layer-0 projection."""
        if x is not None:
            raise ValueError("give x or input_projection, not both")
        if self.bidirectional or self.proj_size or lengths is not None:
            raise ValueError("input_projection needs a unidirectional LSTM without proj_size or lengths")
        G = 4 * self.hidden_size
        if type(proj) is not np.ndarray or proj.dtype != self.dtype or not proj.flags.c_contiguous \
                or proj.ndim != 3 or proj.shape[2] != G:
            raise ValueError(f"input_projection must be a C-contiguous {self.dtype} ndarray of shape "
                             f"(T, N, 4H) = (T, N, {G}), got {type(proj).__name__} of shape "
                             f"{getattr(proj, 'shape', '?')}")
        be, xp = backend_and_arrays(self.backend, "input_projection", proj)
        return be, xp, np.empty(proj.shape[:2] + (0,), self.dtype)

    def _projection_rows(self, input_rows, TN):
        """(table, ids as int64 [T * N]) of ``input_rows``, checked against (T, N) = TN."""
        try:
            table, ids = input_rows
        except (TypeError, ValueError):
            raise ValueError("input_rows must be a pair (table, ids)") from None
        G = 4 * self.hidden_size
        if type(table) is not np.ndarray or table.dtype != self.dtype or table.ndim != 2 \
                or table.shape[1] != G:
            raise ValueError(f"input_rows' table must be a {self.dtype} ndarray of shape (V, 4H) = "
                             f"(V, {G}), got {type(table).__name__} of shape {getattr(table, 'shape', '?')}")
        ids = np.asarray(ids)
        if ids.dtype.kind not in "iu" or ids.shape != tuple(TN):
            raise ValueError(f"input_rows' ids must be integers of shape (T, N) = {tuple(TN)}, "
                             f"got {ids.dtype} of shape {ids.shape}")
        if ids.size and (ids.min() < 0 or ids.max() >= table.shape[0]):
            raise ValueError(f"input_rows' ids must lie in [0, {table.shape[0]}), got [{ids.min()}, {ids.max()}]")
        return np.ascontiguousarray(table), ids.reshape(-1).astype(np.int64)

    @on_callers_stream(lambda self, x=None, *args, **kwargs: (x,))
    def forward(self, x: Any, state: Any = None, *, lengths: Any = None,
                training: bool = False, weights: str | None = None,
                input_projection: Any = None, input_rows: Any = None) -> tuple[Any, tuple[Any, Any]]:
        """Run the whole sequence.

        Parameters
        ----------
        x : array_like, (T, N, I), or (N, T, I) with ``batch_first``, or (T, I) unbatched
            A device array (``__cuda_array_interface__``) runs on the cuda
            backend and gives device arrays back.
        state : pair (h0, c0) of (D*L, N, H_out) and (D*L, N, H) arrays, optional
            Zeros when omitted ((D*L, H_out) and (D*L, H) unbatched).
        lengths : array_like of N integers in [0, T], optional
            Sequence n is its first lengths[n] steps, as torch's
            ``pack_padded_sequence(x, lengths, enforce_sorted=False)``: outputs past
            it are zero, the final state is each sequence's own, and the reverse
            direction starts at its last step. A length of 0 (which torch refuses)
            gives zero outputs and the initial state back.
        training : bool
            Keep what ``backward`` needs and apply dropout between layers.
        weights : {"float32", "bf16"} or None
            The weights of this call (None: :attr:`inference_precision` for inference,
            float32 for training; "bf16" is for inference only and not exact: see
            :meth:`inference_weights`). An inference call in float32 reads the weights
            packed once while ``inference_weights("float32", packed=True)`` is in force.
        input_projection : ndarray (T, N, 4H), optional
            Instead of x (pass x=None): layer 0's input projection, time-major,
            ``x . weight_ih_l0^T + bias_ih_l0 + bias_hh_l0`` computed by the caller
            (e.g. rows of a (V, 4H) table gathered by character id). Host arrays of
            the layer's dtype, unidirectional, no proj_size or lengths. The array is
            the layer's workspace until ``backward``, which returns its gradient as
            dx, in the same buffer, and leaves ``grads["weight_ih_l0"]`` to the caller
            (the biases' gradients accumulate as usual). Runs with float32 weights.
        input_rows : pair (table, ids), optional
            With ``input_projection``: its row (t, n) is ``table[ids[t, n]]`` (table
            (V, 4H) of the layer's dtype, ids (T, N) integers in [0, V)), and
            ``input_projection`` is only where those rows go (its contents on entry are
            not read). The C backend's loops read the rows from the table as they run,
            without a gather first.

        Returns
        -------
        y : ndarray, (T, N, D*H_out) or (N, T, D*H_out) ((T, D*H_out) unbatched)
            The top layer's output at every step.
        (h_n, c_n) : pair of (D*L, N, H_out) and (D*L, N, H) ndarrays
            The final state of every layer and direction.
        """
        projected = input_projection is not None
        precision = "float32" if projected else self._precision(weights, training)
        unbatched = False
        if projected:
            be, xp, x = self._projected_input(x, input_projection, lengths)
            rows_of = None if input_rows is None else self._projection_rows(input_rows, x.shape[:2])
        elif input_rows is not None:
            raise ValueError("input_rows needs input_projection (where the rows go)")
        else:
            be, xp = backend_and_arrays(self.backend, "x", x)
            x = xp.as_array("x", x, self.dtype)
            letters = "(N, T, I)" if self.batch_first else "(T, N, I)"
            if len(x.shape) not in (2, 3):
                raise ValueError(f"x must be 3-D {letters} (or 2-D (T, I) unbatched), got shape {x.shape}")
            unbatched = len(x.shape) == 2
            if unbatched:  # torch's unbatched input: (T, I), whatever batch_first says
                x = v.check_shape("x", x, (None, self.input_size), "(T, I)").reshape(x.shape[0], 1, x.shape[1])
            else:
                x = v.check_shape("x", x, (None, None, self.input_size), letters)
                if self.batch_first:
                    x = xp.swap01(x)
        T, N = x.shape[0], x.shape[1]
        lens = None if lengths is None else v.check_lengths("lengths", lengths, N, T)
        if lens is not None and N and lens.min() == T:
            lens = None  # every sequence full: the plain loop
        h0, c0 = self._state("state", state, N, xp, unbatched)
        h_n = xp.empty(h0.shape, self.dtype)
        c_n = xp.empty(c0.shape, self.dtype)
        D = self.num_directions
        caches: list[Any] = []
        masks: list[Any] = []  # per layer: None, a mask array, or keep_bits' (bits, threshold, scale)
        self._saved = None
        if training:
            self._parameters_loaded()  # an update follows: round again at the next bf16 call
        snap = self._inference_snapshot(precision, training or projected)
        fast = isinstance(snap, Bf16Weights) and self._bf16_backend(be, xp, lens)
        if fast:
            y, h_n, c_n = self._forward_bf16(fast, x, h0, c0, snap)
            return self._to_caller(y, h_n, c_n, unbatched, xp)
        # packed float32: the C backend's loops read the snapshot's panels
        panels = snap if isinstance(snap, PackedWeights) and getattr(be, "PACKED_WEIGHTS", False) \
            else None
        # Buffers between layers (outputs, masks, masked outputs, and with two directions each
        # direction's own output) come from the workspace and go back to it once consumed:
        # fresh multi-megabyte arrays cost page faults on every call. Host arrays, full lengths.
        ws = self._workspace if self._reuse_buffers and not xp.on_device and lens is None else None
        inner: list[list[Any]] = []  # per layer: the workspace buffers it holds until backward
        inp = x
        K = self.proj_size or self.hidden_size
        # one direction's recurrent weights (W_hh, W_hr): where they fit in a core's L2,
        # the directions of a small batch run side by side (_config.directions_side_by_side)
        recurrent = (4 * self.hidden_size * K + self.proj_size * self.hidden_size) * \
            np.dtype(self.dtype).itemsize
        for layer in range(self.num_layers):
            last = layer == self.num_layers - 1
            # one direction writes the layer's output (the caller's, for the last layer); two
            # write their own, and each task copies it into its half of the layer's output
            # (side by side, both copies run at once), or write their halves in place
            both = None
            if D == 2 and not xp.on_device:
                both = ws.take((T, N, 2 * K), self.dtype) if ws is not None and not last else \
                    _new_scratch((T, N, 2 * K), self.dtype)
            side_by_side = D == 2 and _config.directions_side_by_side(N, training, recurrent)
            # an inference pass on a backend that writes strided rows puts each direction's
            # output straight into its half of the layer's (no copy); side by side only where
            # the halves start on a cache line (else the line they share ping-pongs between
            # the two cores at every row of every step)
            in_both = both is not None and not training and getattr(be, "ROW_STRIDED_Y", False) \
                and (not side_by_side or K * np.dtype(self.dtype).itemsize % 64 == 0)
            y_bufs = [both[..., d * K:(d + 1) * K] if in_both and both is not None else
                      ws.take((T, N, K), self.dtype) if ws is not None and (D == 2 or not last) else None
                      for d in range(D)]
            tasks = []
            for d in range(D):
                idx = layer * D + d
                W_ih, W_hh, b, W_hr = self._layer_weights(idx, snap)
                gates, gates_rows = None, None
                if projected and layer == 0:
                    W_ih, gates = np.empty((4 * self.hidden_size, 0), self.dtype), input_projection
                    gates_rows = rows_of
                task = functools.partial(
                    run_forward, be, inp, h0[idx], c0[idx], W_ih, W_hh, b, training, hT=h_n[idx],
                    cT=c_n[idx], workspace=self._workspace, xp=xp, lengths=lens, reverse=d == 1,
                    W_hr=W_hr, gates=gates, gates_rows=gates_rows, y=y_bufs[d],
                    packed=None if panels is None else panels.panels(be, idx))
                tasks.append(task if both is None or in_both else
                             functools.partial(_placed, task, both[..., d * K:(d + 1) * K]))
            outs = []
            for y, _, _, cache in run_directions(be, tasks, xp, side_by_side):
                caches.append(cache)
                outs.append(y)
            if ws is not None and not training and layer > 0:
                ws.give(*inner[-1])  # the last boundary's buffers: read by this layer, done
            y = outs[0] if D == 1 else both if both is not None else xp.concat_features(outs)
            held = [b for b in y_bufs if b is not None and not in_both]
            if D == 2 and ws is not None:
                if not training:  # copied into both, kept by no cache
                    ws.give(*held)
                    held = []
                if not last:
                    held.append(both)
            if training and self.dropout > 0 and not last:
                if ws is not None:  # the masked output in one pass; the draws kept for backward
                    words = ws.take((words_needed(y.shape),), np.uint64)
                    bits, threshold = keep_bits(self._rng, y.shape, self.dropout, words)
                    mask = (bits, threshold, 1.0 / (1.0 - self.dropout))
                    y = apply_keep(*mask, y, out=ws.take(y.shape, self.dtype))
                    held += [words, y]
                else:
                    mask = xp.as_array("mask", self._dropout_mask(y.shape), self.dtype)
                    y = xp.multiply(y, mask)
                masks.append(mask)
            else:
                masks.append(None)
            inner.append(held)
            inp = y
        if training:
            self._saved = (caches, masks, x.shape, xp, unbatched, ws, inner,
                           rows_of if projected else None)
        return self._to_caller(inp, h_n, c_n, unbatched, xp)

    @on_callers_stream(lambda self, dy=None, *args, **kwargs: (dy, self._saved_stream()))
    def backward(self, dy: Any = None, dstate: Any = None, *,
                 input_rows_grad: Any = None) -> tuple[Any, tuple[Any, Any]]:
        """Back-propagate through the last training forward pass.

        Parameter gradients are added to ``self.grads``.

        Parameters
        ----------
        dy : array_like shaped like the forward output y, or None
            Gradient of the loss with respect to y (ignored past each sequence's
            length); None when the loss depends on the final state only.
        dstate : pair (dh_n, dc_n) shaped like (h_n, c_n), optional
            Gradient with respect to the final state; zeros when omitted. At
            least one of dy and dstate is needed.
        input_rows_grad : ndarray (V, 4H), optional
            After a forward with ``input_rows`` (table, ids): the table's gradient is
            added to this array (the rows of dx added up by id; the C backend's loops
            add each row while they have it in cache).

        Returns
        -------
        dx : ndarray, shaped like x
            Gradient with respect to the input (zero past each sequence's length).
        (dh0, dc0) : pair of ndarrays shaped like the initial state
            Gradient with respect to the initial state.
        """
        if self._saved is None:
            raise RuntimeError("backward needs a preceding forward(..., training=True) "
                               "(each training forward allows one backward)")
        if dy is None and dstate is None:
            raise ValueError("backward needs dy or dstate (or both)")
        caches, masks, (T, N, _), xp, unbatched, ws, inner, rows_of = self._saved
        if input_rows_grad is not None:
            if rows_of is None:
                raise ValueError("input_rows_grad needs a forward with input_rows")
            G = 4 * self.hidden_size
            V = rows_of[0].shape[0]
            if type(input_rows_grad) is not np.ndarray or input_rows_grad.dtype != self.dtype \
                    or input_rows_grad.shape != (V, G) or not input_rows_grad.flags.c_contiguous:
                raise ValueError(f"input_rows_grad must be a C-contiguous {self.dtype} ndarray of "
                                 f"the table's shape ({V}, {G}), got {type(input_rows_grad).__name__} "
                                 f"of shape {getattr(input_rows_grad, 'shape', '?')}")
        D, H = self.num_directions, self.hidden_size
        K = self.proj_size or H
        F = D * K
        feat = ("2*" if D == 2 else "") + ("P" if self.proj_size else "H")
        if dy is None:
            dy = xp.zeros((T, N, F), self.dtype)
        elif unbatched:
            dy = v.check_shape("dy", xp.as_array("dy", dy, self.dtype), (T, F), f"(T, {feat})")
            dy = dy.reshape(T, 1, F)
        elif self.batch_first:
            dy = v.check_shape("dy", xp.as_array("dy", dy, self.dtype), (N, T, F), f"(N, T, {feat})")
            dy = xp.swap01(dy)
        else:
            dy = v.check_shape("dy", xp.as_array("dy", dy, self.dtype), (T, N, F), f"(T, N, {feat})")
        dh_n, dc_n = self._state("dstate", dstate, N, xp, unbatched)
        self._saved = None
        dh0 = xp.empty(dh_n.shape, self.dtype)
        dc0 = xp.empty(dc_n.shape, self.dtype)
        g = self.grads
        grad = dy
        own = False  # whether grad is a workspace buffer of this call's (then updated in place)
        halves: list[Any] = []  # workspace copies of the directions' halves of grad
        for layer in range(self.num_layers - 1, -1, -1):
            mask = masks[layer]
            if isinstance(mask, tuple):  # keep_bits' draws: the dropout pass again, on dy
                bits, threshold, scale = mask
                grad = apply_keep(bits, threshold, scale, grad, out=grad if own else ws.take(grad.shape, self.dtype))
                own = True
            elif mask is not None:
                grad = xp.multiply(grad, mask)
            tasks, dbs = [], []
            for d in range(D):
                idx = layer * D + d
                ih, hh, _, _, hr = self._layer_keys[idx]
                dbs.append(np.zeros(4 * H, self.dtype))
                # a projected layer 0 has no W_ih of its own: its gradient is the caller's
                dW_ih = np.zeros((4 * H, 0), self.dtype) if caches[idx].projected else g[ih]
                dx_buf = ws.take(caches[idx].x.shape, self.dtype) if ws is not None and layer > 0 else None
                task = functools.partial(run_backward, caches[idx])
                rest = (dh_n[idx], dc_n[idx], dW_ih, g[hh], dbs[d])
                options = dict(dh0=dh0[idx], dc0=dc0[idx], workspace=self._workspace,
                               dW_hr=None if hr is None else g[hr], dx=dx_buf)
                if idx == 0 and input_rows_grad is not None and rows_of is not None:
                    options["rows_grad"] = (rows_of[1], input_rows_grad)
                if D == 1:
                    tasks.append(functools.partial(task, grad, *rest, **options))
                elif xp.on_device:
                    tasks.append(functools.partial(task, xp.take_features(grad, d * K, (d + 1) * K),
                                                   *rest, **options))
                else:  # the direction's half of dy copied on its own thread
                    half_buf = ws.take((T, N, K), self.dtype) if ws is not None else None
                    if half_buf is not None:
                        halves.append(half_buf)
                    tasks.append(functools.partial(_on_half, task, grad[..., d * K:(d + 1) * K], half_buf,
                                                   *rest, **options))
            dx = None
            for d, (dx_d, _, _) in enumerate(run_directions(caches[layer * D].backend, tasks, xp)):
                _, _, b_ih, b_hh, _ = self._layer_keys[layer * D + d]
                if self.bias:
                    g[b_ih] += dbs[d]
                    g[b_hh] += dbs[d]
                if dx is None:
                    dx = dx_d
                elif ws is not None:  # the first direction's buffer takes the sum
                    dx = np.add(dx, dx_d, out=dx)
                    if layer > 0:
                        ws.give(dx_d)
                else:
                    dx = xp.add(dx, dx_d)
            if ws is not None:
                # done with: this layer's dy (and its halves), the buffers this layer held
                # (its output, the mask and the masked output that the layer above read, and
                # with two directions their own outputs)
                ws.give(*([grad] if own else []), *halves, *inner[layer])
                halves = []
                own = layer > 0
            grad = dx
            if self._after_layer_backward is not None:
                self._after_layer_backward(layer)
        return self._to_caller(grad, dh0, dc0, unbatched, xp)

    def _to_caller(self, seq, h, c, unbatched, xp):
        """A time-major (T, N, F) sequence and (D*L, N, F) states in the caller's layout:
        without the batch axis when the input had none, else batch-major with batch_first."""
        if unbatched:
            return seq.reshape(seq.shape[0], seq.shape[2]), (h.reshape(h.shape[0], h.shape[2]),
                                                             c.reshape(c.shape[0], c.shape[2]))
        return (xp.swap01(seq) if self.batch_first else seq), (h, c)

    # -- generation ---------------------------------------------------------
    @on_callers_stream(lambda self, x_t=None, *args, **kwargs: (x_t,))
    def step(self, x_t: Any, state: Any = None, *, weights: str | None = None) -> tuple[Any, tuple[Any, Any]]:
        """One time step with a carried state (no dropout, nothing kept).

        Parameters
        ----------
        x_t : array_like, (N, I)
            The input of this step.
        state : pair (h, c) of (L, N, H_out) and (L, N, H) arrays, optional
            The carried state; zeros when omitted.
        weights : {"float32", "bf16"} or None
            The weights of this call (None: :attr:`inference_precision`; "bf16" is not
            exact: see :meth:`inference_weights`).

        Returns
        -------
        h_t : ndarray (N, H_out)
            The top layer's output.
        (h, c) : pair of (L, N, H_out) and (L, N, H) ndarrays
            The new state, to pass to the next call.

        Raises
        ------
        ValueError
            On a bidirectional layer: one step has no reverse direction.
        """
        if self.bidirectional:
            raise ValueError("step runs one time step forward, and a bidirectional layer's reverse "
                             "direction needs the whole sequence: use forward")
        precision = self._precision(weights, False)
        be, xp = backend_and_arrays(self.backend, "x_t", x_t)
        x_t = v.check_shape("x_t", xp.as_array("x_t", x_t, self.dtype), (None, self.input_size), "(N, I)")
        N = x_t.shape[0]
        h, c = self._state("state", state, N, xp)
        snap = self._inference_snapshot(precision, False)
        fast = isinstance(snap, Bf16Weights) and self._bf16_backend(be, xp, None)
        if fast:
            y, h_new, c_new = self._forward_bf16(fast, x_t[None], h, c, snap)
            return y[0], (h_new, c_new)
        h_new = xp.empty(h.shape, self.dtype)
        c_new = xp.empty(c.shape, self.dtype)
        gates = self._step_workspace.take((N, 4 * self.hidden_size), self.dtype, xp=xp)
        layers = [self._layer_weights(layer, snap) for layer in range(self.num_layers)]
        extra = {}
        if self.proj_size:
            if "projection" not in getattr(be, "OPTIONS", ()):
                if xp.on_device:
                    raise NotImplementedError(f"the {be.NAME!r} backend does not run projections yet")
                be = get_backend("numpy")
            extra["W_hr"] = [w[3] for w in layers]
        be.step_layers(x_t, h, c, [w[0] for w in layers], [w[1] for w in layers],
                       [w[2] for w in layers], h_new, c_new, gates, **extra)
        self._step_workspace.give(gates, xp=xp)
        return xp.copy(h_new[-1]), (h_new, c_new)

    def __repr__(self) -> str:
        extra = (", bidirectional=True" if self.bidirectional else "") + (
            f", proj_size={self.proj_size}" if self.proj_size else "")
        return (f"LSTM({self.input_size}, {self.hidden_size}, num_layers={self.num_layers}, "
                f"bias={self.bias}, batch_first={self.batch_first}, dropout={self.dropout}{extra}, "
                f"dtype={self.dtype.name}, backend={self.backend!r})")
