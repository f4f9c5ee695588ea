"""The character-level language model: characters in (an embedding, or the tutorial's scaled
integers), a multi-layer ``fastlstm.LSTM`` with dropout, a dense layer to V logits. Time-major
(ids are (T, N)); ``generate`` carries the LSTM state with ``LSTM.step``: n characters, n steps.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, DTypeLike, NDArray

from .._bf16 import check_precision, round_bf16
from ..layer import LSTM
from .nn import Dense, Dropout, Embedding, fill_zero, flat_buffer, softmax_cross_entropy

#: The LSTM state carried between calls: (h, c), each (L, N, H); None means zeros.
State = tuple[NDArray[np.floating], NDArray[np.floating]] | None

__all__ = ["INPUT_MODES", "CharModel", "check_input_mode"]

#: "embedding": a learned (V, E) table; "scaled": one feature, id / V (the tutorial's input).
INPUT_MODES = ("embedding", "scaled")


def check_input_mode(mode: str, name: str = "input_mode") -> str:
    """The one rule for how characters go in: one of :data:`INPUT_MODES`.

    Parameters
    ----------
    mode : str
        The input mode asked for.
    name : str, optional
        What the error message calls it (the trainer passes its flag, ``--input``).

    Returns
    -------
    str
        ``mode``.

    Raises
    ------
    ValueError
        For any other value.
    """
    if mode not in INPUT_MODES:
        raise ValueError(f"{name} must be one of {', '.join(INPUT_MODES)}, got {mode!r}")
    return mode


class CharModel:
    """Embedding (or scaled ids) -> LSTM(H) x L (dropout between) -> Dropout -> Dense(V).

    Parameters
    ----------
    vocab_size : int
        V.
    hidden_size, num_layers : int, optional
        H and L of the LSTM (default 300 and 2).
    dropout : float, optional
        Dropout after every LSTM layer (between layers inside ``fastlstm.LSTM``, and after
        the last one here), as the tutorial's LSTM -> Dropout -> LSTM -> Dropout (default 0.2).
    embed_dim : int, optional
        E, the embedding width (input_mode "embedding"; default 64).
    input_mode : {"embedding", "scaled"}, optional
        A learned (V, E) embedding, or the tutorial's one feature ``id / V``.
    seed : int, optional
        Seeds every initialisation and both dropout generators (independent streams).
    dtype : float32 or float64, optional
        Dtype of every parameter (default float32).
    backend : str, optional
        The LSTM backend: "auto" (default), "c", "numpy" or "cuda".

    Attributes
    ----------
    embedding : Embedding or None
        None with input_mode "scaled".
    lstm : fastlstm.LSTM
    drop : fastlstm.charlm.nn.Dropout
    dense : fastlstm.charlm.nn.Dense
    params, grads : dict of str to ndarray
        Every parameter and its gradient by dotted name (``lstm.weight_ih_l0``, ``dense.bias``).

    Raises
    ------
    ValueError
        For an unknown input_mode.
    """

    def __init__(self, vocab_size: int, hidden_size: int = 300, num_layers: int = 2,
                 dropout: float = 0.2, embed_dim: int = 64, input_mode: str = "embedding", *,
                 seed: int = 0, dtype: DTypeLike = np.float32, backend: str = "auto") -> None:
        check_input_mode(input_mode)
        self.vocab_size = int(vocab_size)
        self.hidden_size = int(hidden_size)
        self.num_layers = int(num_layers)
        self.dropout = float(dropout)
        self.embed_dim = int(embed_dim)
        self.input_mode = input_mode
        self.dtype: np.dtype[Any] = np.dtype(dtype)
        seeds = np.random.SeedSequence(seed).generate_state(4)
        V, H = self.vocab_size, self.hidden_size
        self.embedding: Embedding | None
        if input_mode == "embedding":
            self.embedding = Embedding(V, self.embed_dim, dtype=self.dtype, seed=int(seeds[0]))
            input_size = self.embed_dim
        else:
            self.embedding = None
            input_size = 1
        self.lstm = LSTM(input_size, H, self.num_layers, dropout=self.dropout if self.num_layers > 1 else 0.0,
                         dtype=self.dtype, backend=backend, seed=int(seeds[1]))
        self.drop = Dropout(self.dropout, seed=int(seeds[2]))
        self.dense = Dense(H, V, dtype=self.dtype, seed=int(seeds[3]))
        self._parts: list[tuple[str, Any]] = [("lstm.", self.lstm), ("dense.", self.dense)]
        if self.embedding is not None:
            self._parts.insert(0, ("embedding.", self.embedding))
        self._flat_params, self._flat_grads = self._share_buffers()
        self.params = {p + k: v for p, part in self._parts for k, v in part.params.items()}
        self.grads = {p + k: v for p, part in self._parts for k, v in part.grads.items()}
        self._saved: Any = None  # (ids.shape, last_only) of the last training forward
        #: Training passes fold the embedding into layer 0's input projection (exact math,
        #: see :meth:`_fold_forward`); False computes E[ids] . W_ih^T as two steps.
        self.fold_embedding = self.embedding is not None
        self._fold: Any = None  # the last folded forward's ids (None: that forward did not fold)
        self._proj: NDArray[np.floating] | None = None  # the (T, N, 4H) projection buffer, reused
        self._buffers: dict[str, NDArray[np.floating]] = {}  # training passes' (T, N, H) arrays

    def _share_buffers(self) -> tuple[NDArray[np.floating], NDArray[np.floating]]:
        """Move every parameter, and every gradient, into views of one flat buffer each (same
        values, same names and shapes): Adam, clipping and zeroing then make one pass over all
        of them (``nn.flat_buffer``), and data-parallel training reduces the gradients in one
        message. Returns the two buffers (parameters, gradients)."""
        sizes = [p.size for _, part in self._parts for p in part.params.values()]
        flat_p = np.empty(sum(sizes), self.dtype)
        flat_g = np.zeros(sum(sizes), self.dtype)
        off = 0
        for _, part in self._parts:
            for k, p in list(part.params.items()):
                view = flat_p[off:off + p.size].reshape(p.shape)
                view[...] = p
                part.params[k] = view
                part.grads[k] = flat_g[off:off + p.size].reshape(p.shape)
                off += p.size
        return flat_p, flat_g

    @property
    def flat_params(self) -> NDArray[np.floating]:
        """The one 1-D buffer every parameter is a view of (writing it writes them)."""
        return self._flat_params

    @property
    def flat_grads(self) -> NDArray[np.floating]:
        """The one 1-D buffer every gradient is a view of.

        Raises
        ------
        RuntimeError
            When a caller replaced some of ``grads`` by arrays of their own.
        """
        if flat_buffer(self.grads.values()) is not self._flat_grads:
            raise RuntimeError("some of grads were replaced by other arrays: they no longer share one buffer")
        return self._flat_grads

    # -- configuration, parameters, RNG state -------------------------------
    def config(self) -> dict[str, Any]:
        """The constructor's size arguments.

        Returns
        -------
        dict
            ``vocab_size``, ``hidden_size``, ``num_layers``, ``dropout``, ``embed_dim``,
            ``input_mode`` (JSON-serialisable; ``CharModel(**config)`` rebuilds the shape).
        """
        return {"vocab_size": self.vocab_size, "hidden_size": self.hidden_size,
                "num_layers": self.num_layers, "dropout": self.dropout, "embed_dim": self.embed_dim,
                "input_mode": self.input_mode}

    def zero_grad(self) -> None:
        """Set every gradient to zero (gradients accumulate)."""
        if self._flat_grads is not None and flat_buffer(self.grads.values()) is self._flat_grads:
            fill_zero(self._flat_grads)
        else:  # a caller replaced some of them
            for g in self.grads.values():
                g[...] = 0

    def state_dict(self) -> dict[str, NDArray[np.floating]]:
        """Copies of every parameter.

        Returns
        -------
        dict of str to ndarray
            By dotted name (``lstm.weight_ih_l0``, ``dense.bias``...).
        """
        return {k: v.copy() for k, v in self.params.items()}

    def load_state_dict(self, state: Mapping[str, ArrayLike]) -> None:
        """Copy parameters in; every name and shape is checked before anything changes.

        Parameters
        ----------
        state : mapping of str to array_like
            As :meth:`state_dict` returns.

        Raises
        ------
        KeyError
            When names are missing or unexpected.
        ValueError
            When a shape differs.
        """
        missing = [k for k in self.params if k not in state]
        extra = [k for k in state if k not in self.params]
        if missing or extra:
            raise KeyError(f"parameters do not match the model: missing {missing}, unexpected {extra}")
        for k, p in self.params.items():
            if np.shape(state[k]) != p.shape:
                raise ValueError(f"parameter {k} has shape {np.shape(state[k])}, the model needs {p.shape}")
        for k, p in self.params.items():
            p[...] = state[k]
        self.lstm._parameters_loaded()

    def rng_states(self) -> dict[str, dict[str, Any]]:
        """The dropout generators' states.

        Returns
        -------
        dict
            ``lstm_dropout`` and ``dropout``: ``bit_generator.state`` dicts (JSON-serialisable).
        """
        return {"lstm_dropout": self.lstm._rng.bit_generator.state,
                "dropout": self.drop.rng.bit_generator.state}

    def set_rng_states(self, states: Mapping[str, dict[str, Any]]) -> None:
        """Restore what :meth:`rng_states` returned.

        Parameters
        ----------
        states : mapping
            ``lstm_dropout`` and ``dropout`` generator states.
        """
        self.lstm._rng.bit_generator.state = states["lstm_dropout"]
        self.drop.rng.bit_generator.state = states["dropout"]

    # -- training -------------------------------------------------------------
    def _inputs(self, ids: NDArray[np.integer], training: bool) -> NDArray[np.floating]:
        """(T, N) ids -> (T, N, I) LSTM inputs."""
        if self.embedding is not None:
            return self.embedding.forward(ids, training=training)
        return (np.asarray(ids, dtype=self.dtype) / self.dtype.type(self.vocab_size))[..., None]

    def _buffer(self, name: str, shape: tuple[int, ...]) -> NDArray[np.floating]:
        """A training pass's array, the same one from step to step (a fresh multi-megabyte
        array costs a page fault per 4 KiB on every step)."""
        buf = self._buffers.get(name)
        if buf is None or buf.shape != shape:
            buf = self._buffers[name] = np.empty(shape, self.dtype)
        return buf

    def _folds(self, training: bool) -> bool:
        """Whether this pass folds the embedding (training, on a backend that takes a projection)."""
        if not (training and self.fold_embedding and self.embedding is not None):
            return False
        from ..backends import get_backend

        return "projected" in getattr(get_backend(self.lstm.backend), "OPTIONS", ())

    def _fold_forward(self, ids: NDArray[np.integer]) -> tuple[NDArray[np.floating], NDArray[np.floating]]:
        """Layer 0's input projection by table: Tab = E . W_ih^T + b_ih + b_hh is (V, 4H),
        and row (t, n) of the projection is Tab[ids[t, n]], the same number as
        E[ids[t, n]] . W_ih^T + b (to float rounding): one (V, E) x (E, 4H) product per step
        instead of a (T*N, E) x (E, 4H) one. Returns (where the rows go, Tab): the LSTM
        reads the rows from the table (``input_rows``)."""
        assert self.embedding is not None
        V, G = self.vocab_size, 4 * self.hidden_size
        flat = ids.reshape(-1)
        if flat.size and (flat.min() < 0 or flat.max() >= V):
            raise IndexError(f"character ids must be in [0, {V}), got {flat.min()}..{flat.max()}")
        p = self.lstm.params
        tab = self.embedding.params["weight"] @ p["weight_ih_l0"].T
        tab += p["bias_ih_l0"]
        tab += p["bias_hh_l0"]
        if self._proj is None or self._proj.shape != ids.shape + (G,):
            self._proj = np.empty(ids.shape + (G,), self.dtype)
        self._fold = flat
        return self._proj, tab

    def _fold_backward(self, dtab: NDArray[np.floating]) -> None:
        """Gradients of E and W_ih_l0 from dTab, the gradient of the table (the LSTM's
        backward added the gradient of each gathered row to its id's row, ``input_rows_grad``):
        as Tab = E . W_ih^T + b, dE = dTab . W_ih and dW_ih = dTab^T . E (the biases'
        gradients, sum dP, the LSTM has already added)."""
        assert self.embedding is not None
        self._fold = None
        E, W = self.embedding.params["weight"], self.lstm.params["weight_ih_l0"]
        self.embedding.grads["weight"] += dtab @ W
        self.lstm.grads["weight_ih_l0"] += dtab.T @ E

    def forward(self, ids: ArrayLike, *, training: bool = False, last_only: bool = False,
                state: State = None) -> tuple[NDArray[np.floating], State]:
        """Logits of the next character at every step.

        Parameters
        ----------
        ids : array_like of int
            (T, N) character ids, time-major.
        training : bool, optional
            Apply dropout and keep what :meth:`loss_and_backward` needs.
        last_only : bool, optional
            Logits of the last step only.
        state : (h, c) or None, optional
            Initial LSTM state, each (L, N, H); None for zeros.

        Returns
        -------
        logits : ndarray
            (T, N, V), or (N, V) with ``last_only``.
        state : (h_n, c_n)
            The final LSTM state, each (L, N, H).

        Raises
        ------
        ValueError
            When ids is not 2-D.
        """
        ids = np.asarray(ids)
        if ids.ndim != 2:
            raise ValueError(f"ids must be 2-D (T, N), got shape {ids.shape}")
        if self._folds(training):
            proj, tab = self._fold_forward(ids)
            y, new_state = self.lstm.forward(None, state, training=True, input_projection=proj,
                                             input_rows=(tab, ids))
        else:
            self._fold = None
            y, new_state = self.lstm.forward(self._inputs(ids, training), state, training=training)
        top = y[-1] if last_only else y
        top = self.drop.forward(top, training=training,
                                out=self._buffer("dropped", top.shape) if training else None)
        self.dense.threads = self._kernel_threads()
        logits = self.dense.forward(top, training=training)
        if training:
            self._saved = (ids.shape, last_only)
        return logits, new_state

    def _scored(self, ids: ArrayLike, targets: ArrayLike, last_only: bool,
                training: bool) -> tuple[float, NDArray[np.floating], tuple[int, ...]]:
        """Forward, then the mean cross-entropy: (loss, dlogits (M, V), the logits' shape)."""
        logits, _ = self.forward(ids, training=training, last_only=last_only)
        flat = logits.reshape(-1, self.vocab_size)  # this pass's own array: the gradient goes there
        loss, dlogits = softmax_cross_entropy(flat, np.asarray(targets).reshape(-1), out=flat)
        return loss, dlogits, logits.shape

    def loss(self, ids: ArrayLike, targets: ArrayLike, *, last_only: bool = False) -> float:
        """Mean cross-entropy without dropout or gradients (evaluation).

        Parameters
        ----------
        ids : array_like of int
            (T, N) input ids.
        targets : array_like of int
            (T, N) next-character ids, or (N,) with ``last_only``.
        last_only : bool, optional
            Score the last step only.

        Returns
        -------
        float
            The loss, nats per target.
        """
        return self._scored(ids, targets, last_only, training=False)[0]

    def loss_and_backward(self, ids: ArrayLike, targets: ArrayLike, *, last_only: bool = False) -> float:
        """One training pass: forward with dropout, mean cross-entropy, backward.

        Gradients accumulate in ``grads`` (call :meth:`zero_grad` first).

        Parameters
        ----------
        ids, targets, last_only
            As for :meth:`loss`; with ``last_only`` only the last step's prediction is trained
            (the tutorial's setup).

        Returns
        -------
        float
            The loss before the update, nats per target.
        """
        loss, dlogits, shape = self._scored(ids, targets, last_only, training=True)
        dtop = self.dense.backward(dlogits.reshape(shape), out=self._buffer("dtop", shape[:-1] + (self.hidden_size,)))
        dtop = self.drop.backward(dtop, out=dtop)
        T, N = self._saved[0]
        if last_only:
            dy = np.zeros((T, N, self.hidden_size), self.dtype)
            dy[-1] = dtop
        else:
            dy = dtop
        self._saved = None
        if self._fold is not None:
            dtab = self._buffer("dtab", (self.vocab_size, 4 * self.hidden_size))
            fill_zero(dtab.reshape(-1))
            self.lstm.backward(dy, input_rows_grad=dtab)
            self._fold_backward(dtab)
            return loss
        dx, _ = self.lstm.backward(dy)
        if self.embedding is not None:
            self.embedding.backward(dx)
        return loss

    # -- generation -------------------------------------------------------------
    def _step_input(self, i: int, buf: NDArray[np.floating]) -> NDArray[np.floating]:
        if self.embedding is not None:
            return self.embedding.params["weight"][i:i + 1]  # (1, E) view: no copy
        buf[0, 0] = i / self.vocab_size
        return buf

    def warm_up(self) -> None:
        """Pay the first call's costs now: one forward and one step on a throwaway character.

        The first LSTM call of a process loads its backend (the C backend imports SciPy's BLAS,
        about 0.2 s) and allocates the step workspace; callers that time generation call this
        first. Parameters and dropout generators are left as they were; a training forward
        waiting for its backward is dropped, so do not call it between the two.
        """
        ids = np.zeros((1, 1), np.int64)
        _, state = self.lstm.forward(self._inputs(ids, False), None)
        self.lstm.step(self._step_input(0, np.empty((1, 1), self.dtype)), state)

    def step_logits(self, char_id: int, state: State = None) -> tuple[NDArray[np.floating], State]:
        """Feed one character with a carried state (one ``LSTM.step``).

        Parameters
        ----------
        char_id : int
            The character's id.
        state : (h, c) or None, optional
            The carried state, each (L, 1, H); None for zeros.

        Returns
        -------
        logits : ndarray
            (V,) logits of the next character.
        state : (h, c)
            The new state.
        """
        buf = np.empty((1, 1), self.dtype)
        h, state = self.lstm.step(self._step_input(int(char_id), buf), state)
        return (h @ self.dense.params["weight"].T + self.dense.params["bias"])[0], state

    #: Characters per call of the compiled loop: the unit of streaming (and of Ctrl-C).
    GENERATE_CHUNK = 128
    #: Characters per block of Gumbel noise drawn from each sample's generator.
    NOISE_BLOCK = 1024

    def _kernel_threads(self) -> int:
        """The threads the LSTM's kernels run on (the dense layer's products split over as many)."""
        from ..backends import get_backend

        try:
            return int(get_backend(self.lstm.backend).max_threads())
        except (ValueError, ImportError, AttributeError):
            return 1

    def _compiled_loop(self) -> Any:
        """The C backend when it runs this model's generation loop (float32), else None."""
        from ..backends import get_backend

        try:
            be = get_backend(self.lstm.backend)
        except (ValueError, ImportError):
            return None
        if getattr(be, "NAME", None) != "c" or not hasattr(be, "generate") or self.dtype != np.float32:
            return None
        return be

    def generate(self, prime_ids: ArrayLike, length: int, *, temperature: float | None = 1.0,
                 top_k: int | None = None, greedy: bool = False, seed: int | None = None,
                 rng: np.random.Generator | None = None,
                 callback: Callable[[Any], object] | None = None,
                 num_samples: int | None = None, weights: str = "float32",
                 on_chunk: Callable[[Any], object] | None = None) -> Any:
        """Continue ``prime_ids`` by ``length`` characters.

        The prime runs through one ``LSTM.forward``; then each new character is one
        ``LSTM.step`` with the carried state, one (N, H) x (H, V) product and a draw. On the
        C backend (float32) that loop runs in C, ``GENERATE_CHUNK`` characters per call,
        with the same random draws: the same text as the NumPy loop, except where two
        characters' scores are within float rounding of each other (the products sum in
        another order).

        Parameters
        ----------
        prime_ids : array_like of int
            At least one id.
        length : int
            Characters to generate.
        temperature : float or None, optional
            Divides the logits before sampling; None or <= 0 picks the argmax.
        top_k : int or None, optional
            Sample among the k likeliest characters only.
        greedy : bool, optional
            Always pick the argmax.
        seed : int or None, optional
            Seeds the draws (when ``rng`` is not given); sample k of ``num_samples``
            draws from ``seed + k``.
        rng : numpy.random.Generator or None, optional
            The generator of the draws (one sample only).
        callback : callable or None, optional
            ``callback(id)`` as each character is drawn (for streaming); with
            ``num_samples``, ``callback(ids)`` with the (K,) ids of each position.
        on_chunk : callable or None, optional
            ``on_chunk(ids)`` with the list of ids of each chunk as it is drawn (streaming in
            blocks, without a Python call per character: what ``fastlstm generate`` uses);
            with ``num_samples``, the (n, K) array of each chunk's positions.
        num_samples : int or None, optional
            K independent continuations of the prime in one pass (a batch of K):
            sample k is the text ``generate(..., seed=seed + k)`` gives, up to float
            rounding (fresh independent streams without a seed).
        weights : {"float32", "bf16"}, optional
            "bf16": the LSTM and dense weights rounded to bfloat16 (``LSTM.inference_weights``:
            not exact, products summed in float32; faster at one sample where the CPU
            kernels run). The draws are the same; the text differs from float32's where
            two characters' scores are closer than the rounding moves them.

        Returns
        -------
        list of int, or list of K lists of int with ``num_samples``
            The generated ids (without the prime).

        Raises
        ------
        ValueError
            For an empty prime, ``num_samples`` < 1, or ``rng`` with several samples.
        """
        precision = check_precision("weights", weights, self.dtype)
        prime_ids = np.asarray(prime_ids, dtype=np.int64).reshape(-1)
        if prime_ids.size == 0:
            raise ValueError("generation needs a prime of at least one character")
        K = 1 if num_samples is None else int(num_samples)
        if K < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        if rng is not None and K > 1:
            raise ValueError("rng draws one sample; give seed (sample k draws from seed + k) for several")
        length = int(length)
        V = self.vocab_size
        greedy = greedy or temperature is None or temperature <= 0
        if top_k is not None and top_k <= 0:
            top_k = None
        if top_k is not None and top_k >= V:
            top_k = None
        if rng is not None:
            rngs = [rng]
        elif seed is not None:
            rngs = [np.random.default_rng(seed + k) for k in range(K)]
        else:
            rngs = [np.random.default_rng(s) for s in np.random.SeedSequence().spawn(K)]
        dt = self.dtype
        # Sampling by the Gumbel-max trick: argmax(z / temperature + G), G ~ Gumbel(0, 1) i.i.d.,
        # is an exact draw from softmax(z / temperature). The temperature is folded into the
        # dense weights, and the noise (plus the bias) comes in blocks: per character this is
        # one (N, H) x (H, V) product, one add and one argmax.
        scale = 1.0 if greedy or temperature is None else 1.0 / float(temperature)
        WT = np.ascontiguousarray(self.dense.params["weight"].T * dt.type(scale))  # (H, V)
        if precision == "bf16":
            WT = round_bf16(WT)  # the compiled loop's packing rounds the same values
        b = (self.dense.params["bias"] * dt.type(scale)).astype(dt)
        # prime: one forward over the whole prefix; its last output and state carry on, copied
        # to each sample (so that each is the single run of its seed)
        y, state = self.lstm.forward(self._inputs(prime_ids[:, None], False), None, weights=precision)
        assert state is not None
        h_top = np.repeat(y[-1], K, axis=0)  # (K, H)
        state = (np.repeat(state[0], K, axis=1), np.repeat(state[1], K, axis=1))

        def noise_block(n: int) -> NDArray[np.floating]:
            noise = np.stack([r.gumbel(size=(n, V)) for r in rngs], axis=1).astype(dt)
            noise += b
            return noise  # (n, K, V)

        def emit(block: NDArray[np.integer]) -> None:
            # block: (n, K) ids of the positions just drawn
            if on_chunk is not None:
                on_chunk(block[:, 0].tolist() if num_samples is None else block)
            if callback is not None:
                for ids in block:
                    callback(int(ids[0]) if num_samples is None else ids)

        run = self._draw_compiled if self._compiled_loop() is not None else self._draw_numpy
        drawn = run(h_top, state, length, WT, b, greedy, top_k, noise_block, emit,
                    precision)  # (length, K)
        rows = [drawn[:, k].tolist() for k in range(K)]
        return rows[0] if num_samples is None else rows

    def _draw_numpy(self, h: Any, state: State, length: int, WT: Any, b: Any, greedy: bool,
                    top_k: int | None, noise_block: Callable[[int], Any],
                    emit: Callable[[Any], None], precision: str = "float32") -> NDArray[np.int64]:
        """The loop of :meth:`generate` in NumPy around ``LSTM.step``: (length, K) ids."""
        K, V, block = h.shape[0], self.vocab_size, self.NOISE_BLOCK
        logits = np.empty((K, V), self.dtype)
        buf = np.empty((K, 1), self.dtype)
        emb = self.embedding.params["weight"] if self.embedding is not None else None
        drawn = np.empty((length, K), np.int64)
        noise: Any = None
        for n in range(length):
            np.matmul(h, WT, out=logits)
            if greedy:
                logits += b
            else:
                k = n % block
                if k == 0:
                    noise = noise_block(min(block, length - n))
                logits += noise[k]
                if top_k is not None:  # keep the k likeliest (by logits, before the noise)
                    zk = logits - noise[k] + b
                    kth = np.partition(zk, V - top_k, axis=1)[:, V - top_k]
                    logits[zk < kth[:, None]] = -np.inf
            ids = logits.argmax(axis=1)
            drawn[n] = ids
            emit(ids[None])
            if emb is not None:
                x = emb[ids]  # (K, E)
            else:
                buf[:, 0] = ids / V
                x = buf
            h, state = self.lstm.step(x, state, weights=precision)
        return drawn

    def _draw_compiled(self, h_top: Any, state: State, length: int, WT: Any, b: Any, greedy: bool,
                       top_k: int | None, noise_block: Callable[[int], Any],
                       emit: Callable[[Any], None], precision: str = "float32") -> NDArray[np.int64]:
        """The loop of :meth:`generate` in C (csrc/lstm_generate.c), chunk by chunk, on the
        same noise blocks as the NumPy loop: (length, K) ids. With bf16 weights it runs the
        bf16 kernels, or where the build has none the float32 ones on the rounded weights."""
        assert state is not None
        be, block = self._compiled_loop(), self.NOISE_BLOCK
        snap = self.lstm._inference_snapshot("bf16", False) if precision == "bf16" else None
        weights = [self.lstm._layer_weights(k, snap) for k in range(self.num_layers)]
        bf16_kernels = snap is not None and bool(be.BF16_KERNELS)
        W_ih = [w[0] for w in weights]
        W_hh = [w[1] for w in weights]
        bias = [w[2].copy() for w in weights]  # the layer's bias buffer is rewritten per call
        emb = (np.ascontiguousarray(self.embedding.params["weight"], np.float32)
               if self.embedding is not None else None)
        h_top = np.ascontiguousarray(h_top, np.float32)
        h = np.ascontiguousarray(state[0], np.float32)
        c = np.ascontiguousarray(state[1], np.float32)
        b = np.ascontiguousarray(b, np.float32)
        drawn = np.empty((length, h_top.shape[0]), np.int64)
        if h_top.shape[0] == 1:
            inputs = emb if emb is not None else (np.arange(self.vocab_size) / self.vocab_size).astype(
                np.float32)[:, None]  # what the loop feeds back for each id
            row = be.pack_generate_row(W_ih, W_hh, bias, inputs, np.ascontiguousarray(WT.T),
                                       bf16=bf16_kernels)
            if row is not None:
                return self._draw_row(be, row, h, c, length, b, greedy, top_k, noise_block, emit, drawn)
        bf16 = None
        if bf16_kernels:
            assert snap is not None
            bf16 = ([snap.panels(be, k) for k in range(self.num_layers)],
                    be.bf16_pack(None, np.ascontiguousarray(WT.T), 1))
        # a batch steps on weights packed once for the whole generation
        packed = be.pack_generate(W_ih, W_hh) if h_top.shape[0] > 1 and bf16 is None else None
        noise: Any = None
        n = 0
        while n < length:
            k = n % block
            if not greedy and k == 0:
                noise = noise_block(min(block, length - n))
            chunk = min(self.GENERATE_CHUNK, length - n, block - k)
            ids = be.generate(W_ih, W_hh, bias, emb, WT, b, 0 if top_k is None else top_k,
                              None if greedy else noise[k:k + chunk], h_top, h, c, chunk, packed,
                              bf16)
            drawn[n:n + chunk] = ids
            emit(ids)
            n += chunk
        return drawn

    def _draw_row(self, be: Any, row: Any, h: Any, c: Any, length: int, b: Any, greedy: bool,
                  top_k: int | None, noise_block: Callable[[int], Any], emit: Callable[[Any], None],
                  drawn: NDArray[np.int64]) -> NDArray[np.int64]:
        """One sample in C on weights packed once (``pack_generate_row``: layer 0's input
        folded into a table of every id's pre-activations), one team of threads per chunk;
        the same noise blocks as the other loops. h, c: the (L, 1, H) state."""
        block = self.NOISE_BLOCK
        h1, c1 = np.ascontiguousarray(h[:, 0]), np.ascontiguousarray(c[:, 0])
        noise: Any = None
        n = 0
        while n < length:
            k = n % block
            if not greedy and k == 0:
                noise = noise_block(min(block, length - n))[:, 0]
            chunk = min(self.GENERATE_CHUNK, length - n, block - k)
            ids = be.generate_row(row, b, 0 if top_k is None else top_k,
                                  None if greedy else noise[k:k + chunk], h1, c1, chunk)
            drawn[n:n + chunk, 0] = ids
            emit(ids[:, None])
            n += chunk
        return drawn
