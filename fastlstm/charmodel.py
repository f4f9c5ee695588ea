"""The character-level language model of the trainer: characters in (an embedding, or the
tutorial's scaled integers), a multi-layer ``fastlstm.LSTM`` with dropout between layers,
dropout, a dense layer to V logits, softmax. Time-major throughout: ids are (T, N).
``generate`` carries the LSTM state with ``LSTM.step``: n characters cost n steps.
"""

import numpy as np

from .layer import LSTM
from .nn import Dense, Dropout, Embedding, softmax_cross_entropy

__all__ = ["CharModel", "INPUT_MODES"]

#: "embedding": a learned (V, E) table; "scaled": one feature, id / V (the tutorial's input).
INPUT_MODES = ("embedding", "scaled")


class CharModel:
    """Embedding (or scaled ids) -> LSTM(H) x L (dropout between) -> Dropout -> Dense(V).

    Parameters
    ----------
    vocab_size : int
        V.
    hidden_size, num_layers : int
        H and L of the LSTM.
    dropout : float
        Dropout after every LSTM layer (between layers inside ``fastlstm.LSTM``, and after
        the last one here), as the tutorial's LSTM -> Dropout -> LSTM -> Dropout.
    embed_dim : int
        E, the embedding width (input_mode "embedding").
    input_mode : "embedding" or "scaled"
    seed : int
        Seeds every initialisation and both dropout generators (independent streams).
    """

    def __init__(self, vocab_size, hidden_size=300, num_layers=2, dropout=0.2, embed_dim=64,
                 input_mode="embedding", *, seed=0, dtype=np.float32, backend="auto"):
        if input_mode not in INPUT_MODES:
            raise ValueError(f"input_mode must be one of {', '.join(INPUT_MODES)}, got {input_mode!r}")
        self.vocab_size = int(vocab_size)
        self.hidden_size = int(hidden_size)
        self.num_layers = int(num_layers)
        self.dropout = float(dropout)
        self.embed_dim = int(embed_dim)
        self.input_mode = input_mode
        self.dtype = np.dtype(dtype)
        seeds = np.random.SeedSequence(seed).generate_state(4)
        V, H = self.vocab_size, self.hidden_size
        if input_mode == "embedding":
            self.embedding = Embedding(V, self.embed_dim, dtype=self.dtype, seed=int(seeds[0]))
            I = self.embed_dim
        else:
            self.embedding = None
            I = 1
        self.lstm = LSTM(I, H, self.num_layers, dropout=self.dropout if self.num_layers > 1 else 0.0,
                         dtype=self.dtype, backend=backend, seed=int(seeds[1]))
        self.drop = Dropout(self.dropout, seed=int(seeds[2]))
        self.dense = Dense(H, V, dtype=self.dtype, seed=int(seeds[3]))
        self._parts = [("lstm.", self.lstm), ("dense.", self.dense)]
        if self.embedding is not None:
            self._parts.insert(0, ("embedding.", self.embedding))
        self.params = {p + k: v for p, part in self._parts for k, v in part.params.items()}
        self.grads = {p + k: v for p, part in self._parts for k, v in part.grads.items()}
        self._saved = None

    # -- configuration, parameters, RNG state -------------------------------
    def config(self):
        """The constructor's size arguments (JSON-serialisable)."""
        return dict(vocab_size=self.vocab_size, hidden_size=self.hidden_size,
                    num_layers=self.num_layers, dropout=self.dropout, embed_dim=self.embed_dim,
                    input_mode=self.input_mode)

    def zero_grad(self):
        for g in self.grads.values():
            g[...] = 0

    def state_dict(self):
        """Copies of every parameter, by dotted name (``lstm.weight_ih_l0``, ``dense.bias``...)."""
        return {k: v.copy() for k, v in self.params.items()}

    def load_state_dict(self, state):
        """Copy parameters in; every name and shape is checked before anything changes."""
        missing = [k for k in self.params if k not in state]
        extra = [k for k in state if k not in self.params]
        if missing or extra:
            raise KeyError(f"parameters do not match the model: missing {missing}, unexpected {extra}")
        for k, p in self.params.items():
            if np.shape(state[k]) != p.shape:
                raise ValueError(f"parameter {k} has shape {np.shape(state[k])}, the model needs {p.shape}")
        for k, p in self.params.items():
            p[...] = state[k]

    def rng_states(self):
        """The dropout generators' states (JSON-serialisable dicts)."""
        return {"lstm_dropout": self.lstm._rng.bit_generator.state,
                "dropout": self.drop.rng.bit_generator.state}

    def set_rng_states(self, states):
        self.lstm._rng.bit_generator.state = states["lstm_dropout"]
        self.drop.rng.bit_generator.state = states["dropout"]

    # -- training -------------------------------------------------------------
    def _inputs(self, ids, training):
        """(T, N) ids -> (T, N, I) LSTM inputs."""
        if self.embedding is not None:
            return self.embedding.forward(ids, training=training)
        return (np.asarray(ids, dtype=self.dtype) / self.dtype.type(self.vocab_size))[..., None]

    def forward(self, ids, *, training=False, last_only=False, state=None):
        """Logits for (T, N) ids: (T, N, V), or (N, V) for the last step only with ``last_only``.

        Returns (logits, (h_n, c_n)).
        """
        ids = np.asarray(ids)
        if ids.ndim != 2:
            raise ValueError(f"ids must be 2-D (T, N), got shape {ids.shape}")
        y, new_state = self.lstm.forward(self._inputs(ids, training), state, training=training)
        top = y[-1] if last_only else y
        top = self.drop.forward(top, training=training)
        logits = self.dense.forward(top, training=training)
        if training:
            self._saved = (ids.shape, last_only)
        return logits, new_state

    def loss_and_backward(self, ids, targets, *, last_only=False):
        """One training pass: forward, mean cross-entropy, backward. Gradients accumulate
        in ``grads`` (call ``zero_grad`` first). ``targets`` is (T, N), or (N,) with last_only.
        Returns the loss (a float, nats per target).
        """
        logits, _ = self.forward(ids, training=True, last_only=last_only)
        V = self.vocab_size
        loss, dlogits = softmax_cross_entropy(logits.reshape(-1, V), np.asarray(targets).reshape(-1))
        dtop = self.dense.backward(dlogits.reshape(logits.shape))
        dtop = self.drop.backward(dtop)
        T, N = self._saved[0]
        if last_only:
            dy = np.zeros((T, N, self.hidden_size), self.dtype)
            dy[-1] = dtop
        else:
            dy = dtop
        self._saved = None
        dx, _ = self.lstm.backward(dy)
        if self.embedding is not None:
            self.embedding.backward(dx)
        return loss

    def loss(self, ids, targets, *, last_only=False):
        """Mean cross-entropy without dropout or gradients (evaluation)."""
        logits, _ = self.forward(ids, training=False, last_only=last_only)
        loss, _ = softmax_cross_entropy(logits.reshape(-1, self.vocab_size), np.asarray(targets).reshape(-1))
        return loss

    # -- generation -------------------------------------------------------------
    def _step_input(self, i, buf):
        if self.embedding is not None:
            return self.embedding.params["weight"][i:i + 1]  # (1, E) view: no copy
        buf[0, 0] = i / self.vocab_size
        return buf

    def step_logits(self, char_id, state=None):
        """Feed one character with a carried state: returns ((V,) logits, new state)."""
        buf = np.empty((1, 1), self.dtype)
        h, state = self.lstm.step(self._step_input(int(char_id), buf), state)
        return (h @ self.dense.params["weight"].T + self.dense.params["bias"])[0], state

    def generate(self, prime_ids, length, *, temperature=1.0, top_k=None, greedy=False, seed=None,
                 rng=None, callback=None):
        """Continue ``prime_ids`` (at least one id) by ``length`` characters.

        The prime runs through one ``LSTM.forward``; then each new character is one
        ``LSTM.step`` with the carried state, one (1, H) x (H, V) product and a draw.
        ``temperature`` <= 0 or ``greedy`` picks the argmax; ``top_k`` keeps the k likeliest.
        ``callback(id)`` is called as each character is drawn (for streaming).
        Returns the list of generated ids.
        """
        prime_ids = np.asarray(prime_ids, dtype=np.int64).reshape(-1)
        if prime_ids.size == 0:
            raise ValueError("generation needs a prime of at least one character")
        length = int(length)
        V = self.vocab_size
        greedy = greedy or temperature is None or temperature <= 0
        if top_k is not None and top_k <= 0:
            top_k = None
        if top_k is not None and top_k >= V:
            top_k = None
        if rng is None:
            rng = np.random.default_rng(seed)
        dt = self.dtype
        # Sampling by the Gumbel-max trick: argmax(z / temperature + G), G ~ Gumbel(0, 1) i.i.d.,
        # is an exact draw from softmax(z / temperature). The temperature is folded into the
        # dense weights, and the noise (plus the bias) comes in blocks: per character this is
        # one (1, H) x (H, V) product, one add and one argmax.
        scale = 1.0 if greedy else 1.0 / float(temperature)
        WT = np.ascontiguousarray(self.dense.params["weight"].T * dt.type(scale))  # (H, V)
        b = (self.dense.params["bias"] * dt.type(scale)).astype(dt)
        block = 1024
        # prime: one forward over the whole prefix; its last output and state carry on
        y, state = self.lstm.forward(self._inputs(prime_ids[:, None], False), None)
        h = y[-1]  # (1, H)
        logits = np.empty((1, V), dt)
        z = logits[0]
        buf = np.empty((1, 1), dt)
        step = self.lstm.step
        emb = self.embedding.params["weight"] if self.embedding is not None else None
        out = []
        append = out.append
        noise = None
        for n in range(length):
            np.matmul(h, WT, out=logits)
            if greedy:
                z += b
            else:
                k = n % block
                if k == 0:
                    noise = rng.gumbel(size=(min(block, length - n), V)).astype(dt)
                    noise += b
                z += noise[k]
                if top_k is not None:  # keep the k likeliest (by logits, before the noise)
                    zk = z - noise[k] + b
                    z[zk < np.partition(zk, V - top_k)[V - top_k]] = -np.inf
            i = int(z.argmax())
            append(i)
            if callback is not None:
                callback(i)
            if emb is not None:
                x = emb[i:i + 1]  # (1, E) view: no copy
            else:
                buf[0, 0] = i / V
                x = buf
            h, state = step(x, state)
        return out
