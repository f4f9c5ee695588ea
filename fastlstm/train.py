"""The training loop of the character model: options and presets, minibatches of windows at
random offsets, Adam, validation with a sample, a JSON-lines metrics log, a loss-curve PNG,
atomic checkpoints (.npz arrays + JSON metadata) and exact resume, Ctrl-C that saves.
``fastlstm train`` (cli.py) is a thin layer over :func:`run_training`; tests call it directly.
"""

import contextlib
import json
import math
import os
import signal
import sys
import threading
import time
import zipfile
from pathlib import Path

import numpy as np

from . import __version__
from .charmodel import INPUT_MODES, CharModel
from .data import DataError, Vocab, atomic_write, load_corpus, split_train_val
from .data import _sha256_file as _sha256
from .nn import Adam, clip_grad_norm

__all__ = ["DEFAULTS", "PRESETS", "TARGETS", "Trainer", "run_training", "resolve_options",
           "load_checkpoint", "save_checkpoint", "find_checkpoint", "CheckpointError",
           "CHECKPOINT_JSON", "CHECKPOINT_NPZ", "BEST_JSON", "METRICS_FILE", "PLOT_FILE"]

CHECKPOINT_JSON = "checkpoint.json"
CHECKPOINT_NPZ = "checkpoint.npz"
#: The checkpoint of the lowest validation loss so far (what ``fastlstm generate`` uses).
BEST_JSON = "best.json"
BEST_NPZ = "best.npz"
METRICS_FILE = "metrics.jsonl"
PLOT_FILE = "loss.png"
FORMAT = "fastlstm-charmodel"
FORMAT_VERSION = 1

#: "all": every position of a window predicts its next character; "last": one target per
#: window, the character after it (the tutorial).
TARGETS = ("all", "last")

#: Built-in defaults of ``fastlstm train``, chosen to train the Macbeth model well and fast.
DEFAULTS = dict(
    text=None, corpus="macbeth", encoding="utf-8", lowercase=False, preset="default",
    hidden_size=300, num_layers=2, dropout=0.2, embed_dim=64, input_mode="embedding",
    seq_len=100, target="all", batch_size=64, lr=4e-3, clip=5.0,
    epochs=None, max_time=None, max_steps=None,
    eval_every=50, sample_length=200, temperature=0.8, greedy=False,
    seed=0, val_fraction=0.1, dtype="float32", backend="auto",
)

#: Presets override the defaults (explicit options override presets).
PRESETS = {
    "default": {},
    # The classic Keras tutorial: lower-case text, 50-character windows with one target each,
    # the character index scaled to [0, 1) as the one input feature, batch 30, Keras' Adam
    # (lr 1e-3), no clipping, argmax generation.
    "tutorial": dict(lowercase=True, seq_len=50, target="last", input_mode="scaled", batch_size=30,
                     lr=1e-3, clip=0.0, greedy=True),
}

#: Options that fix the model's shapes: a resumed run cannot change them.
SHAPE_OPTIONS = ("hidden_size", "num_layers", "embed_dim", "input_mode", "target", "lowercase", "dtype")

#: Command-line flags of options whose flag is not simply --name-with-dashes.
FLAGS = {"num_layers": "--layers", "input_mode": "--input"}


def flag(name):
    """The command-line flag of an option name."""
    return FLAGS.get(name, "--" + name.replace("_", "-"))


#: Options that say when to stop: never inherited from a checkpoint.
DURATION = ("epochs", "max_time", "max_steps")

#: Without --epochs, --max-time or --max-steps, train this many epochs.
DEFAULT_EPOCHS = 20

#: Validation uses at most about this many targets (evenly spaced windows of the held-out text).
MAX_VAL_TARGETS = 50_000
#: ...and at most this many windows per forward pass.
VAL_BATCH = 256


class CheckpointError(DataError):
    """A checkpoint that cannot be used (missing, corrupt, truncated or incompatible)."""


