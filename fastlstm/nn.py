"""A small NumPy toolkit beside the LSTM, enough for the character model of the trainer:
Embedding, Dense, Dropout, numerically stable softmax cross-entropy, Adam and global
gradient-norm clipping. Each layer keeps ``params`` / ``grads`` dicts (gradients
accumulate, like ``fastlstm.LSTM``) and has paired forward/backward methods.
"""

import numpy as np

__all__ = ["Embedding", "Dense", "Dropout", "SoftmaxCrossEntropy", "Adam", "clip_grad_norm",
           "log_softmax", "softmax", "softmax_cross_entropy", "global_norm"]


def _dtype(dtype):
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise ValueError(f"dtype must be float32 or float64, got {dtype}")
    return dtype


def _rng(seed_or_rng):
    if isinstance(seed_or_rng, np.random.Generator):
        return seed_or_rng
    return np.random.default_rng(seed_or_rng)


class Embedding:
    """Row lookup ``W[ids]``: ids of any shape (ints in [0, V)) -> ids.shape + (D,).

    Initialised N(0, 1) like ``torch.nn.Embedding``. Backward scatters-adds into
    ``grads["weight"]`` (repeated ids accumulate).
    """

    def __init__(self, num_embeddings, embedding_dim, *, dtype=np.float32, seed=None):
        self.num_embeddings = int(num_embeddings)
        self.embedding_dim = int(embedding_dim)
        self.dtype = _dtype(dtype)
        rng = _rng(seed)
        W = rng.standard_normal((self.num_embeddings, self.embedding_dim)).astype(self.dtype)
        self.params = {"weight": W}
        self.grads = {"weight": np.zeros_like(W)}
        self._ids = None

    def forward(self, ids, *, training=False):
        ids = np.asarray(ids)
        if training:
            self._ids = ids
        return self.params["weight"][ids]  # fancy indexing: a fresh, contiguous array

    def backward(self, dout):
        """Accumulate dW from dout (ids.shape + (D,)); returns None (ids have no gradient)."""
        if self._ids is None:
            raise RuntimeError("Embedding.backward needs a preceding forward(..., training=True)")
        ids, self._ids = self._ids, None
        D = self.embedding_dim
        ids = ids.reshape(-1)
        dout = np.asarray(dout).reshape(-1, D)
        # scatter-add without np.add.at: sort the rows by id, sum each run of equal ids
        order = np.argsort(ids, kind="stable")
        sorted_ids = ids[order]
        starts = np.flatnonzero(np.r_[True, sorted_ids[1:] != sorted_ids[:-1]])
        self.grads["weight"][sorted_ids[starts]] += np.add.reduceat(dout[order], starts, axis=0)
        return None


class Dense:
    """Affine map ``y = x @ W.T + b`` over the last axis; W is (out, in) like ``torch.nn.Linear``.

    Initialised U(-1/sqrt(in), 1/sqrt(in)) like PyTorch. x may have any leading shape; it is
    treated as one (rows, in) matrix so the whole batch is one matrix product.
    """

    def __init__(self, in_features, out_features, *, bias=True, dtype=np.float32, seed=None):
        self.in_features = int(in_features)
        self.out_features = int(out_features)
        self.dtype = _dtype(dtype)
        rng = _rng(seed)
        k = 1.0 / np.sqrt(self.in_features)
        self.params = {"weight": rng.uniform(-k, k, (self.out_features, self.in_features)).astype(self.dtype)}
        if bias:
            self.params["bias"] = rng.uniform(-k, k, self.out_features).astype(self.dtype)
        self.grads = {name: np.zeros_like(p) for name, p in self.params.items()}
        self._x = None

    def forward(self, x, *, training=False):
        x = np.asarray(x)
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        y = x2 @ self.params["weight"].T
        if "bias" in self.params:
            y += self.params["bias"]
        if training:
            self._x = x2
        return y.reshape(lead + (self.out_features,))

    def backward(self, dy):
        """Accumulate dW, db; return dx shaped like the forward input."""
        if self._x is None:
            raise RuntimeError("Dense.backward needs a preceding forward(..., training=True)")
        x2, self._x = self._x, None
        dy = np.asarray(dy)
        dy2 = dy.reshape(-1, self.out_features)
        self.grads["weight"] += dy2.T @ x2
        if "bias" in self.params:
            self.grads["bias"] += dy2.sum(axis=0)
        dx = dy2 @ self.params["weight"]
        return dx.reshape(dy.shape[:-1] + (self.in_features,))


class Dropout:
    """Inverted dropout: in training, zero each element with probability p and scale the rest by
    1/(1-p); identity otherwise. Masks come from the layer's own seeded Generator (``rng``),
    whose ``bit_generator.state`` a checkpoint can save and restore.
    """

    def __init__(self, p=0.5, *, seed=None):
        if not 0.0 <= float(p) < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {p!r}")
        self.p = float(p)
        self.rng = _rng(seed)
        self.params, self.grads = {}, {}
        self._mask = None

    def forward(self, x, *, training=False):
        x = np.asarray(x)
        if not training or self.p == 0.0:
            self._mask = None
            return x
        # 16 random bits per element, four to a raw 64-bit draw (a quarter of the cost of
        # uniform floats): keep when >= p * 2**16, i.e. with probability 1 - p to within 2**-16.
        raw = self.rng.bit_generator.random_raw((x.size + 3) // 4)
        bits = raw.view(np.uint16)[:x.size].reshape(x.shape)
        self._mask = bits >= np.uint16(min(round(self.p * 65536), 65535))
        self._scale = x.dtype.type(1.0 / (1.0 - self.p))
        y = np.multiply(x, self._mask)
        y *= self._scale
        return y

    def backward(self, dy):
        if self._mask is None:
            return dy
        dx = np.multiply(dy, self._mask)
        dx *= self._scale
        return dx


def log_softmax(logits, axis=-1):
    """log softmax via log-sum-exp with the max subtracted: never overflows."""
    logits = np.asarray(logits)
    shifted = logits - logits.max(axis=axis, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))


