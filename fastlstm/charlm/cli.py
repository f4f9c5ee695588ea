"""The ``fastlstm`` command (console script and ``python -m fastlstm``): ``fastlstm train`` (the run
loop of run.py), ``fastlstm generate`` (stream text from a checkpoint) and ``fastlstm export`` (the
model as one ONNX graph, export.py). Bad input ends with a
one-line error on stderr that says what to do, and exit status 2; nothing is overwritten.
"""

import argparse
import os
import sys
import time
from pathlib import Path

from .. import __version__
from .._bf16 import check_precision
from .._config import BACKENDS
from .data import CORPORA, DataError
from .model import INPUT_MODES
from .options import DEFAULT_EPOCHS, DEFAULTS, DTYPES, LOSS_TARGETS, LR_SCHEDULES, PRESETS
from .progress import PROGRESS_MODES

__all__ = ["build_parser", "main"]

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

#: --backend: "auto" (the library picks), or a backend by name.
BACKEND_CHOICES = ("auto", *BACKENDS)


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors ("fastlstm train: error: ... (see --help)"), status 2."""

    def error(self, message):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def _default_out(text, preset):
    name = "macbeth" if text is None else (Path(text).stem or "run")
    if preset and preset != "default":
        name += f"-{preset}"
    return os.path.join("runs", name)


_D, _TUT = DEFAULTS, PRESETS["tutorial"]  # short names keep the epilog's source lines short
TRAIN_EPILOG = f"""\
presets (explicit options win over them):
  default   embedding input, every position of a {_D['seq_len']}-character window predicts
            its next character, batch {_D['batch_size']}, Adam lr {_D['lr']}, gradient norm clipped at {_D['clip']}
  tutorial  the classic Keras tutorial: lower-case text, {_TUT['seq_len']}-character windows with ONE
            target each (the next character), the character index / V as the single input
            feature, batch {_TUT['batch_size']}, Adam lr {_TUT['lr']}, no clipping, argmax samples

Without --epochs, --max-time or --max-steps, training runs {DEFAULT_EPOCHS} epochs. The run folder
(--out) holds checkpoint.npz + checkpoint.json (the latest state, for --resume), best.npz +
best.json (the state of the lowest validation loss, which `fastlstm generate` uses),
metrics.jsonl (one JSON object per step and per validation) and loss.png (with matplotlib
installed). Ctrl-C saves a checkpoint and stops; `--resume` continues exactly where it
stopped, with the same losses as an uninterrupted run.

Under `mpiexec -n K` (pip install "fastlstm[mpi]"), K ranks share each batch: --batch-size is the
global batch (a multiple of K), the steps are those of one process (to rounding), rank 0 writes
the run folder, and a checkpoint resumes under any number of ranks.

examples:
  fastlstm train --max-time 60                     # Macbeth, 60 seconds
  fastlstm train --text novel.txt --epochs 5 --out runs/novel
  fastlstm train --preset tutorial --epochs 20
  fastlstm train --resume --max-time 60            # 60 more seconds of runs/macbeth
  mpiexec -n 2 fastlstm train --max-time 60        # the same run on 2 ranks
"""

GENERATE_EPILOG = """\
examples:
  fastlstm generate --prime "MACBETH. " --length 500
  fastlstm generate --checkpoint runs/novel --temperature 0.5 --top-k 10 --seed 1
  fastlstm generate --num-samples 4 --length 200 --seed 7
  fastlstm generate --checkpoint runs/macbeth-tutorial --greedy
  fastlstm generate --weights bf16 --length 2000 --timing