# --------------------------------------------------------------------------- options
def resolve_options(given, checkpoint_options=None):
    """Merge options: explicit (not None) > checkpoint (on resume) > preset > DEFAULTS.

    On resume, an explicit option that changes the model's shape raises CheckpointError.
    Returns a complete options dict.
    """
    given = {k: v for k, v in given.items() if v is not None}
    unknown = set(given) - set(DEFAULTS)
    if unknown:
        raise ValueError(f"unknown options: {', '.join(sorted(unknown))}")
    if checkpoint_options is not None:
        opts = dict(DEFAULTS)
        # everything but the duration carries over: a resumed run stops by its own command line
        opts.update({k: v for k, v in checkpoint_options.items() if k in DEFAULTS and k not in DURATION})
        if "preset" in given and given["preset"] != opts["preset"]:
            raise CheckpointError(f"the checkpoint was trained with --preset {opts['preset']}, "
                                  f"not {given['preset']}: drop --preset, or start a new run with "
                                  f"another --out (or --overwrite)")
        for k in SHAPE_OPTIONS:
            if k in given and given[k] != opts[k]:
                raise CheckpointError(f"the checkpoint has {flag(k)} {_fmt(opts[k])} but the command asks for "
                                      f"{_fmt(given[k])}: drop {flag(k)} to resume, or start a new run with "
                                      f"another --out (or --overwrite)")
        opts.update(given)
    else:
        preset = given.get("preset", DEFAULTS["preset"])
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}: choose one of {', '.join(PRESETS)}")
        opts = dict(DEFAULTS)
        opts.update(PRESETS[preset])
        opts.update(given)
    _check_options(opts)
    return opts


def _fmt(v):
    return str(v).lower() if isinstance(v, bool) else str(v)


def _check_options(o):
    def positive(name, integer=True):
        v = o[name]
        if v is None:
            return
        if (integer and (not isinstance(v, (int, np.integer)) or isinstance(v, bool))) or v <= 0:
            kind = "a positive integer" if integer else "a positive number"
            raise ValueError(f"{flag(name)} must be {kind}, got {v!r}")
    for name in ("hidden_size", "num_layers", "embed_dim", "seq_len", "batch_size", "eval_every"):
        positive(name)
    for name in ("epochs", "max_steps"):
        positive(name)
    positive("max_time", integer=False)
    positive("lr", integer=False)
    if not 0.0 <= o["dropout"] < 1.0:
        raise ValueError(f"--dropout must be in [0, 1), got {o['dropout']}")
    if o["clip"] is not None and o["clip"] < 0:
        raise ValueError(f"--clip must be >= 0 (0 disables clipping), got {o['clip']}")
    if o["input_mode"] not in INPUT_MODES:
        raise ValueError(f"--input must be one of {', '.join(INPUT_MODES)}, got {o['input_mode']!r}")
    if o["target"] not in TARGETS:
        raise ValueError(f"--target must be one of {', '.join(TARGETS)}, got {o['target']!r}")
    if o["dtype"] not in ("float32", "float64"):
        raise ValueError(f"--dtype must be float32 or float64, got {o['dtype']!r}")
    if not 0.0 < o["val_fraction"] < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {o['val_fraction']}")
    if o["sample_length"] is not None and o["sample_length"] < 0:
        raise ValueError(f"--sample-length must be >= 0, got {o['sample_length']}")


def prepare_text(opts):
    """Load the corpus named by the options, apply --lowercase. Returns (text, source)."""
    text, source = load_corpus(opts["text"], opts["corpus"], opts["encoding"])
    if opts["lowercase"]:
        text = text.lower()
    return text, source


# --------------------------------------------------------------------------- files
@contextlib.contextmanager
def _deferred_sigint():
    """Hold back SIGINT while a file is being committed (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    got = []
    try:
        old = signal.signal(signal.SIGINT, lambda s, f: got.append(s))
    except ValueError:
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)
        if got and callable(old):
            old(signal.SIGINT, None)


def save_checkpoint(out, arrays, meta, stem="checkpoint"):
    """Write ``<stem>.npz`` (arrays, no pickles) then ``<stem>.json`` (metadata with the npz's
    sha256), each atomically; SIGINT waits until both are in place."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    npz = out / f"{stem}.npz"
    with _deferred_sigint():
        atomic_write(npz, lambda f: np.savez(f, **arrays))
        meta = dict(meta, npz=npz.name, npz_sha256=_sha256(npz))
        data = json.dumps(meta, indent=1, sort_keys=True).encode("utf-8")
        atomic_write(out / f"{stem}.json", lambda f: f.write(data))
    return meta


