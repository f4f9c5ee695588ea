"""Checkpoints of the char model: a run folder's ``checkpoint.npz`` (arrays, no pickles) and
``checkpoint.json`` (metadata with the npz's sha256), written atomically; finding, verifying and
loading them, and rebuilding the CharModel they hold (``fastlstm generate``, ``--resume``).
"""

import contextlib
import json
import os
import signal
import threading
import zipfile
from pathlib import Path

import numpy as np

from .._validate import check_dtype
from .data import DataError, Vocab, atomic_write, sha256_file
from .model import CharModel, check_input_mode

__all__ = ["BEST_JSON", "BEST_NPZ", "CHECKPOINT_JSON", "CHECKPOINT_NPZ", "FORMAT", "FORMAT_VERSION",
           "CheckpointError", "copy_checkpoint", "find_checkpoint", "load_checkpoint", "model_arrays",
           "model_from_checkpoint", "save_checkpoint"]

CHECKPOINT_JSON = "checkpoint.json"
CHECKPOINT_NPZ = "checkpoint.npz"
#: The checkpoint of the lowest validation loss so far (what ``fastlstm generate`` uses).
BEST_JSON = "best.json"
BEST_NPZ = "best.npz"
FORMAT = "fastlstm-charmodel"
FORMAT_VERSION = 1
#: Metadata keys every checkpoint has ("step" is the number of steps done).
REQUIRED_KEYS = ("options", "vocab", "step", "model", "npz", "npz_sha256", "optimizer", "rng")


class CheckpointError(DataError):
    """A checkpoint that cannot be used (missing, corrupt, truncated or incompatible)."""


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


def _write_json(path, meta):
    data = json.dumps(meta, indent=1, sort_keys=True).encode("utf-8")
    atomic_write(path, lambda f: f.write(data))


def save_checkpoint(out, arrays, meta, stem="checkpoint"):
    """Write ``<stem>.npz`` (arrays, no pickles) then ``<stem>.json`` (metadata with the npz's
    sha256), each atomically; SIGINT waits until both are in place. Returns the metadata written."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    npz = out / f"{stem}.npz"
    with _deferred_sigint():
        atomic_write(npz, lambda f: np.savez(f, **arrays))
        meta = dict(meta, npz=npz.name, npz_sha256=sha256_file(npz))
        _write_json(out / f"{stem}.json", meta)
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
            atomic_write(dst, src.read_bytes())
        _write_json(out / f"{stem}.json", dict(meta, npz=dst.name))


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
    missing = [k for k in REQUIRED_KEYS if k not in meta]
    if missing:
        raise CheckpointError(f"checkpoint metadata {str(j)!r} lacks {', '.join(missing)}: {hint}")
    npz = Path(j).parent / meta["npz"]
    if not npz.is_file():
        raise CheckpointError(f"checkpoint arrays {str(npz)!r} are missing: {hint}")
    if sha256_file(npz) != meta["npz_sha256"]:
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


def model_arrays(arrays):
    """The model's parameters among a checkpoint's arrays, by the names CharModel uses."""
    return {k[len("model."):]: v for k, v in arrays.items() if k.startswith("model.")}


def model_from_checkpoint(meta, arrays, backend="auto"):
    """Build the CharModel of a checkpoint and load its parameters."""
    cfg = meta["model"]
    try:
        sizes = (int(cfg["vocab_size"]), int(cfg["hidden_size"]), int(cfg["num_layers"]), float(cfg["dropout"]),
                 int(cfg["embed_dim"]), check_input_mode(str(cfg["input_mode"])))
        dtype = check_dtype(meta["options"].get("dtype", "float32"))
        if min(sizes[:3]) < 1:
            raise ValueError(f"model {cfg}")
    except (KeyError, ValueError, TypeError, AttributeError) as e:
        raise CheckpointError(f"the checkpoint's model description is invalid ({e}): it is corrupt: "
                              f"use another checkpoint, or retrain") from None
    model = CharModel(*sizes, seed=0, dtype=dtype, backend=backend)  # a bad backend: ValueError
    try:
        model.load_state_dict(model_arrays(arrays))
    except (KeyError, ValueError, TypeError) as e:
        raise CheckpointError(f"the checkpoint's parameters do not fit its model ({e}): "
                              f"it is corrupt: use another checkpoint, or retrain") from None
    if len(meta["vocab"]) != model.vocab_size:
        raise CheckpointError("the checkpoint's vocabulary does not match its model: it is corrupt: retrain")
    return model