def softmax(logits, axis=-1):
    """Softmax with the max subtracted first (stable for any finite logits)."""
    logits = np.asarray(logits)
    e = np.exp(logits - logits.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def softmax_cross_entropy(logits, targets):
    """Mean cross-entropy of integer targets under softmax(logits) and its gradient.

    logits: (M, V) float; targets: (M,) ints in [0, V). Returns (loss: float, dlogits (M, V)),
    with dlogits = (softmax - onehot) / M computed without building a one-hot matrix.
    """
    logits = np.asarray(logits)
    targets = np.asarray(targets).reshape(-1)
    M = logits.shape[0]
    if logits.ndim != 2 or targets.shape[0] != M:
        raise ValueError(f"logits must be (M, V) and targets (M,), got {logits.shape} and {targets.shape}")
    shifted = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(shifted)
    s = e.sum(axis=1, keepdims=True)
    rows = np.arange(M)
    # loss = mean(log s - shifted[target]); accumulate in float64 for a stable mean.
    loss = float(np.mean(np.log(s[:, 0]).astype(np.float64) - shifted[rows, targets]))
    e /= s
    e[rows, targets] -= 1
    e *= logits.dtype.type(1.0 / M)
    return loss, e


class SoftmaxCrossEntropy:
    """Layer form of :func:`softmax_cross_entropy`: forward(logits, targets) -> loss,
    backward(scale=1.0) -> dlogits (M, V)."""

    def __init__(self):
        self.params, self.grads = {}, {}
        self._dlogits = None

    def forward(self, logits, targets):
        loss, self._dlogits = softmax_cross_entropy(logits, targets)
        return loss

    def backward(self, scale=1.0):
        if self._dlogits is None:
            raise RuntimeError("SoftmaxCrossEntropy.backward needs a preceding forward")
        d, self._dlogits = self._dlogits, None
        if scale != 1.0:
            d *= d.dtype.type(scale)
        return d


def global_norm(grads):
    """sqrt of the sum of squares of every array in ``grads`` (a dict or an iterable)."""
    arrays = grads.values() if isinstance(grads, dict) else grads
    total = 0.0
    for g in arrays:
        g1 = g.reshape(-1)
        total += float(np.dot(g1, g1))
    return float(np.sqrt(total))


def clip_grad_norm(grads, max_norm):
    """Scale every gradient in place so that their global L2 norm is at most ``max_norm``.

    Returns the norm before clipping (like ``torch.nn.utils.clip_grad_norm_``).
    ``max_norm`` None or <= 0 disables clipping (the norm is still returned).
    """
    norm = global_norm(grads)
    if max_norm is not None and max_norm > 0 and norm > max_norm:
        scale = max_norm / (norm + 1e-6)
        for g in (grads.values() if isinstance(grads, dict) else grads):
            g *= g.dtype.type(scale)
    return norm


class Adam:
    """Adam (Kingma & Ba) with PyTorch's update rule, on a dict of named parameter arrays
    updated in place.

    ``state_arrays()`` / ``scalars()`` export the moments (arrays, for an ``.npz``) and the
    step count and hyper-parameters (JSON-serialisable); ``load_state()`` puts them back so
    that a resumed run takes exactly the same steps.
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        self.params = params
        self.lr = float(lr)
        self.beta1, self.beta2 = float(betas[0]), float(betas[1])
        self.eps = float(eps)
        self.weight_decay = float(weight_decay)
        self.t = 0
        self.m = {k: np.zeros_like(p) for k, p in params.items()}
        self.v = {k: np.zeros_like(p) for k, p in params.items()}
        self._tmp = {k: np.empty_like(p) for k, p in params.items()}

    def step(self, grads):
        """One update from ``grads`` (same keys as params). Gradients are left unchanged."""
        self.t += 1
        b1, b2 = self.beta1, self.beta2
        bc1 = 1.0 - b1 ** self.t
        bc2 = 1.0 - b2 ** self.t
        # p -= lr/bc1 * m / (sqrt(v)/sqrt(bc2) + eps) == a * m / (sqrt(v) + e), folded so
        # that every array pass below is one ufunc call into a preallocated buffer.
        a = self.lr / bc1 * np.sqrt(bc2)
        e = self.eps * np.sqrt(bc2)
        for k, p in self.params.items():
            g = grads[k]
            if self.weight_decay:
                g = g + p.dtype.type(self.weight_decay) * p
            dt = p.dtype.type
            m, v, tmp = self.m[k], self.v[k], self._tmp[k]
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

    def scalars(self):
        """JSON-serialisable scalars: step count and hyper-parameters."""
        return {"t": self.t, "lr": self.lr, "betas": [self.beta1, self.beta2], "eps": self.eps,
                "weight_decay": self.weight_decay}

    def state_arrays(self, prefix="adam."):
        """The moments as a flat dict of arrays: ``{prefix}m.<name>`` and ``{prefix}v.<name>``."""
        out = {}
        for k in self.params:
            out[f"{prefix}m.{k}"] = self.m[k]
            out[f"{prefix}v.{k}"] = self.v[k]
        return out

    def load_state(self, arrays, scalars, prefix="adam.", keep_hyperparameters=False):
        """Restore from ``state_arrays()`` / ``scalars()`` output (all checked before any change).

        With ``keep_hyperparameters`` only the step count and moments are restored, and the
        current lr, betas, eps and weight decay stay.
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