def copy_checkpoint(out, meta, stem):
    """Make ``<stem>.npz/.json`` the same checkpoint as ``meta`` (just saved in ``out``): a
    hard link to its npz when the file system allows (no second write), each step atomic."""
    out = Path(out)
    src, dst = out / meta["npz"], out / f"{stem}.npz"
    with _deferred_sigint():
        tmp = out / f".{dst.name}.link.tmp"
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        try:
            os.link(src, tmp)
            os.replace(tmp, dst)
        except OSError:
            data = src.read_bytes()
            atomic_write(dst, data)
        data = json.dumps(dict(meta, npz=dst.name), indent=1, sort_keys=True).encode("utf-8")
        atomic_write(out / f"{stem}.json", lambda f: f.write(data))


def find_checkpoint(path, prefer_best=False):
    """The checkpoint's JSON file from a run folder, a .json or a .npz path. In a folder,
    ``prefer_best`` picks best.json (lowest validation loss) when there is one."""
    p = Path(path)
    if p.is_dir():
        if prefer_best and (p / BEST_JSON).is_file():
            return p / BEST_JSON
        j = p / CHECKPOINT_JSON
        if not j.is_file():
            raise CheckpointError(f"no checkpoint in {str(p)!r} (no {CHECKPOINT_JSON}): train one with "
                                  f"`fastlstm train --out {p}`, or pass the right folder")
        return j
    if not p.exists():
        raise CheckpointError(f"checkpoint {str(p)!r} does not exist: pass a run folder "
                              f"(fastlstm train --out) or its {CHECKPOINT_JSON}")
    if p.suffix == ".npz":
        j = p.with_suffix(".json")
        if not j.is_file():
            raise CheckpointError(f"{str(p)!r} has no metadata file {j.name} beside it: pass the run folder "
                                  f"with both {CHECKPOINT_NPZ} and {CHECKPOINT_JSON}")
        return j
    return p


def load_checkpoint(path, prefer_best=False):
    """Read and verify a checkpoint (see find_checkpoint). Returns (meta dict, arrays dict).

    Raises CheckpointError for anything missing, corrupt, truncated or of another format.
    """
    j = find_checkpoint(path, prefer_best)
    hint = "it is corrupt or truncated: use another checkpoint, or train a new one (fastlstm train --overwrite)"
    try:
        meta = json.loads(Path(j).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise CheckpointError(f"cannot read checkpoint metadata {str(j)!r} ({type(e).__name__}): {hint}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{str(j)!r} is not a fastlstm character-model checkpoint: pass the "
                              f"{CHECKPOINT_JSON} of a `fastlstm train` run")
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"{str(j)!r} was written by a newer fastlstm (format {meta.get('format_version')}): "
                              f"upgrade fastlstm")
    required = ("options", "vocab", "step", "model", "npz", "npz_sha256", "optimizer", "rng")
    missing = [k for k in required if k not in meta]
    if missing:
        raise CheckpointError(f"checkpoint metadata {str(j)!r} lacks {', '.join(missing)}: {hint}")
    npz = Path(j).parent / meta["npz"]
    if not npz.is_file():
        raise CheckpointError(f"checkpoint arrays {str(npz)!r} are missing: {hint}")
    if _sha256(npz) != meta["npz_sha256"]:
        raise CheckpointError(f"checkpoint arrays {str(npz)!r} do not match their metadata "
                              f"(checksum differs): {hint}")
    try:
        with np.load(npz, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError, KeyError) as e:
        raise CheckpointError(f"cannot read checkpoint arrays {str(npz)!r} ({type(e).__name__}): {hint}") from None
    try:
        Vocab(meta["vocab"])
    except (ValueError, TypeError):
        raise CheckpointError(f"checkpoint {str(j)!r} has an invalid vocabulary: {hint}") from None
    return meta, arrays