"""


def build_parser():
    p = _Parser(prog="fastlstm", formatter_class=argparse.RawDescriptionHelpFormatter,
                description="Train a character-level LSTM language model on a text and generate text "
                            "with it (the LSTM runs on fastlstm's compiled kernels).",
                epilog="`fastlstm train --help` and `fastlstm generate --help` list every option.")
    p.add_argument("--version", action="version", version=f"fastlstm {__version__}")
    sub = p.add_subparsers(dest="command", metavar="{train,generate}", parser_class=_Parser)
    sub.required = True

    t = sub.add_parser("train", help="train the character model on a text",
                       formatter_class=argparse.RawDescriptionHelpFormatter, epilog=TRAIN_EPILOG,
                       description="Train the character-level model: characters -> embedding (or scaled "
                                   "index) -> LSTM x layers (dropout between) -> dropout -> dense -> softmax, "
                                   "cross-entropy, Adam. Option defaults shown are the built-in ones; "
                                   "a preset or, on --resume, the checkpoint's options take their place.")
    g = t.add_argument_group("data")
    g.add_argument("--text", metavar="PATH", default=None,
                   help="train on this text file (UTF-8 unless --encoding); without it, the corpus of --corpus")
    g.add_argument("--corpus", choices=CORPORA, default=None,
                   help=f"named corpus used without --text (default {DEFAULTS['corpus']}: found as macbeth.txt in "
                        f"$FASTLSTM_DATA, default ~/.cache/fastlstm, else downloaded once, sha256-verified)")
    g.add_argument("--encoding", default=None,
                   help=f"encoding of --text (any Python codec, e.g. latin-1; default {DEFAULTS['encoding']})")
    g.add_argument("--lowercase", action=argparse.BooleanOptionalAction, default=None,
                   help="lower-case the text before building the vocabulary (default: off; the tutorial "
                        "preset turns it on)")
    g.add_argument("--preset", choices=list(PRESETS), default=None,
                   help="a set of defaults: 'default' or 'tutorial' (see below)")

    g = t.add_argument_group("model")
    g.add_argument("--hidden-size", type=int, default=None, metavar="H",
                   help=f"LSTM hidden size (default {DEFAULTS['hidden_size']})")
    g.add_argument("--layers", dest="num_layers", type=int, default=None, metavar="L",
                   help=f"stacked LSTM layers (default {DEFAULTS['num_layers']})")
    g.add_argument("--dropout", type=float, default=None,
                   help=f"dropout after every LSTM layer, in [0, 1) (default {DEFAULTS['dropout']})")
    g.add_argument("--input", dest="input_mode", choices=INPUT_MODES, default=None,
                   help="how characters go in: a learned embedding, or 'scaled': the character index / V "
                        "as one feature (the tutorial's) (default embedding)")
    g.add_argument("--embed-dim", type=int, default=None, metavar="E",
                   help=f"embedding width (default {DEFAULTS['embed_dim']})")

    g = t.add_argument_group("task and optimisation")
    g.add_argument("--seq-len", type=int, default=None, metavar="T",
                   help=f"window length in characters: the truncated-BPTT length (default {DEFAULTS['seq_len']})")
    g.add_argument("--target", choices=LOSS_TARGETS, default=None,
                   help="'all': every position of a window predicts its next character; 'last': one "
                        "target per window, the character after it (default all)")
    g.add_argument("--batch-size", type=int, default=None, metavar="N",
                   help=f"windows per minibatch, taken at random offsets of the training text "
                        f"(default {DEFAULTS['batch_size']})")
    g.add_argument("--lr", type=float, default=None, help=f"Adam learning rate (default {DEFAULTS['lr']})")
    g.add_argument("--clip", type=float, default=None, metavar="NORM",
                   help=f"clip the global gradient norm at NORM; 0 disables (default {DEFAULTS['clip']})")
    g.add_argument("--lr-schedule", choices=LR_SCHEDULES, default=None,
                   help=f"'plateau': halve the learning rate after --lr-patience validations in a row "
                        f"without a new best validation loss; 'constant' (default {DEFAULTS['lr_schedule']})")
    g.add_argument("--lr-patience", type=int, default=None, metavar="VALIDATIONS",
                   help=f"validations without a new best before 'plateau' halves the rate "
                        f"(default {DEFAULTS['lr_patience']})")
    g.add_argument("--patience", type=int, default=None, metavar="VALIDATIONS",
                   help="stop early after this many validations in a row without a new best validation "
                        f"loss; 0 never stops early (default {DEFAULTS['patience']})")
    g.add_argument("--restore-best", action=argparse.BooleanOptionalAction, default=None,
                   help="end a finished or early-stopped run in its best validated state (the checkpoint "
                        "becomes best.npz's state, as early stopping's 'restore best weights'); "
                        "--no-restore-best keeps the last state (default: restore)")
    g.add_argument("--seed", type=int, default=None,
                   help=f"seeds initialisation, batches, dropout and samples (default {DEFAULTS['seed']})")

    g = t.add_argument_group("duration (whichever comes first)")
    g.add_argument("--epochs", type=int, default=None,
                   help="stop after this many epochs in all (an epoch: as many windows as cover the "
                        "training text once)")
    g.add_argument("--max-time", type=float, default=None, metavar="SECONDS",
                   help="stop after this many seconds of this session")
    g.add_argument("--max-steps", type=int, default=None, metavar="STEPS",
                   help="stop at this step (counted from the start of the run, so a resumed run stops where "
                        "an uninterrupted one would)")

    g = t.add_argument_group("validation and output")
    g.add_argument("--eval-every", type=int, default=None, metavar="STEPS",
                   help=f"validation loss on the held-out last 10%%, a sample and a checkpoint every STEPS "
                        f"steps (default {DEFAULTS['eval_every']})")
    g.add_argument("--sample-length", type=int, default=None, metavar="CHARS",
                   help=f"characters generated at each validation; 0 for none (default {DEFAULTS['sample_length']})")
    g.add_argument("--temperature", type=float, default=None,
                   help=f"sampling temperature of those samples (default {DEFAULTS['temperature']})")
    g.add_argument("--greedy", action=argparse.BooleanOptionalAction, default=None,
                   help="argmax samples instead of sampling (default off; on in the tutorial preset)")
    g.add_argument("--out", metavar="DIR", default=None,
                   help="run folder for checkpoint, metrics and plot (default runs/macbeth, or runs/<text "
                        "file stem>, with -tutorial appended for that preset)")
    g.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its checkpoint (same text, vocabulary and sizes)")
    g.add_argument("--overwrite", action="store_true",
                   help="start a new run in an --out that already holds a checkpoint, replacing it")
    g.add_argument("--progress", choices=PROGRESS_MODES, default="auto",
                   help="progress display: a tqdm bar on a terminal (when tqdm is installed), else "
                        "plain lines (default auto)")
    g.add_argument("--log-every", type=float, default=10.0, metavar="SECONDS",
                   help="seconds between plain progress lines (default 10)")

    g = t.add_argument_group("compute")
    g.add_argument("--backend", choices=BACKEND_CHOICES, default=None,
                   help="fastlstm backend of the LSTM (default auto)")
    g.add_argument("--dtype", choices=DTYPES, default=None,
                   help="floating-point type (default float32)")

    s = sub.add_parser("generate", help="generate text from a trained checkpoint",
                       formatter_class=argparse.RawDescriptionHelpFormatter, epilog=GENERATE_EPILOG,
                       description="Continue a prime text with a trained model, streaming characters to "
                                   "stdout as they come. The LSTM state is carried from character to "
                                   "character (one LSTM step per character).")
    s.add_argument("--checkpoint", metavar="PATH", default=os.path.join("runs", "macbeth"),
                   help="a run folder (fastlstm train --out: its best.json, the lowest validation loss, "
                        "else its checkpoint.json, the latest), or a .json / .npz checkpoint file "
                        "(default runs/macbeth)")
    s.add_argument("--prime", metavar="TEXT", default=None,
                   help="text to start from, echoed first; its characters must be in the model's vocabulary "
                        "(lower-cased for a --lowercase model) (default: a newline)")
    s.add_argument("--length", type=int, default=500, metavar="N", help="characters to generate (default 500)")
    s.add_argument("--temperature", type=float, default=None,
                   help=f"sampling temperature: lower is more conservative; 0 means argmax (default "
                        f"{DEFAULTS['temperature']}, or argmax for a model trained with the tutorial preset)")
    s.add_argument("--top-k", type=int, default=0, metavar="K",
                   help="sample only among the K likeliest characters; 0 for all (default 0)")
    s.add_argument("--seed", type=int, default=None,
                   help="seed of the sampler, for reproducible text (default: fresh randomness)")
    s.add_argument("--num-samples", type=int, default=1, metavar="K",
                   help="K independent continuations of the prime, drawn together as one batch and "
                        "printed one after the other, each under a header line; sample k draws from "
                        "--seed + k (default 1)")
    s.add_argument("--greedy", action="store_true",
                   help="always take the likeliest character (the tutorial's generation)")
    s.add_argument("--timing", action="store_true",
                   help="report on stderr the start-up time (checkpoint, model, backend) and the "
                        "characters per second after it")
    s.add_argument("--backend", choices=BACKEND_CHOICES, default="auto",
                   help="fastlstm backend of the LSTM (default auto)")
    s.add_argument("--weights", choices=("float32", "bf16"), default="float32",
                   help="bf16: the LSTM and dense weights rounded to bfloat16, products summed in "
                        "float32 (not exact; faster, most at --num-samples 1, on the C backend; "
                        "float32 models only) (default float32)")
    e = sub.add_parser("export", help="write a trained model as one ONNX graph (for deployment)",
                       description="Write the checkpoint's model as one ONNX graph: character ids (T, N) and "
                                   "the state (h0, c0) in, the next character's logits and the new state out "
                                   "(embedding, LSTM and dense layer inside), the vocabulary in the model's "
                                   "metadata. Needs the onnx package (pip install 'fastlstm[onnx]').")
    e.add_argument("--checkpoint", metavar="PATH", default=os.path.join("runs", "macbeth"),
                   help="a run folder (its best checkpoint) or a .json / .npz checkpoint file "
                        "(default runs/macbeth)")
    e.add_argument("--onnx", metavar="PATH", required=True, help="the ONNX file to write")
    e.add_argument("--opset", type=int, default=None, help="ONNX opset (default 14, the least it can be)")
    return p


def _export(args):
    from .checkpoints import CheckpointError
    from .export import export_checkpoint
    prog = "fastlstm export"
    try:
        cfg, V = export_checkpoint(args.checkpoint, args.onnx, opset=args.opset)
    except (CheckpointError, ValueError, ImportError) as e:
        return _fail(prog, str(e))
    except OSError as e:
        return _fail(prog, f"cannot write {args.onnx} ({e.strerror or e}): check the path")
    print(f"wrote {args.onnx}: ids (T, N) and state in, logits (T, N, {V}) and state out; model "
          f"{cfg['input_mode']} -> LSTM({cfg['hidden_size']}) x {cfg['num_layers']} -> Dense({V})")
    return 0


def _fail(prog, msg):
    print(f"{prog}: error: {msg}", file=sys.stderr, flush=True)
    return EXIT_USAGE


def _train(args):
    from .parallel import connect
    from .run import prepare_run, run_training
    prog = "fastlstm train"
    given = {k: getattr(args, k) for k in DEFAULTS if hasattr(args, k)}
    out = args.out or _default_out(args.text, args.preset)
    if args.resume and args.overwrite:
        return _fail(prog, "--resume and --overwrite contradict each other: pass one of them")
    try:
        group = connect()  # None unless an MPI launcher started several ranks
    except RuntimeError as e:
        return _fail(prog, str(e))
    trainer, error = None, None
    try:
        trainer = prepare_run(given, out, resume=args.resume, overwrite=args.overwrite, group=group)
    except (DataError, ValueError) as e:
        error = str(e)
    except OSError as e:
        error = f"{e.strerror or e} ({e.filename}): check the path and its permissions"
    if group is not None:  # every rank learns whether any failed, before anything is written
        errors = group.gather_errors(error)
        if any(errors):
            if group.is_root:
                _report_rank_errors(prog, errors)
            return EXIT_USAGE
    elif error is not None:
        return _fail(prog, error)
    try:
        result = run_training(trainer, progress=args.progress, log_every=args.log_every)
    except KeyboardInterrupt:
        print(f"{prog}: stopped by a second Ctrl-C", file=sys.stderr)
        if group is not None:
            group.abort(EXIT_INTERRUPTED)
        return EXIT_INTERRUPTED
    except (OSError, ValueError) as e:
        msg = (f"cannot write in {out} ({e.strerror or e}): choose a writable --out" if isinstance(e, OSError)
               else str(e))  # ValueError: e.g. a bad FASTLSTM_* environment variable
        if group is None:
            return _fail(prog, msg)
        _abort_ranks(prog, group, msg)
    except Exception as e:
        if group is None:
            raise
        _abort_ranks(prog, group, f"{type(e).__name__}: {e}")
    return EXIT_INTERRUPTED if result["status"] == "interrupted" else 0


def _report_rank_errors(prog, errors):
    """One line per distinct error of the ranks (one line in all when every rank failed alike)."""
    failed = [(r, e) for r, e in enumerate(errors) if e]
    if len(failed) == len(errors) and len(set(errors)) == 1:
        _fail(prog, errors[0])
        return
    for r, e in failed:
        _fail(prog, f"on rank {r} of {len(errors)}: {e}")
    ok = len(errors) - len(failed)
    if ok:
        print(f"{prog}: the other {ok} rank{'s' if ok > 1 else ''} stopped too; nothing was written",
              file=sys.stderr, flush=True)


def _abort_ranks(prog, group, msg):
    """A rank that fails while the others may be waiting for it in a collective: say why, then
    end the whole job (the launcher stops every rank; the last checkpoint stays as it was)."""
    print(f"{prog}: error on rank {group.rank} of {group.size}: {msg}; ending all ranks "
          f"(the last checkpoint is kept)", file=sys.stderr, flush=True)
    group.abort(1)


def _generate(args):
    import numpy as np

    from .checkpoints import load_checkpoint, model_from_checkpoint
    t_start = time.perf_counter()
    prog = "fastlstm generate"
    if args.length < 0:
        return _fail(prog, f"--length must be >= 0, got {args.length}")
    if args.top_k < 0:
        return _fail(prog, f"--top-k must be >= 0 (0 for all characters), got {args.top_k}")
    if args.temperature is not None and not args.temperature >= 0:
        return _fail(prog, f"--temperature must be >= 0 (0 for argmax), got {args.temperature}")
    if args.num_samples < 1:
        return _fail(prog, f"--num-samples must be >= 1, got {args.num_samples}")
    try:
        meta, arrays = load_checkpoint(args.checkpoint, prefer_best=True)
        model = model_from_checkpoint(meta, arrays, backend=args.backend)
    except (DataError, ValueError) as e:
        return _fail(prog, str(e))
    try:
        check_precision("--weights", args.weights, model.dtype)
    except ValueError as e:
        return _fail(prog, str(e))
    chars = list(meta["vocab"])
    index = {c: i for i, c in enumerate(chars)}
    prime = args.prime
    if prime is None:
        prime = "\n" if "\n" in index else chars[0]
    if meta["options"].get("lowercase"):
        prime = prime.lower()
    if prime == "":
        return _fail(prog, "--prime is empty: give at least one character (or leave --prime out)")
    bad = sorted(set(prime) - set(index))
    if bad:
        shown = ", ".join(repr(c) for c in bad[:10]) + (" ..." if len(bad) > 10 else "")
        return _fail(prog, f"--prime has characters the model never saw: {shown}; use only characters of "
                           f"its vocabulary: {''.join(chars)!r}")
    temperature = args.temperature
    if temperature is None:
        temperature = 0.0 if meta["options"].get("greedy") else DEFAULTS["temperature"]
    greedy = args.greedy or temperature == 0
    # the first LSTM call of a process loads the backend (SciPy's BLAS for C): start-up, paid
    # before the first character is shown and before the clock of --timing starts
    model.warm_up()
    out = sys.stdout
    with_errors = getattr(out, "reconfigure", None)
    if with_errors is not None:
        try:
            out.reconfigure(errors="backslashreplace")
        except (ValueError, OSError):
            pass
    write, flush = out.write, out.flush
    echo = prime if args.prime is not None else ""
    K = args.num_samples
    last_flush = [time.perf_counter()]

    def emit(ids):
        # a chunk of characters at a time: no Python call per character
        write("".join([chars[i] for i in ids]))
        now = time.perf_counter()
        if now - last_flush[0] > 0.03:  # stream, without a system call per chunk
            flush()
            last_flush[0] = now

    ids = np.fromiter((index[c] for c in prime), dtype=np.int64, count=len(prime))
    try:
        t0 = time.perf_counter()
        if K == 1:
            write(echo)
            flush()
            model.generate(ids, args.length, temperature=temperature, top_k=args.top_k or None,
                           greedy=greedy, seed=args.seed, on_chunk=emit, weights=args.weights)
            dt = time.perf_counter() - t0
            write("\n")
        else:
            samples = model.generate(ids, args.length, temperature=temperature, top_k=args.top_k or None,
                                     greedy=greedy, seed=args.seed, num_samples=K, weights=args.weights)
            dt = time.perf_counter() - t0
            for k, sample in enumerate(samples):
                seed = "" if args.seed is None else f" (seed {args.seed + k})"
                write(f"--- sample {k + 1} of {K}{seed} ---\n{echo}{''.join(chars[i] for i in sample)}\n")
        flush()
    except BrokenPipeError:
        # the reader went away (e.g. `| head`): stop quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, out.fileno())
        return 0
    if args.timing:
        rate = K * args.length / dt if dt > 0 else float("inf")
        print(f"start-up {t0 - t_start:.3f} s (checkpoint, model, backend); generated {K * args.length} characters "
              f"in {dt:.3f} s after it: {rate:,.0f} chars/s (backend {model.lstm.backend}, {args.weights} "
              f"weights)", file=sys.stderr)
    return 0


def main(argv=None):
    """Entry point of the ``fastlstm`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "train":
            return _train(args)
        from .parallel import launcher_rank, launcher_size
        if launcher_size() > 1 and launcher_rank() != 0:
            # one process's work: under mpiexec rank 0 generates (or exports) and the others
            # leave, instead of K copies of the text or K writers of one file
            return 0
        if args.command == "export":
            return _export(args)
        return _generate(args)
    except KeyboardInterrupt:  # before training started, or while generating: nothing to save
        print(f"\nfastlstm {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
