"""Options of ``fastlstm train``: the built-in defaults, the presets, the command-line flag of each
option, and the one place that merges (explicit > checkpoint > preset > defaults) and checks them.
The CLI builds its parser from these names; the run loop and the Trainer read the merged dict.
"""

import numpy as np

from .._validate import FLOAT_DTYPES, check_dtype
from .checkpoints import CheckpointError
from .model import check_input_mode
from .nn import check_dropout

__all__ = ["DEFAULTS", "DEFAULT_EPOCHS", "DTYPES", "DURATION", "FLAGS", "LOSS_TARGETS", "LR_SCHEDULES",
           "PLATEAU_FACTOR",
           "PRESETS", "SHAPE_OPTIONS", "check_options", "flag", "resolve_options"]

#: "all": every position of a window predicts its next character; "last": one target per
#: window, the character after it (the tutorial).
LOSS_TARGETS = ("all", "last")

#: The floating-point types a run may use (the library's, by name).
DTYPES = tuple(dt.name for dt in FLOAT_DTYPES)

#: Built-in defaults of ``fastlstm train``, chosen to train the Macbeth model well and fast.
DEFAULTS = {
    "text": None, "corpus": "macbeth", "encoding": "utf-8", "lowercase": False, "preset": "default",
    "hidden_size": 300, "num_layers": 2, "dropout": 0.2, "embed_dim": 64, "input_mode": "embedding",
    "seq_len": 100, "target": "all", "batch_size": 64, "lr": 4e-3, "clip": 5.0,
    "lr_schedule": "plateau", "lr_patience": 2, "patience": 5, "restore_best": True,
    "epochs": None, "max_time": None, "max_steps": None,
    "eval_every": 50, "sample_length": 200, "temperature": 0.8, "greedy": False,
    "seed": 0, "val_fraction": 0.1, "dtype": "float32", "backend": "auto",
}

#: Presets override the defaults (explicit options override presets).
PRESETS = {
    "default": {},
    # The classic Keras tutorial: lower-case text, 50-character windows with one target each,
    # the character index scaled to [0, 1) as the one input feature, batch 30, Keras' Adam
    # (lr 1e-3), no clipping, argmax generation.
    "tutorial": {"lowercase": True, "seq_len": 50, "target": "last", "input_mode": "scaled", "batch_size": 30,
                 "lr": 1e-3, "clip": 0.0, "greedy": True},
}

#: Learning-rate schedules: "constant", or "plateau": halve the rate after --lr-patience
#: validations in a row without a new best validation loss.
LR_SCHEDULES = ("constant", "plateau")
#: What "plateau" multiplies the rate by.
PLATEAU_FACTOR = 0.5

#: Options that fix the model's shapes: a resumed run cannot change them.
SHAPE_OPTIONS = ("hidden_size", "num_layers", "embed_dim", "input_mode", "target", "lowercase", "dtype")

#: Options that say when to stop: never inherited from a checkpoint.
DURATION = ("epochs", "max_time", "max_steps")

#: Without --epochs, --max-time or --max-steps, train this many epochs.
DEFAULT_EPOCHS = 20

#: Command-line flags of options whose flag is not simply --name-with-dashes.
FLAGS = {"num_layers": "--layers", "input_mode": "--input"}


def flag(name):
    """The command-line flag of an option name."""
    return FLAGS.get(name, "--" + name.replace("_", "-"))


def resolve_options(given, checkpoint_options=None):
    """Merge options: explicit (not None) > checkpoint (on resume) > preset > DEFAULTS.

    On resume, an explicit option that changes the model's shape raises CheckpointError;
    a bad value raises ValueError naming its flag. Returns a complete options dict.
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
    check_options(opts)
    opts["dtype"] = np.dtype(opts["dtype"]).name  # "f4" and np.float32 are stored as "float32"
    return opts


def _fmt(v):
    return str(v).lower() if isinstance(v, bool) else str(v)


def _positive(o, name, integer=True):
    v = o[name]
    if v is None:
        return
    if (integer and (not isinstance(v, (int, np.integer)) or isinstance(v, bool))) or v <= 0:
        kind = "a positive integer" if integer else "a positive number"
        raise ValueError(f"{flag(name)} must be {kind}, got {v!r}")


def check_options(o):
    """Check a complete options dict; the first bad value raises ValueError naming its flag."""
    for name in ("hidden_size", "num_layers", "embed_dim", "seq_len", "batch_size", "eval_every",
                 "epochs", "max_steps", "lr_patience"):
        _positive(o, name)
    p = o["patience"]
    if p is not None and (not isinstance(p, (int, np.integer)) or isinstance(p, bool) or p < 0):
        raise ValueError(f"--patience must be an integer >= 0 (0: never stop early), got {p!r}")
    for name in ("max_time", "lr"):
        _positive(o, name, integer=False)
    check_dropout(o["dropout"], flag("dropout"))
    if o["clip"] is not None and o["clip"] < 0:
        raise ValueError(f"--clip must be >= 0 (0 disables clipping), got {o['clip']}")
    check_input_mode(o["input_mode"], flag("input_mode"))
    if o["lr_schedule"] not in LR_SCHEDULES:
        raise ValueError(f"--lr-schedule must be one of {', '.join(LR_SCHEDULES)}, got {o['lr_schedule']!r}")
    if o["target"] not in LOSS_TARGETS:
        raise ValueError(f"--target must be one of {', '.join(LOSS_TARGETS)}, got {o['target']!r}")
    try:
        check_dtype(o["dtype"])
    except TypeError:
        # the library's rule; an option error is a ValueError like every other one here
        raise ValueError(f"--dtype must be {' or '.join(DTYPES)}, got {o['dtype']!r}") from None
    if not 0.0 < o["val_fraction"] < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {o['val_fraction']}")
    if o["sample_length"] is not None and o["sample_length"] < 0:
        raise ValueError(f"--sample-length must be >= 0, got {o['sample_length']}")