def model_from_checkpoint(meta, arrays, backend="auto"):
    """Build the CharModel of a checkpoint and load its parameters."""
    cfg = meta["model"]
    try:
        sizes = (int(cfg["vocab_size"]), int(cfg["hidden_size"]), int(cfg["num_layers"]), float(cfg["dropout"]),
                 int(cfg["embed_dim"]), str(cfg["input_mode"]))
        dtype = np.dtype(meta["options"].get("dtype", "float32"))
        if sizes[5] not in INPUT_MODES or dtype not in (np.float32, np.float64) or min(sizes[:3]) < 1:
            raise ValueError(f"model {cfg}")
    except (KeyError, ValueError, TypeError, AttributeError) as e:
        raise CheckpointError(f"the checkpoint's model description is invalid ({e}): it is corrupt: "
                              f"use another checkpoint, or retrain") from None
    model = CharModel(*sizes, seed=0, dtype=dtype, backend=backend)  # a bad backend: ValueError
    try:
        model.load_state_dict({k[len("model."):]: v for k, v in arrays.items() if k.startswith("model.")})
    except (KeyError, ValueError, TypeError) as e:
        raise CheckpointError(f"the checkpoint's parameters do not fit its model ({e}): "
                              f"it is corrupt: use another checkpoint, or retrain") from None
    if len(meta["vocab"]) != model.vocab_size:
        raise CheckpointError("the checkpoint's vocabulary does not match its model: it is corrupt: retrain")
    return model


# --------------------------------------------------------------------------- progress
class _Progress:
    """A tqdm bar on a terminal (when tqdm is installed), else plain lines every few seconds."""

    def __init__(self, mode, total_steps, initial, max_time=None, every=10.0, stream=None):
        self.stream = stream or sys.stdout
        self.every = every
        self.bar = None
        self.t0 = time.perf_counter()
        self.last_line = self.t0
        # a bar over steps when their number is known, else over the --max-time seconds
        self.by_time = total_steps is None and max_time is not None
        if mode == "auto":
            mode = "bar" if sys.stderr.isatty() else "lines"
        if mode == "bar":
            try:
                from tqdm import tqdm
                if self.by_time:
                    self.bar = tqdm(total=float(max_time), unit="s", dynamic_ncols=True, file=sys.stderr,
                                    bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} s{postfix}")
                else:
                    self.bar = tqdm(total=total_steps, initial=initial, unit="step", dynamic_ncols=True,
                                    file=sys.stderr)
            except ImportError:
                mode = "lines"
        self.mode = mode

    def update(self, step, epoch, loss, cps, left):
        if self.bar is not None:
            if self.by_time:
                self.bar.update(min(time.perf_counter() - self.t0, self.bar.total) - self.bar.n)
            else:
                self.bar.update(step - self.bar.n)
            self.bar.set_postfix_str(f"step {step} epoch {epoch:.1f} loss {loss:.3f} {cps:,.0f} chars/s "
                                     f"{_hms(left)} left", refresh=False)
            return
        if self.mode == "lines":
            now = time.perf_counter()
            if now - self.last_line >= self.every:
                self.last_line = now
                self.write(f"step {step} epoch {epoch:.2f} loss {loss:.4f} {cps:,.0f} chars/s {_hms(left)} left")

    def write(self, msg):
        if self.mode == "none":
            return
        if self.bar is not None:
            self.bar.write(msg, file=sys.stderr)
        else:
            print(msg, file=self.stream, flush=True)

    def close(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _backend_name(name):
    if name != "auto":
        return name
    from .backends import available_backends
    return "auto (c)" if "c" in available_backends() else "auto (numpy)"


def _hms(seconds):
    if seconds is None or not math.isfinite(seconds):
        return "?"
    s = int(max(seconds, 0) + 0.5)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60:02d}:{s % 60:02d}"


