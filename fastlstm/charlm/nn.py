"""The char model's NumPy toolkit beside ``fastlstm.LSTM``: Embedding, Dense, Dropout, stable
softmax cross-entropy, Adam and global gradient-norm clipping. Each layer keeps ``params`` /
``grads`` dicts (gradients accumulate, as in ``fastlstm.LSTM``) and paired forward/backward methods.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, DTypeLike, NDArray

from .._dropout import apply_keep, keep_bits
from .._validate import check_dtype

#: A seed for ``numpy.random.default_rng`` or a Generator to use as it is.
SeedLike = int | np.random.SeedSequence | np.random.Generator | None
#: Gradients: a dict of named arrays, or any iterable of arrays.
Grads = Mapping[str, NDArray[np.floating]] | Iterable[NDArray[np.floating]]

__all__ = ["Adam", "Dense", "Dropout", "Embedding", "SoftmaxCrossEntropy", "check_dropout", "clip_grad_norm",
           "fill_zero", "flat_buffer", "global_norm", "log_softmax", "softmax", "softmax_cross_entropy", "split_matmul"]


#: Products of at least this many multiply-adds split their rows over the threads (Dense with
#: ``threads`` >= 2): below it, waking the team costs more than it saves.
SPLIT_MIN_MACS = 4_000_000


def split_matmul(a: NDArray[Any], b: NDArray[Any], threads: int = 1,
                 out: NDArray[Any] | None = None) -> NDArray[Any]:
    """``a @ b``, on the LSTM kernels' threads when it is large.

    With ``threads`` >= 2, a product of at least ``SPLIT_MIN_MACS`` multiply-adds and the C
    backend built, the rows of the result are split over that many of the kernels' OpenMP
    threads, one single-threaded BLAS call each (``fastlstm.backends._c.matmul``): the trainer
    keeps BLAS itself on one thread, so that no BLAS workers spin beside the kernels' threads,
    and those are awake and idle between the LSTM's loops. Otherwise NumPy's ``matmul``. The
    sums may round differently from NumPy's.

    Parameters
    ----------
    a : ndarray
        ``(M, K)``, C- or F-contiguous (a transpose is fine).
    b : ndarray
        ``(K, N)``, C- or F-contiguous, of ``a``'s dtype.
    threads : int, optional
        Threads to split the rows over (1: NumPy's ``matmul``).
    out : ndarray, optional
        Where the result goes (``(M, N)``, C-contiguous).

    Returns
    -------
    ndarray
        ``(M, N)``: ``out`` when given.
    """
    M, K = a.shape
    N = b.shape[1]
    if threads >= 2 and M >= 2 and M * K * N >= SPLIT_MIN_MACS and a.dtype == b.dtype and \
            a.dtype in (np.float32, np.float64) and (a.flags.c_contiguous or a.flags.f_contiguous) and \
            (b.flags.c_contiguous or b.flags.f_contiguous):
        try:
            from ..backends import _c
        except ImportError:
            pass
        else:
            if out is None:
                out = np.empty((M, N), a.dtype)
            if out.flags.c_contiguous and out.dtype == a.dtype:
                return _c.matmul(a, b, out, threads)
    return np.matmul(a, b, out=out)


def check_dropout(p: float, name: str = "dropout probability") -> float:
    """The one rule for a dropout probability: a real number in [0, 1).

    Parameters
    ----------
    p : float
        The probability of zeroing an element.
    name : str, optional
        What the error message calls it (the trainer passes its flag, ``--dropout``).

    Returns
    -------
    float
        ``p`` as a float.

    Raises
    ------
    ValueError
        When ``p`` is not a number in [0, 1).
    """
    if isinstance(p, (bool, np.bool_)) or not isinstance(p, (int, float, np.integer, np.floating)) \
            or not 0.0 <= float(p) < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {p!r}")
    return float(p)


def _take_saved(layer: Any, attr: str, forward: str) -> Any:
    """What the last forward kept for backward, cleared: each forward allows one backward."""
    saved = getattr(layer, attr)
    if saved is None:
        raise RuntimeError(f"{type(layer).__name__}.backward needs a preceding {forward}")
    setattr(layer, attr, None)
    return saved


def fill_zero(a: NDArray[np.floating]) -> None:
    """Set every element of ``a`` to zero.

    A 1-D C-contiguous float array is zeroed on the C backend's threads where it is built
    (a model's flat gradient buffer, several megabytes, between steps); anything else by
    NumPy's assignment.

    Parameters
    ----------
    a : ndarray
        The float array to zero, in place.
    """
    if a.ndim == 1 and a.flags.c_contiguous and a.dtype in (np.float32, np.float64):
        try:
            from ..backends import _c
        except ImportError:
            pass
        else:
            _c.fill_zero(a)
            return
    a[...] = 0


def flat_buffer(arrays: Iterable[NDArray[np.floating]]) -> NDArray[np.floating] | None:
    """The one 1-D array that ``arrays`` tile in order, back to back, or None.

    A model that keeps its parameters (or gradients) as views of one buffer
    (:meth:`CharModel <fastlstm.charlm.model.CharModel>` does) lets Adam, clipping and
    zeroing make one pass over that buffer instead of one per array; elementwise the
    arithmetic is the same.

    Parameters
    ----------
    arrays : iterable of ndarray
        The arrays, in the order they should tile the buffer.

    Returns
    -------
    ndarray or None
        Their common base, when they are C-contiguous views of it, of its dtype, back to back
        from its first element to its last; else None.
    """
    arrays = list(arrays)
    if not arrays:
        return None
    base = arrays[0].base
    if not isinstance(base, np.ndarray) or base.ndim != 1 or not base.flags.c_contiguous:
        return None
    addr = base.__array_interface__["data"][0]
    for a in arrays:
        if a.base is not base or a.dtype != base.dtype or not a.flags.c_contiguous \
                or a.__array_interface__["data"][0] != addr:
            return None
        addr += a.nbytes
    return base if addr == base.__array_interface__["data"][0] + base.nbytes else None


def _rng(seed_or_rng: SeedLike) -> np.random.Generator:
    if isinstance(seed_or_rng, np.random.Generator):
        return seed_or_rng
    return np.random.default_rng(seed_or_rng)


class Embedding:
    """Row lookup ``W[ids]``: ids of any shape (ints in [0, V)) -> ids.shape + (D,).

    Initialised N(0, 1) like ``torch.nn.Embedding``. Backward scatters-adds into
    ``grads["weight"]`` (repeated ids accumulate).

    Parameters
    ----------
    num_embeddings : int
        V, the number of rows (distinct ids).
    embedding_dim : int
        D, the width of a row.
    dtype : float32 or float64, optional
        Dtype of the table (default float32).
    seed : int, SeedSequence, Generator or None, optional
        Seeds the initialisation.

    Attributes
    ----------
    params, grads : dict of str to ndarray
        ``{"weight": (V, D)}`` and its gradient, which accumulates.

    Raises
    ------
    TypeError
        For a dtype other than float32 and float64 (the rule of ``fastlstm.LSTM``).
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, *, dtype: DTypeLike = np.float32,
                 seed: SeedLike = None) -> None:
        self.num_embeddings = int(num_embeddings)
        self.embedding_dim = int(embedding_dim)
        self.dtype = check_dtype(dtype)
        rng = _rng(seed)
        W = rng.standard_normal((self.num_embeddings, self.embedding_dim)).astype(self.dtype)
        self.params = {"weight": W}
        self.grads = {"weight": np.zeros_like(W)}
        self._ids: NDArray[np.integer] | None = None

    def forward(self, ids: ArrayLike, *, training: bool = False) -> NDArray[np.floating]:
        """Look up the rows of ``ids``.

        Parameters
        ----------
        ids : array_like of int
            Any shape, values in [0, V).
        training : bool, optional
            Keep ``ids`` for :meth:`backward`.

        Returns
        -------
        ndarray
            ``ids.shape + (D,)``, a fresh contiguous array.
        """
        ids = np.asarray(ids)
        if training:
            self._ids = ids
        return self.params["weight"][ids]  # fancy indexing: a fresh, contiguous array

    def backward(self, dout: ArrayLike) -> None:
        """Accumulate the gradient of the table into ``grads["weight"]``.

        Parameters
        ----------
        dout : array_like
            Gradient of the output, ``ids.shape + (D,)``.

        Returns
        -------
        None
            Integer ids have no gradient.

        Raises
        ------
        RuntimeError
            Without a preceding ``forward(..., training=True)``.
        """
        ids = _take_saved(self, "_ids", "forward(..., training=True)")
        D = self.embedding_dim
        ids = ids.reshape(-1)
        dout = np.asarray(dout).reshape(-1, D)
        # scatter-add without np.add.at: sort the rows by id, sum each run of equal ids
        order = np.argsort(ids, kind="stable")
        sorted_ids = ids[order]
        starts = np.flatnonzero(np.r_[True, sorted_ids[1:] != sorted_ids[:-1]])
        self.grads["weight"][sorted_ids[starts]] += np.add.reduceat(dout[order], starts, axis=0)


class Dense:
    """Affine map ``y = x @ W.T + b`` over the last axis; W is (out, in) like ``torch.nn.Linear``.

    Initialised U(-1/sqrt(in), 1/sqrt(in)) like PyTorch. x may have any leading shape; it is
    treated as one (rows, in) matrix so the whole batch is one matrix product.

    Parameters
    ----------
    in_features, out_features : int
        Widths of the input and the output.
    bias : bool, optional
        Add a bias (default True).
    dtype, seed : optional
        The parameters' dtype (float32, the default, or float64) and the seed of their
        initialisation (int, SeedSequence or Generator; None draws fresh entropy).

    Attributes
    ----------
    params : dict of str to ndarray
        ``{"weight": (out, in), "bias": (out,)}`` (no bias with ``bias=False``).
    grads : dict of str to ndarray
        Gradients of ``params``; they accumulate.
    threads : int
        Threads for the three products (``split_matmul``; default 1: one BLAS call each).
        ``CharModel`` sets it to its LSTM kernels' thread count.

    Raises
    ------
    TypeError
        For a dtype other than float32 and float64.
    """

    threads = 1

    def __init__(self, in_features: int, out_features: int, *, bias: bool = True,
                 dtype: DTypeLike = np.float32, seed: SeedLike = None) -> None:
        self.in_features = int(in_features)
        self.out_features = int(out_features)
        self.dtype = check_dtype(dtype)
        rng = _rng(seed)
        k = 1.0 / np.sqrt(self.in_features)
        self.params = {"weight": rng.uniform(-k, k, (self.out_features, self.in_features)).astype(self.dtype)}
        if bias:
            self.params["bias"] = rng.uniform(-k, k, self.out_features).astype(self.dtype)
        self.grads = {name: np.zeros_like(p) for name, p in self.params.items()}
        self._x: NDArray[np.floating] | None = None

    def forward(self, x: ArrayLike, *, training: bool = False) -> NDArray[np.floating]:
        """``x @ W.T + b`` over the last axis.

        Parameters
        ----------
        x : array_like
            ``(..., in)``.
        training : bool, optional
            Keep ``x`` for :meth:`backward`.

        Returns
        -------
        ndarray
            ``(..., out)``.
        """
        x = np.asarray(x)
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        y = split_matmul(x2, self.params["weight"].T, self.threads)
        if "bias" in self.params:
            y += self.params["bias"]
        if training:
            self._x = x2
        return y.reshape(lead + (self.out_features,))

    def backward(self, dy: ArrayLike, *, out: NDArray[np.floating] | None = None) -> NDArray[np.floating]:
        """Accumulate dW and db into ``grads``; return the gradient of the input.

        Parameters
        ----------
        dy : array_like
            Gradient of the output, ``(..., out)``.
        out : ndarray, optional
            Where dx goes (C-contiguous, ``(..., in)``; a buffer the caller reuses).

        Returns
        -------
        ndarray
            The gradient of the input, dx: ``(..., in)``.

        Raises
        ------
        RuntimeError
            Without a preceding ``forward(..., training=True)``.
        """
        x2 = _take_saved(self, "_x", "forward(..., training=True)")
        dy = np.asarray(dy)
        dy2 = dy.reshape(-1, self.out_features)
        # dW^T = x^T dy: its rows (the input features) split over the threads
        self.grads["weight"] += split_matmul(x2.T, dy2, self.threads).T
        if "bias" in self.params:
            self.grads["bias"] += dy2.sum(axis=0)
        dx_out = None if out is None else out.reshape(dy2.shape[0], self.in_features)
        dx = split_matmul(dy2, self.params["weight"], self.threads, out=dx_out)
        return dx.reshape(dy.shape[:-1] + (self.in_features,))


class Dropout:
    """Inverted dropout: in training, zero each element with probability p and scale the rest by
    1/(1-p); identity otherwise. Masks come from the layer's own seeded Generator (``rng``),
    whose ``bit_generator.state`` a checkpoint can save and restore.

    Parameters
    ----------
    p : float, optional
        Probability of zeroing an element, in [0, 1) (default 0.5).
    seed : int, SeedSequence, Generator or None, optional
        Seeds the masks (a Generator is used as it is).

    Attributes
    ----------
    rng : numpy.random.Generator
        The generator of the masks.
    """

    def __init__(self, p: float = 0.5, *, seed: SeedLike = None) -> None:
        self.p = check_dropout(p)
        self.rng = _rng(seed)
        self.params: dict[str, NDArray[np.floating]] = {}
        self.grads: dict[str, NDArray[np.floating]] = {}
        # the last training mask's draws: (bits, threshold) of _dropout.keep_bits
        self._mask: tuple[NDArray[np.uint16], np.uint16] | None = None
        self._words: Any = None  # the buffer under the last mask's bits
        self._scale: Any = 1.0

    def forward(self, x: ArrayLike, *, training: bool = False,
                out: NDArray[np.floating] | None = None) -> NDArray[np.floating]:
        """Drop and rescale in training; return ``x`` unchanged otherwise.

        Parameters
        ----------
        x : array_like
            Any shape.
        training : bool, optional
            Apply (and keep) a fresh mask.
        out : ndarray, optional
            Where the result goes in training (shaped like ``x``; a buffer the caller reuses).

        Returns
        -------
        ndarray
            Same shape and dtype as ``x``.
        """
        x = np.asarray(x)
        if not training or self.p == 0.0:
            self._mask = None
            return x
        # the draws' buffer is kept from step to step (a fresh one costs page faults)
        self._mask = keep_bits(self.rng, x.shape, self.p, self._words)
        self._words = self._mask[0].base
        self._scale = x.dtype.type(1.0 / (1.0 - self.p))
        return apply_keep(*self._mask, self._scale, x, out=out)

    def backward(self, dy: NDArray[np.floating], *,
                 out: NDArray[np.floating] | None = None) -> NDArray[np.floating]:
        """Gradient of the input: ``dy`` through the last training mask (or unchanged).

        Parameters
        ----------
        dy : ndarray
            Gradient of the output.
        out : ndarray, optional
            Where the gradient goes (``dy`` itself works in place).

        Returns
        -------
        ndarray
            The gradient of the input, dx: same shape as ``dy``.
        """
        if self._mask is None:
            return dy
        return apply_keep(*self._mask, self._scale, dy, out=out)


def _shifted_exp(logits: NDArray[np.floating], axis: int) -> tuple[NDArray[np.floating], ...]:
    """(logits - max, exp of that, its sum along ``axis``): subtracting the max first keeps every
    exponent <= 0, so nothing overflows whatever the logits."""
    shifted = logits - logits.max(axis=axis, keepdims=True)
    e = np.exp(shifted)
    return shifted, e, e.sum(axis=axis, keepdims=True)


def log_softmax(logits: ArrayLike, axis: int = -1) -> NDArray[np.floating]:
    """Log-softmax by log-sum-exp: ``logits - max - log(sum(exp(logits - max)))``.

    Parameters
    ----------
    logits : array_like
        Finite values, any shape.
    axis : int, optional
        The axis to normalise over (default the last).

    Returns
    -------
    ndarray
        ``log(softmax(logits))``, same shape.
    """
    shifted, _, total = _shifted_exp(np.asarray(logits), axis)
    return shifted - np.log(total)


def softmax(logits: ArrayLike, axis: int = -1) -> NDArray[np.floating]:
    """Softmax, stable for any finite logits (the max is subtracted before exponentiating).

    Parameters
    ----------
    logits : array_like
        Scores of any shape.
    axis : int, optional
        Along this axis the result sums to 1 (default -1).

    Returns
    -------
    ndarray
        Probabilities, shaped like ``logits``.
    """
    _, e, total = _shifted_exp(np.asarray(logits), axis)
    return e / total


def softmax_cross_entropy(logits: ArrayLike, targets: ArrayLike, *,
                          out: NDArray[np.floating] | None = None) -> tuple[float, NDArray[np.floating]]:
    """Mean cross-entropy of integer targets under softmax(logits), and its gradient.

    Parameters
    ----------
    logits : array_like
        (M, V) floats.
    targets : array_like of int
        (M,) values in [0, V) (any shape with M elements).
    out : ndarray, optional
        (M, V), the logits' dtype: where the gradient goes (``logits`` itself computes it
        in place, with no temporary of that size).

    Returns
    -------
    loss : float
        Mean cross-entropy in nats (0.0 for M = 0).
    dlogits : ndarray
        (M, V): ``(softmax - onehot) / M``, computed without building a one-hot matrix.

    Raises
    ------
    ValueError
        When logits is not 2-D or the sizes differ.
    """
    logits = np.asarray(logits)
    targets = np.asarray(targets).reshape(-1)
    M = logits.shape[0]
    if logits.ndim != 2 or targets.shape[0] != M:
        raise ValueError(f"logits must be (M, V) and targets (M,), got {logits.shape} and {targets.shape}")
    if M == 0:  # no targets (a rank's empty share of a batch): nothing to add
        return 0.0, np.zeros_like(logits) if out is None else out
    fused = _fused_softmax_xent(logits, targets, out)
    if fused is not None:
        return fused
    rows = np.arange(M)
    e = np.subtract(logits, logits.max(axis=1, keepdims=True), out=out)  # every exponent <= 0
    picked = e[rows, targets].astype(np.float64)
    np.exp(e, out=e)
    s = e.sum(axis=1, keepdims=True)
    # loss = mean(log s - shifted[target]); accumulate in float64 for a stable mean.
    loss = float(np.mean(np.log(s[:, 0]).astype(np.float64) - picked))
    e /= s
    e[rows, targets] -= 1
    e *= logits.dtype.type(1.0 / M)
    return loss, e


def _fused_softmax_xent(logits: NDArray[Any], targets: NDArray[Any],
                        out: NDArray[Any] | None) -> tuple[float, NDArray[np.floating]] | None:
    """softmax_cross_entropy in one C pass over each row (the fused kernels' exp, about 1 ulp
    from NumPy's), for float32 C-contiguous logits and targets in [0, V); None where that
    does not apply or the C backend has no fused kernels (then the NumPy form runs)."""
    if logits.dtype != np.float32 or not logits.flags.c_contiguous or \
            (out is not None and (out.dtype != np.float32 or not out.flags.c_contiguous
                                  or out.shape != logits.shape)) or \
            targets.dtype.kind not in "iu" or targets.min() < 0 or targets.max() >= logits.shape[1]:
        return None
    try:
        from ..backends import _c
    except ImportError:
        return None
    dl = np.empty_like(logits) if out is None else out
    row_loss = _c.softmax_xent(logits, targets.astype(np.int64, copy=False), dl, 1.0 / logits.shape[0])
    if row_loss is None:
        return None
    return float(np.mean(row_loss)), dl


class SoftmaxCrossEntropy:
    """Layer form of :func:`softmax_cross_entropy`: ``forward(logits, targets)`` gives the loss,
    ``backward(scale=1.0)`` the gradient of the logits.
    """

    def __init__(self) -> None:
        self.params: dict[str, NDArray[np.floating]] = {}
        self.grads: dict[str, NDArray[np.floating]] = {}
        self._dlogits: NDArray[np.floating] | None = None

    def forward(self, logits: ArrayLike, targets: ArrayLike) -> float:
        """Mean cross-entropy (keeps the gradient for :meth:`backward`).

        Parameters
        ----------
        logits : array_like
            (M, V) floats.
        targets : array_like of int
            (M,) values in [0, V).

        Returns
        -------
        float
            The loss in nats.
        """
        loss, self._dlogits = softmax_cross_entropy(logits, targets)
        return loss

    def backward(self, scale: float = 1.0) -> NDArray[np.floating]:
        """The gradient of the last forward's loss with respect to its logits.

        Parameters
        ----------
        scale : float, optional
            Multiplies the gradient (e.g. a loss weight).

        Returns
        -------
        ndarray
            The gradient of the logits, (M, V).

        Raises
        ------
        RuntimeError
            Without a preceding :meth:`forward`.
        """
        d = _take_saved(self, "_dlogits", "forward")
        if scale != 1.0:
            d *= d.dtype.type(scale)
        return d


def global_norm(grads: Grads) -> float:
    """The L2 norm of all gradients together: sqrt of the sum of squares of every element.

    Parameters
    ----------
    grads : dict of str to ndarray, or iterable of ndarray
        The arrays.

    Returns
    -------
    float
        ``sqrt(sum(g**2))`` over every element of every array.
    """
    arrays = list(grads.values() if isinstance(grads, Mapping) else grads)
    flat = flat_buffer(arrays)
    total = 0.0
    for g in arrays if flat is None else [flat]:  # one dot over a shared buffer
        g1 = g.reshape(-1)
        total += float(np.dot(g1, g1))
    return float(np.sqrt(total))


def clip_grad_norm(grads: Grads, max_norm: float | None) -> float:
    """Scale every gradient in place so that their global L2 norm is at most ``max_norm``.

    Parameters
    ----------
    grads : dict of str to ndarray, or iterable of ndarray
        The gradients, scaled in place.
    max_norm : float or None
        The largest norm allowed; None or <= 0 disables clipping.

    Returns
    -------
    float
        The norm before clipping (like ``torch.nn.utils.clip_grad_norm_``).
    """
    arrays = list(grads.values() if isinstance(grads, Mapping) else grads)
    norm = global_norm(arrays)
    if max_norm is not None and max_norm > 0 and norm > max_norm:
        scale = max_norm / (norm + 1e-6)
        flat = flat_buffer(arrays)
        for g in arrays if flat is None else [flat]:
            g *= g.dtype.type(scale)
    return norm


def _offsets(params: Mapping[str, NDArray[np.floating]]) -> list[tuple[str, NDArray[np.floating], int]]:
    """(name, array, offset in elements) of arrays laid out back to back in this order."""
    out, off = [], 0
    for k, p in params.items():
        out.append((k, p, off))
        off += p.size
    return out


class Adam:
    """Adam (Kingma & Ba) with PyTorch's update rule, on a dict of named parameter arrays
    updated in place.

    ``state_arrays()`` / ``scalars()`` export the moments (arrays, for an ``.npz``) and the
    step count and hyper-parameters (JSON-serialisable); ``load_state()`` puts them back so
    that a resumed run takes exactly the same steps.

    When the parameters tile one buffer (:func:`flat_buffer`) the moments do too, and a step
    whose gradients tile one buffer is one pass of each operation over all parameters (the
    same arithmetic per element as the per-parameter loop, so the same results).

    Parameters
    ----------
    params : dict of str to ndarray
        The parameters, updated in place by :meth:`step`.
    lr : float, optional
        Learning rate (default 1e-3).
    betas : (float, float), optional
        Decay rates of the first and second moments (default (0.9, 0.999)).
    eps : float, optional
        Added to the denominator (default 1e-8).
    weight_decay : float, optional
        L2 penalty added to the gradient, as ``torch.optim.Adam`` (default 0).

    Attributes
    ----------
    t : int
        Steps taken.
    m, v : dict of str to ndarray
        First and second moments.
    """

    def __init__(self, params: dict[str, NDArray[np.floating]], lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0) -> None:
        self.params = params
        self.lr = float(lr)
        self.beta1, self.beta2 = float(betas[0]), float(betas[1])
        self.eps = float(eps)
        self.weight_decay = float(weight_decay)
        self.t = 0
        self._fused: Any = False  # the C backend's adam_step, None without one; found on first use
        flat = flat_buffer(params.values())
        self._flat: tuple[NDArray[np.floating], ...] | None = None
        if flat is not None:  # moments as views of flat buffers, in the parameters' layout
            self._flat = (flat, np.zeros_like(flat), np.zeros_like(flat), np.empty_like(flat))
            self.m, self.v, self._tmp = ({k: a[o:o + p.size].reshape(p.shape) for k, p, o in _offsets(params)}
                                         for a in self._flat[1:])
        else:
            self.m = {k: np.zeros_like(p) for k, p in params.items()}
            self.v = {k: np.zeros_like(p) for k, p in params.items()}
            self._tmp = {k: np.empty_like(p) for k, p in params.items()}

    def step(self, grads: Mapping[str, NDArray[np.floating]]) -> None:
        """One update of every parameter.

        Parameters
        ----------
        grads : dict of str to ndarray
            Gradients, the same keys and shapes as ``params``; left unchanged.
        """
        self.t += 1
        b1, b2 = self.beta1, self.beta2
        bc1 = 1.0 - b1 ** self.t
        bc2 = 1.0 - b2 ** self.t
        # p -= lr/bc1 * m / (sqrt(v)/sqrt(bc2) + eps) == a * m / (sqrt(v) + e), folded so
        # that every array pass below is one ufunc call into a preallocated buffer.
        a = self.lr / bc1 * np.sqrt(bc2)
        e = self.eps * np.sqrt(bc2)
        flat_grad = flat_buffer(grads[k] for k in self.params) if self._flat is not None else None
        if flat_grad is not None and self._flat is not None:
            work = [(self._flat[0], flat_grad, self._flat[1], self._flat[2], self._flat[3])]
        else:
            work = [(p, grads[k], self.m[k], self.v[k], self._tmp[k]) for k, p in self.params.items()]
        fused = self._fused_step()
        for p, g, m, v, tmp in work:
            if fused is not None and g.dtype == p.dtype and g.flags.c_contiguous and p.flags.c_contiguous:
                fused(p.reshape(-1), g.reshape(-1), m.reshape(-1), v.reshape(-1), 1.0 - b1, 1.0 - b2, a, e,
                      self.weight_decay)
                continue
            if self.weight_decay:
                g = g + p.dtype.type(self.weight_decay) * p
            dt = p.dtype.type
            np.subtract(g, m, out=tmp)  # m = b1 m + (1 - b1) g
            tmp *= dt(1.0 - b1)
            m += tmp
            np.multiply(g, g, out=tmp)  # v = b2 v + (1 - b2) g^2
            tmp -= v
            tmp *= dt(1.0 - b2)
            v += tmp
            np.sqrt(v, out=tmp)
            tmp += dt(e)
            np.divide(m, tmp, out=tmp)
            tmp *= dt(a)
            p -= tmp

    def _fused_step(self) -> Any:
        """The C backend's one-pass Adam (the same numbers as the loop below), or None."""
        if self._fused is False:
            from ..backends import get_backend

            self._fused = getattr(get_backend(), "adam_step", None)
        return self._fused

    def scalars(self) -> dict[str, Any]:
        """The step count and the hyper-parameters.

        Returns
        -------
        dict
            ``t``, ``lr``, ``betas``, ``eps``, ``weight_decay`` (JSON-serialisable).
        """
        return {"t": self.t, "lr": self.lr, "betas": [self.beta1, self.beta2], "eps": self.eps,
                "weight_decay": self.weight_decay}

    def state_arrays(self, prefix: str = "adam.") -> dict[str, NDArray[np.floating]]:
        """The moments as a flat dict of arrays (e.g. for ``numpy.savez``).

        Parameters
        ----------
        prefix : str, optional
            Prepended to every key.

        Returns
        -------
        dict of str to ndarray
            ``{prefix}m.<name>`` and ``{prefix}v.<name>`` for every parameter (the arrays
            themselves, not copies).
        """
        out = {}
        for k in self.params:
            out[f"{prefix}m.{k}"] = self.m[k]
            out[f"{prefix}v.{k}"] = self.v[k]
        return out

    def load_state(self, arrays: Mapping[str, ArrayLike], scalars: Mapping[str, Any],
                   prefix: str = "adam.", keep_hyperparameters: bool = False) -> None:
        """Restore what :meth:`state_arrays` and :meth:`scalars` exported.

        Every key and shape is checked before anything changes.

        Parameters
        ----------
        arrays : mapping of str to array_like
            The moments, as :meth:`state_arrays` names them.
        scalars : mapping
            As :meth:`scalars` returns.
        prefix : str, optional
            The prefix the arrays were exported with.
        keep_hyperparameters : bool, optional
            Restore only the step count and the moments, keeping the current lr, betas,
            eps and weight decay.

        Raises
        ------
        KeyError
            When a moment is missing.
        ValueError
            When a moment has the wrong shape.
        """
        new = {}
        for k, p in self.params.items():
            for which in ("m", "v"):
                key = f"{prefix}{which}.{k}"
                if key not in arrays:
                    raise KeyError(f"optimizer state is missing {key}")
                a = np.asarray(arrays[key])
                if a.shape != p.shape:
                    raise ValueError(f"optimizer state {key} has shape {a.shape}, expected {p.shape}")
                new[key] = a
        t = int(scalars["t"])
        for k in self.params:
            self.m[k][...] = new[f"{prefix}m.{k}"]
            self.v[k][...] = new[f"{prefix}v.{k}"]
        self.t = t
        if not keep_hyperparameters:
            self.lr = float(scalars["lr"])
            self.beta1, self.beta2 = (float(b) for b in scalars["betas"])
            self.eps = float(scalars["eps"])
            self.weight_decay = float(scalars.get("weight_decay", 0.0))
