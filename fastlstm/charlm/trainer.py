"""The Trainer: one run's model, Adam, data sampler and every generator state, with one training
step, validation, a sample, and its checkpoint state (written and restored exactly, so that a
resumed run takes the same steps). With a ``parallel.Group`` each rank computes its rows of every
global batch and the ranks average their gradients (the same steps as one process, to rounding).
The run loop (run.py) drives it; benchmarks call it directly.
"""

import math
import threading
import time
from pathlib import Path

import numpy as np

from .. import __version__
from .._dropout import batch_rows
from .checkpoints import FORMAT, FORMAT_VERSION, CheckpointError, copy_checkpoint, model_arrays, save_checkpoint
from .data import DataError, Vocab, split_train_val
from .model import CharModel
from .nn import Adam, clip_grad_norm
from .options import PLATEAU_FACTOR

__all__ = ["MAX_VAL_TARGETS", "VAL_BATCH", "Trainer"]

#: Validation uses at most about this many targets (evenly spaced windows of the held-out text).
MAX_VAL_TARGETS = 50_000
#: ...and at most this many windows per forward pass.
VAL_BATCH = 256


class Trainer:
    """Holds the model, optimizer, data and all RNG state of one run.

    Every random draw comes from a generator whose state the checkpoint keeps (the data
    sampler here, the two dropout generators in the model), so ``resume`` continues exactly.
    """

    def __init__(self, opts, text, vocab=None, *, out=None, source=None, group=None):
        self.opts = opts
        self.group = group  # a parallel.Group when several ranks share each batch, else None
        if group is not None and opts["batch_size"] % group.size:
            raise DataError(f"--batch-size is the global batch, split evenly over the ranks: "
                            f"{opts['batch_size']} is not a multiple of the {group.size} ranks; "
                            f"use a multiple of {group.size} or another number of ranks")
        self.out = Path(out) if out is not None else None
        self.source = source
        self.vocab = vocab if vocab is not None else Vocab.from_text(text)
        unknown = self.vocab.unknown(text)
        if unknown:
            raise CheckpointError(f"the text has characters that are not in the checkpoint's vocabulary "
                                  f"({_show_chars(unknown)}): resume with the text it was trained on, "
                                  f"or start a new run with another --out (or --overwrite)")
        ids = self.vocab.encode(text)
        self.train_ids, self.val_ids = split_train_val(ids, opts["val_fraction"])
        T = opts["seq_len"]
        self.last_only = opts["target"] == "last"
        need = T + 1
        if len(self.train_ids) < need:
            raise DataError(f"the training text is too short: {len(self.train_ids)} characters after holding out "
                            f"the last {opts['val_fraction']:.0%} for validation, but one window needs {need} "
                            f"(--seq-len {T} + 1): use a longer text or a smaller --seq-len")
        if len(self.val_ids) < 2:
            raise DataError(f"the held-out text is too short ({len(self.val_ids)} characters): "
                            f"use a longer text")
        self.dtype = np.dtype(opts["dtype"])
        self.model = CharModel(len(self.vocab), opts["hidden_size"], opts["num_layers"], opts["dropout"],
                               opts["embed_dim"], opts["input_mode"], seed=opts["seed"], dtype=self.dtype,
                               backend=opts["backend"])
        self.adam = Adam(self.model.params, lr=opts["lr"])
        self.data_rng = np.random.default_rng(np.random.SeedSequence([opts["seed"], 1]))
        N = opts["batch_size"]
        # "last": window [o, o+T) predicts ids[o+T]; "all": window [o, o+T] predicts ids[o+1 : o+T+1]
        self.n_windows = len(self.train_ids) - T
        if self.last_only:
            self.steps_per_epoch = max(1, math.ceil(self.n_windows / N))
        else:
            self.steps_per_epoch = max(1, math.ceil((len(self.train_ids) - 1) / (T * N)))
        self.order = None  # the tutorial's per-epoch shuffle of window offsets
        self.steps_done = 0  # over all sessions; a checkpoint stores it as "step"
        self.elapsed = 0.0  # training seconds over all sessions
        self.chars_seen = 0
        self.val_history = []
        self.lr_scale = 1.0  # the schedule's factor on --lr
        self.plateau_bad = 0  # validations in a row without a new best, since the last decay
        self.updating = False
        #: Held while the parameters and counters change, and while a checkpoint is written
        #: (a signal handler's thread may write one in the middle of a step).
        self.state_lock = threading.Lock()
        self._before_step = None  # the generators' states before the step in progress
        self._pieces = None  # where each layer's gradients lie in the flat buffer (_gradient_pieces)
        self._arange = np.arange(T + 1)[:, None]
        self.val_batches = self._val_windows()  # [(ids, targets)], fixed for the run

    # -- data ------------------------------------------------------------------
    def batch(self):
        """The next (ids (T, N), targets) minibatch; advances the sampler."""
        T, N = self.opts["seq_len"], self.opts["batch_size"]
        data = self.train_ids
        if self.last_only:
            pos = self.steps_done % self.steps_per_epoch
            if pos == 0 or self.order is None:
                self.order = self.data_rng.permutation(self.n_windows)
            offsets = self.order[pos * N:(pos + 1) * N]
            idx = offsets[None, :] + self._arange[:T]
            return data[idx], data[offsets + T]
        offsets = self.data_rng.integers(0, self.n_windows, N)
        idx = offsets[None, :] + self._arange
        w = data[idx]
        return w[:-1], w[1:]

    def _val_windows(self):
        T = self.opts["seq_len"]
        v = self.val_ids
        if self.last_only:
            n = max(len(v) - T, 0)
            if n == 0:  # held-out text shorter than a window: predict each of its characters
                return [(v[:-1][:, None][-T:], v[-1:])]
            starts = np.unique(np.linspace(0, n - 1, min(n, MAX_VAL_TARGETS // 25)).astype(np.int64))
            ids = v[starts[None, :] + np.arange(T)[:, None]]
            tg = v[starts + T]
            return [(ids[:, i:i + VAL_BATCH], tg[i:i + VAL_BATCH]) for i in range(0, len(starts), VAL_BATCH)]
        n = (len(v) - 1) // T
        if n == 0:
            return [(v[:-1][:, None], v[1:][:, None])]
        starts = np.unique(np.linspace(0, n - 1, min(n, max(1, MAX_VAL_TARGETS // T))).astype(np.int64)) * T
        idx = starts[None, :] + np.arange(T + 1)[:, None]
        w = v[idx]
        return [(w[:-1, i:i + VAL_BATCH], w[1:, i:i + VAL_BATCH]) for i in range(0, len(starts), VAL_BATCH)]

    # -- one step, evaluation, sample ----------------------------------------------
    @property
    def is_root(self):
        """Whether this process writes the run's files (always, without a Group)."""
        return self.group is None or self.group.is_root

    def train_step(self):
        """One minibatch: forward, backward (with a Group: this rank's rows, then the ranks'
        averaged gradients), clip, Adam. Returns the loss of the whole batch."""
        m = self.model
        self._before_step = (self.data_rng.bit_generator.state, m.rng_states(), self.order)
        x, y = self.batch()
        m.zero_grad()
        if self.group is None:
            loss = m.loss_and_backward(x, y, last_only=self.last_only)
        else:
            loss = self._rank_share(x, y)
        with self.state_lock:
            self.updating = True  # parameters and counters change together
            if self.opts["clip"]:
                clip_grad_norm(m.grads, self.opts["clip"])
            self.adam.step(m.grads)
            self.steps_done += 1
            self.chars_seen += x.size
            self._before_step = None
            self.updating = False
        return loss

    def _rank_share(self, x, y):
        """This rank's rows of the batch: loss and gradients weighted by its share of the
        targets, summed over the ranks (one Allreduce of the flat gradient buffer). The
        dropout masks are this rank's rows of the ones the whole batch would draw."""
        g, m = self.group, self.model
        n = x.shape[1]
        start, stop = g.rows(n)
        weight = (stop - start) / n
        flat = m.flat_grads
        pieces = self._gradient_pieces()

        def reduce_layer(layer):  # its gradients (and all above it) are final: reduce them now
            if layer in pieces:
                g.start_average(flat[pieces[layer]], weight)

        m.lstm._after_layer_backward = reduce_layer
        try:
            with batch_rows(start, stop, n):  # a last, short batch may leave a rank no rows: it adds 0
                part = m.loss_and_backward(x[:, start:stop], y[..., start:stop], last_only=self.last_only)
        finally:
            m.lstm._after_layer_backward = None
        g.start_average(flat[:pieces["rest"]], weight)  # layer 0 (and the embedding folded into it)
        g.wait()
        return g.sum(part * weight)[0]

    def _gradient_pieces(self):
        """Where each LSTM layer k >= 1's gradients lie in the flat buffer (slice; the top
        layer's reaches the end, so holds the dense layer's too), and "rest": the end of
        everything below layer 1 (layer 0, whose input weights get the folded embedding's
        gradient after the LSTM's backward, and the embedding)."""
        if self._pieces is None:
            m = self.model
            flat = m.flat_grads
            base = flat.__array_interface__["data"][0]

            def offset(name):
                return (m.grads[name].__array_interface__["data"][0] - base) // flat.itemsize

            L = m.num_layers
            starts = [offset(f"lstm.weight_ih_l{k}") for k in range(1, L)] + [flat.size]
            pieces = {k: slice(starts[k - 1], starts[k] if k < L - 1 else flat.size) for k in range(1, L)}
            pieces["rest"] = starts[0]
            self._pieces = pieces
        return self._pieces

    def undo_step(self):
        """Put the generators back as they were before an interrupted step (its update not begun)."""
        if self._before_step is not None:
            data, model_rngs, self.order = self._before_step
            self.data_rng.bit_generator.state = data
            self.model.set_rng_states(model_rngs)
            self._before_step = None

    def sync_parameters(self):
        """Make every rank's parameters the root's (they agree to rounding already: this keeps
        the ranks from drifting apart over a long run)."""
        if self.group is not None:
            with self.state_lock:
                self.group.broadcast_array(self.model.flat_params)
                self.model.lstm._parameters_loaded()

    def evaluate(self):
        """Mean cross-entropy (nats per character) over the held-out windows."""
        g = self.group
        total, count = 0.0, 0
        for ids, tg in self.val_batches if g is None else self.val_batches[g.rank::g.size]:
            n = tg.size
            total += self.model.loss(ids, tg, last_only=self.last_only) * n
            count += n
        if g is not None:  # each rank scored every size-th batch
            total, count = g.sum(total, count)
        return total / count

    def sample(self, length=None, prime=None):
        """A short generated text (seeded by the run's seed and the step: reproducible and
        independent of the training generators)."""
        length = self.opts["sample_length"] if length is None else length
        if prime is None:
            prime = "\n" if "\n" in self.vocab.index else self.vocab.chars[0]
        ids = self.model.generate(self.vocab.encode(prime), length, temperature=self.opts["temperature"],
                                  greedy=self.opts["greedy"],
                                  rng=np.random.default_rng([self.opts["seed"], 2, self.steps_done]))
        return self.vocab.decode(ids)

    @property
    def epoch(self):
        return self.steps_done / self.steps_per_epoch

    # -- schedule and early stopping -------------------------------------------------
    def after_validation(self, improved):
        """Move the learning-rate schedule on after a validation: with "plateau", halve the
        rate after --lr-patience validations in a row without a new best."""
        if self.opts["lr_schedule"] != "plateau":
            return
        if improved:
            self.plateau_bad = 0
            return
        self.plateau_bad += 1
        if self.plateau_bad >= self.opts["lr_patience"]:
            self.lr_scale *= PLATEAU_FACTOR
            self.plateau_bad = 0
        self.adam.lr = self.opts["lr"] * self.lr_scale

    def scheduled_validations(self):
        """The validations at the --eval-every cadence: the only ones that move the schedule
        and count for --patience (the one that ends a session off the cadence would make a
        resumed run differ from an uninterrupted one)."""
        return [r for r in self.val_history if not r.get("off_cadence")]

    def validations_since_best(self):
        """Scheduled validations after the one with the lowest loss (0 when the last is the best)."""
        h = self.scheduled_validations()
        if not h:
            return 0
        best = min(range(len(h)), key=lambda i: (h[i]["val_loss"], i))
        return len(h) - 1 - best

    def should_stop(self):
        """Early stopping: --patience validations in a row without a new best."""
        p = self.opts["patience"]
        return bool(p) and self.validations_since_best() >= p

    # -- checkpoints ---------------------------------------------------------------
    def state(self):
        """(arrays, meta) of a checkpoint of the current state (steps_done under the key "step");
        in the middle of a step, of the state before it (its update not begun: the lock)."""
        if self._before_step is not None:
            data_rng, model_rngs, order = self._before_step
        else:
            data_rng, model_rngs, order = self.data_rng.bit_generator.state, self.model.rng_states(), self.order
        arrays = {"model." + k: v for k, v in self.model.params.items()}
        arrays.update(self.adam.state_arrays(prefix="adam."))
        if order is not None:
            arrays["sampler.order"] = order
        meta = {
            "format": FORMAT, "format_version": FORMAT_VERSION, "fastlstm_version": __version__,
            "options": self.opts, "vocab": self.vocab.chars, "source": self.source,
            "model": self.model.config(), "step": self.steps_done, "epoch": self.epoch,
            "steps_per_epoch": self.steps_per_epoch, "elapsed": self.elapsed,
            "chars_seen": self.chars_seen, "optimizer": self.adam.scalars(),
            "rng": {"data": data_rng, **model_rngs},
            "ranks": 1 if self.group is None else self.group.size,
            "val_history": self.val_history,
            "schedule": {"lr_scale": self.lr_scale, "plateau_bad": self.plateau_bad},
            "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        return arrays, meta

    def save(self, best=False):
        """Write the checkpoint (and, with ``best``, the same state as the best one too); with
        a Group, the root alone writes. Returns the step saved, or None where nothing was written."""
        if not self.is_root:
            return None
        with self.state_lock:
            arrays, meta = self.state()
            meta = save_checkpoint(self.out, arrays, meta)
            if best:
                copy_checkpoint(self.out, meta, "best")
        return meta["step"]

    def load_state(self, meta, arrays):
        """Restore parameters, optimizer, counters and every generator from a checkpoint."""
        if list(meta["vocab"]) != self.vocab.chars:
            raise CheckpointError("the checkpoint's vocabulary differs from the text's: resume with the "
                                  "text it was trained on")
        cfg = self.model.config()
        if {k: meta["model"].get(k) for k in cfg if k != "dropout"} != {k: v for k, v in cfg.items() if k != "dropout"}:
            raise CheckpointError(f"the checkpoint's model {meta['model']} differs from the options' {cfg}: "
                                  f"drop the size options to resume, or start a new run with another --out")
        try:
            self.model.load_state_dict(model_arrays(arrays))
            self.adam.load_state(arrays, meta["optimizer"], prefix="adam.", keep_hyperparameters=True)
            self.model.set_rng_states(meta["rng"])
            self.data_rng.bit_generator.state = meta["rng"]["data"]
        except (KeyError, ValueError, TypeError) as e:
            raise CheckpointError(f"the checkpoint does not fit the model ({e}): it is corrupt or from "
                                  f"other options: start a new run with another --out") from None
        self.order = arrays.get("sampler.order")
        self.steps_done = int(meta["step"])
        self.elapsed = float(meta.get("elapsed", 0.0))
        self.chars_seen = int(meta.get("chars_seen", 0))
        self.val_history = list(meta.get("val_history", []))
        schedule = meta.get("schedule", {})  # checkpoints before schedules: the constant rate
        self.lr_scale = float(schedule.get("lr_scale", 1.0))
        self.plateau_bad = int(schedule.get("plateau_bad", 0))
        self.adam.lr = self.opts["lr"] * self.lr_scale


def _show_chars(chars, limit=12):
    shown = ", ".join(repr(c) for c in chars[:limit])
    return shown + (f" and {len(chars) - limit} more" if len(chars) > limit else "")