@contextlib.contextmanager
def compute_threads(mode=None):
    """Thread settings for the training loop (needs threadpoolctl; a no-op without it).

    The LSTM kernels run on their own OpenMP threads (with BLAS calls kept on each thread);
    BLAS worker threads (numpy's for the dense layer, SciPy's) would spin on the same cores.
    ``mode`` (default $FASTLSTM_TRAIN_BLAS, else "all1"): "all1" limits every BLAS to one
    thread; "numpy1" only numpy's, when it is a different library from SciPy's; "none" changes
    nothing. On the 2-CPU machines here "all1" measured fastest (about 305-380 ms per default
    step against 330-420 for "numpy1" and 390-500 for "none"; noisy, shared machine).
    """
    mode = mode or os.environ.get("FASTLSTM_TRAIN_BLAS", "").strip() or "all1"
    if mode not in ("numpy1", "all1", "none"):
        raise ValueError(f"FASTLSTM_TRAIN_BLAS must be numpy1, all1 or none, got {mode!r}")
    try:
        import threadpoolctl
    except ImportError:
        yield
        return
    if mode == "none":
        yield
        return
    if mode == "all1":
        with threadpoolctl.threadpool_limits(1, user_api="blas"):
            yield
        return
    controller = threadpoolctl.ThreadpoolController()
    np_dir = os.path.dirname(os.path.dirname(os.path.abspath(np.__file__)))
    mine = [lib for lib in controller.lib_controllers
            if lib.user_api == "blas" and os.path.abspath(lib.filepath).startswith(os.path.join(np_dir, "numpy"))]
    others = [lib for lib in controller.lib_controllers if lib.user_api == "blas" and lib not in mine]
    if not mine or any(os.path.samefile(m.filepath, o.filepath) for m in mine for o in others):
        yield  # numpy shares its BLAS with the kernels: leave it alone
        return
    before = [lib.num_threads for lib in mine]
    for lib in mine:
        lib.set_num_threads(1)
    try:
        yield
    finally:
        for lib, n in zip(mine, before, strict=True):
            lib.set_num_threads(n)


# --------------------------------------------------------------------------- trainer
class Trainer:
    """Holds the model, optimizer, data and all RNG state of one run.

    Every random draw comes from a generator whose state the checkpoint keeps (the data
    sampler here, the two dropout generators in the model), so ``resume`` continues exactly.
    """

    def __init__(self, opts, text, vocab=None, *, out=None, source=None):
        self.opts = opts
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
        if self.last_only:
            self.n_windows = len(self.train_ids) - T  # window [o, o+T) predicts ids[o+T]
            self.steps_per_epoch = max(1, math.ceil(self.n_windows / N))
        else:
            self.n_windows = len(self.train_ids) - T  # window [o, o+T] predicts ids[o+1 : o+T+1]
            self.steps_per_epoch = max(1, math.ceil((len(self.train_ids) - 1) / (T * N)))
        self.order = None  # the tutorial's per-epoch shuffle of window offsets
        self.step = 0
        self.elapsed = 0.0  # training seconds over all sessions
        self.chars_seen = 0
        self.val_history = []
        self.updating = False
        self._arange = np.arange(T + 1)[:, None]
        self.val_batches = self._val_windows()  # [(ids, targets)], fixed for the run

    # -- data ------------------------------------------------------------------
    def batch(self):
        """The next (ids (T, N), targets) minibatch; advances the sampler."""
        T, N = self.opts["seq_len"], self.opts["batch_size"]
        data = self.train_ids
        if self.last_only:
            pos = self.step % self.steps_per_epoch
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
    def train_step(self):
        """One minibatch: forward, backward, clip, Adam. Returns the loss."""
        x, y = self.batch()
        m = self.model
        m.zero_grad()
        loss = m.loss_and_backward(x, y, last_only=self.last_only)
        self.updating = True  # parameters and counters change together
        if self.opts["clip"]:
            clip_grad_norm(m.grads, self.opts["clip"])
        self.adam.step(m.grads)
        self.step += 1
        self.chars_seen += x.size
        self.updating = False
        return loss

    def evaluate(self):
        """Mean cross-entropy (nats per character) over the held-out windows."""
        total, count = 0.0, 0
        for ids, tg in self.val_batches:
            n = tg.size
            total += self.model.loss(ids, tg, last_only=self.last_only) * n
            count += n
        return total / count

    def sample(self, length=None, prime=None):
        """A short generated text (seeded by the run's seed and the step: reproducible and
        independent of the training generators)."""
        length = self.opts["sample_length"] if length is None else length
        if prime is None:
            prime = "\n" if "\n" in self.vocab.index else self.vocab.chars[0]
        ids = self.model.generate(self.vocab.encode(prime), length, temperature=self.opts["temperature"],
                                  greedy=self.opts["greedy"],
                                  rng=np.random.default_rng([self.opts["seed"], 2, self.step]))
        return self.vocab.decode(ids)

    @property
    def epoch(self):
        return self.step / self.steps_per_epoch

    # -- checkpoints ---------------------------------------------------------------
    def state(self):
        """(arrays, meta) of a checkpoint of the current state."""
        arrays = {"model." + k: v for k, v in self.model.params.items()}
        arrays.update(self.adam.state_arrays(prefix="adam."))
        if self.order is not None:
            arrays["sampler.order"] = self.order
        meta = {
            "format": FORMAT, "format_version": FORMAT_VERSION, "fastlstm_version": __version__,
            "options": self.opts, "vocab": self.vocab.chars, "source": self.source,
            "model": self.model.config(), "step": self.step, "epoch": self.epoch,
            "steps_per_epoch": self.steps_per_epoch, "elapsed": self.elapsed,
            "chars_seen": self.chars_seen, "optimizer": self.adam.scalars(),
            "rng": {"data": self.data_rng.bit_generator.state, **self.model.rng_states()},
            "val_history": self.val_history,
            "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        return arrays, meta

    def save(self, best=False):
        """Write the checkpoint (and, with ``best``, the same state as the best one too)."""
        arrays, meta = self.state()
        meta = save_checkpoint(self.out, arrays, meta)
        if best:
            copy_checkpoint(self.out, meta, "best")

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
            self.model.load_state_dict({k[len("model."):]: v for k, v in arrays.items() if k.startswith("model.")})
            self.adam.load_state(arrays, meta["optimizer"], prefix="adam.", keep_hyperparameters=True)
            self.model.set_rng_states(meta["rng"])
            self.data_rng.bit_generator.state = meta["rng"]["data"]
        except (KeyError, ValueError, TypeError) as e:
            raise CheckpointError(f"the checkpoint does not fit the model ({e}): it is corrupt or from "
                                  f"other options: start a new run with another --out") from None
        self.order = arrays.get("sampler.order")
        self.step = int(meta["step"])
        self.elapsed = float(meta.get("elapsed", 0.0))
        self.chars_seen = int(meta.get("chars_seen", 0))
        self.val_history = list(meta.get("val_history", []))


def _show_chars(chars, limit=12):
    shown = ", ".join(repr(c) for c in chars[:limit])
    return shown + (f" and {len(chars) - limit} more" if len(chars) > limit else "")


# --------------------------------------------------------------------------- the run
def _truncate_metrics(path, step):
    """Drop metric lines past ``step`` (written after the checkpoint a run resumes from)."""
    if not path.is_file():
        return
    keep = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if rec.get("step", 0) <= step:
            keep.append(line)
    data = ("\n".join(keep) + "\n" if keep else "").encode("utf-8")
    atomic_write(path, lambda f: f.write(data))


def plot_metrics(metrics_path, png_path):
    """Loss curve (training loss, smoothed, and validation loss against steps) as a PNG.
    Returns None when written, else the reason it was skipped."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install matplotlib): no loss-curve PNG"
    steps, losses, vsteps, vlosses = [], [], [], []
    for line in Path(metrics_path).read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if "loss" in rec:
            steps.append(rec["step"])
            losses.append(rec["loss"])
        if "val_loss" in rec:
            vsteps.append(rec["step"])
            vlosses.append(rec["val_loss"])
    if not steps and not vsteps:
        return "no metrics yet: no loss-curve PNG"
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=100)
    if steps:
        k = max(1, len(losses) // 50)
        smooth = np.convolve(losses, np.ones(k) / k, mode="valid") if len(losses) >= k else losses
        ax.plot(steps, losses, color="tab:blue", alpha=0.25, lw=0.8)
        ax.plot(steps[k - 1:], smooth, color="tab:blue", lw=1.5, label="training loss")
    if vsteps:
        ax.plot(vsteps, vlosses, "o-", color="tab:orange", lw=1.5, ms=3, label="validation loss")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats / char)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    tmp = Path(png_path).with_name(f".{Path(png_path).name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, png_path)
    return None


def prepare_run(given, out, *, resume=False, overwrite=False):
    """Check everything a run needs before anything is written. Returns a ready Trainer.

    Raises DataError/CheckpointError/ValueError for bad input (nothing written yet).
    """
    out = Path(out)
    ckpt = out / CHECKPOINT_JSON
    meta = arrays = None
    if resume:
        if not ckpt.is_file():
            raise CheckpointError(f"nothing to resume: {str(ckpt)!r} does not exist: start a run without "
                                  f"--resume, or pass the --out of the run to continue")
        meta, arrays = load_checkpoint(out)
        opts = resolve_options(given, meta["options"])
    else:
        if ckpt.exists() and not overwrite:
            raise CheckpointError(f"{str(out)!r} already holds a checkpoint: continue it with --resume, "
                                  f"start over with --overwrite, or choose another --out")
        opts = resolve_options(given)
    if opts["text"] is not None:
        opts["text"] = str(Path(opts["text"]).resolve()) if Path(opts["text"]).exists() else opts["text"]
    text, source = prepare_text(opts)
    vocab = Vocab(meta["vocab"]) if meta is not None else None  # the Trainer checks the text against it
    trainer = Trainer(opts, text, vocab, out=out, source=source)
    if meta is not None:
        trainer.load_state(meta, arrays)
    return trainer


def run_training(trainer, *, progress="auto", log_every=10.0, stream=None, step_callback=None,
                 write_plot=True):
    """Train until --epochs, --max-steps or --max-time (or Ctrl-C); checkpoint, metrics, PNG.

    Returns a dict: status ("done" or "interrupted"), step, losses (this session's, per step),
    val_loss (last), chars_per_s, elapsed (this session, seconds).
    ``step_callback(trainer, loss)`` runs after each step (tests use it).
    """
    o = trainer.opts
    out = trainer.out
    out.mkdir(parents=True, exist_ok=True)
    metrics_path = out / METRICS_FILE
    if trainer.step > 0:
        _truncate_metrics(metrics_path, trainer.step)
    else:  # a new run (maybe --overwrite): nothing of an earlier one may stay
        for name in (METRICS_FILE, BEST_JSON, BEST_NPZ):
            with contextlib.suppress(FileNotFoundError):
                (out / name).unlink()
    stream = stream or sys.stdout
    spe = trainer.steps_per_epoch
    max_steps = o["max_steps"]
    if o["epochs"] is not None:
        max_steps = min(max_steps or math.inf, o["epochs"] * spe)
    if max_steps is None and o["max_time"] is None:
        max_steps = DEFAULT_EPOCHS * spe
    max_time = o["max_time"]
    total = int(max_steps) if max_steps not in (None, math.inf) else None
    bar = _Progress(progress, total, trainer.step, max_time=max_time, every=log_every, stream=stream)
    T, N = o["seq_len"], o["batch_size"]
    say = bar.write
    what = f"{len(trainer.train_ids):,} training / {len(trainer.val_ids):,} held-out characters"
    say(f"fastlstm train: {trainer.source}, {what}, vocabulary {len(trainer.vocab)}; model "
        f"{o['input_mode']} -> LSTM({o['hidden_size']}) x {o['num_layers']} -> Dense({len(trainer.vocab)}), "
        f"{sum(p.size for p in trainer.model.params.values()):,} parameters; "
        f"batch {N} x {T} chars, {spe} steps/epoch; backend {_backend_name(trainer.model.lstm.backend)}"
        + (f"; resuming at step {trainer.step}" if trainer.step else ""))
    interrupted = []
    losses = []
    status = "done"
    last_val = trainer.val_history[-1]["val_loss"] if trainer.val_history else None
    t0 = time.perf_counter()
    elapsed0 = trainer.elapsed
    chars0 = trainer.chars_seen
    cps = 0.0
    ema = None

    def on_sigint(signum, frame):
        if interrupted:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        interrupted.append(signum)

    old_handler = None
    if threading.current_thread() is threading.main_thread():
        with contextlib.suppress(ValueError):
            old_handler = signal.signal(signal.SIGINT, on_sigint)

    best = [min((r["val_loss"] for r in trainer.val_history), default=math.inf)]

    def validate():
        """Validation loss, sample, log line; returns whether it is the best so far."""
        nonlocal last_val
        v = trainer.evaluate()
        last_val = v
        improved = v < best[0]
        if improved:
            best[0] = v
        rec = {"step": trainer.step, "epoch": round(trainer.epoch, 4), "time": round(trainer.elapsed, 3),
               "val_loss": v}
        sample = trainer.sample() if o["sample_length"] else ""
        rec["sample"] = sample
        trainer.val_history.append({"step": trainer.step, "time": rec["time"], "val_loss": v})
        mf.write(json.dumps(rec) + "\n")
        mf.flush()
        say(f"step {trainer.step} epoch {trainer.epoch:.2f} validation loss {v:.4f} "
            f"(train {ema:.4f}, {cps:,.0f} chars/s, {_hms(trainer.elapsed)} trained)"
            if ema is not None else f"step {trainer.step} validation loss {v:.4f}")
        if sample:
            say("  | " + sample.replace("\n", "\n  | "))
        return improved

    try:
        with open(metrics_path, "a", encoding="utf-8") as mf, compute_threads():
            step_start_rng = None
            try:
                while True:
                    now = time.perf_counter()
                    session = now - t0
                    if max_steps is not None and trainer.step >= max_steps:
                        break
                    if max_time is not None and session >= max_time:
                        break
                    if interrupted:
                        status = "interrupted"
                        break
                    # everything a step changes before its update is restorable if it is interrupted
                    step_start_rng = (trainer.data_rng.bit_generator.state, trainer.model.rng_states(),
                                      trainer.order)
                    loss = trainer.train_step()
                    step_start_rng = None
                    losses.append(loss)
                    trainer.elapsed = elapsed0 + (time.perf_counter() - t0)
                    cps = (trainer.chars_seen - chars0) / max(time.perf_counter() - t0, 1e-9)
                    ema = loss if ema is None else 0.95 * ema + 0.05 * loss
                    mf.write(f'{{"step": {trainer.step}, "epoch": {trainer.epoch:.4f}, '
                             f'"time": {trainer.elapsed:.3f}, "loss": {loss!r}}}\n')
                    if step_callback is not None:
                        step_callback(trainer, loss)
                    left = None
                    if max_time is not None:
                        left = max_time - (time.perf_counter() - t0)
                    if max_steps is not None and len(losses) > 0:
                        per = (time.perf_counter() - t0) / len(losses)
                        by_steps = (max_steps - trainer.step) * per
                        left = by_steps if left is None else min(left, by_steps)
                    bar.update(trainer.step, trainer.epoch, ema, cps, left)
                    if trainer.step % o["eval_every"] == 0:
                        trainer.save(best=validate())
            except KeyboardInterrupt:
                status = "interrupted"
                if trainer.updating:  # stopped inside the parameter update: the state is torn
                    say(f"stopped during an update: nothing saved; the last checkpoint in {out} is kept")
                    raise
                if step_start_rng is not None:  # the step did not finish: undo its draws
                    trainer.data_rng.bit_generator.state = step_start_rng[0]
                    trainer.model.set_rng_states(step_start_rng[1])
                    trainer.order = step_start_rng[2]
            improved = False
            if status == "done" and (not trainer.val_history or trainer.val_history[-1]["step"] != trainer.step):
                improved = validate()
            mf.flush()
            trainer.save(best=improved)
    finally:
        bar.close()
        if old_handler is not None:
            signal.signal(signal.SIGINT, old_handler)
    note = None
    if write_plot:
        note = plot_metrics(metrics_path, out / PLOT_FILE)
    session = time.perf_counter() - t0
    if note:
        say(f"note: {note}")
    if status == "interrupted":
        say(f"interrupted at step {trainer.step}: checkpoint saved in {out}; continue with "
            f"`fastlstm train --resume --out {out}`")
    else:
        b = min(trainer.val_history, key=lambda r: r["val_loss"])
        say(f"done: step {trainer.step} (epoch {trainer.epoch:.2f}), validation loss {last_val:.4f} "
            f"(best {b['val_loss']:.4f} at step {b['step']}), {cps:,.0f} chars/s over {_hms(session)}; "
            f"checkpoints, metrics and plot in {out}; try `fastlstm generate --checkpoint {out}`")
    return dict(status=status, step=trainer.step, losses=losses, val_loss=last_val, chars_per_s=cps,
                elapsed=session)
