"""Profile of one training step (a script, not a test): where ``Trainer.train_step`` spends its
time, phase by phase, on the peer setup of bench/bench_trainer.py (or the trainer's defaults).

Each phase is timed by wrapping the callable that does it on the live objects (the trainer's own
step runs unchanged); the LSTM phases are split into the backend's kernel calls and what the
layer does around them. "other" is the rest of the step (Python glue, allocations).

    python bench/profile_step.py --text /path/to/macbeth.txt --steps 10 --rounds 5
    python bench/profile_step.py --defaults            # fastlstm train's own defaults

With --rounds R the timed block runs R times and the table is the fastest round's (on a
shared machine other tenants slow some rounds down; the step times of every round are listed).
With --compare the same trainer alternates, round by round, between the embedding fold on and
off and the LSTM's reused buffers on and off, and prints each variant's step times.
"""

import argparse
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # profile the checkout

#: Phases inside the LSTM kernels (the backend's whole-sequence calls).
KERNEL_PHASES = ("lstm forward kernels", "lstm backward kernels")


class PhaseClock:
    """Accumulates wall time per phase; nested phases are subtracted from their parents."""

    def __init__(self):
        self.total = defaultdict(float)
        self._stack = []

    def wrap(self, obj, attr, phase):
        """Replace ``obj.attr`` by a timed call of itself under ``phase``."""
        fn = getattr(obj, attr)

        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            self._stack.append(0.0)
            try:
                return fn(*args, **kwargs)
            finally:
                inner = self._stack.pop()
                dt = time.perf_counter() - t0
                self.total[phase] += dt - inner
                if self._stack:
                    self._stack[-1] += dt

        setattr(obj, attr, timed)


def make_trainer(args):
    from bench_trainer import PEER

    from fastlstm.charlm.options import DEFAULTS, resolve_options
    from fastlstm.charlm.trainer import Trainer
    options = {k: DEFAULTS[k] for k in PEER} if args.defaults else dict(PEER)
    options.update(seed=args.seed, dtype=args.dtype)
    opts = resolve_options(options)
    if args.text:
        text = Path(args.text).read_text(encoding="utf-8")
    else:
        from fastlstm.charlm.run import prepare_text
        text, _ = prepare_text(opts)
    tr = Trainer(opts, text)
    if args.no_fold and hasattr(tr.model, "fold_embedding"):
        tr.model.fold_embedding = False
    return tr


def instrument(tr, clock):
    """Wrap every phase of the step on the trainer's live objects."""
    from fastlstm.charlm import model as model_mod
    from fastlstm.charlm import trainer as trainer_mod
    m = tr.model
    clock.wrap(tr, "batch", "batching")
    if m.embedding is not None:
        clock.wrap(m.embedding, "forward", "embedding forward")
        clock.wrap(m.embedding, "backward", "embedding backward")
    for name in ("_fold_forward", "_fold_backward"):
        if hasattr(m, name):
            clock.wrap(m, name, "embedding fold " + name.split("_")[2])
    clock.wrap(m.lstm, "forward", "lstm forward (outside kernels)")
    clock.wrap(m.lstm, "backward", "lstm backward (outside kernels)")
    clock.wrap(m.lstm, "_dropout_mask", "dropout (masks)")
    clock.wrap(m.drop, "forward", "dropout (masks)")
    clock.wrap(m.drop, "backward", "dropout (masks)")
    clock.wrap(m.dense, "forward", "dense forward")
    clock.wrap(m.dense, "backward", "dense backward")
    for mod in (model_mod,):
        for attr in ("softmax_cross_entropy",):
            if hasattr(mod, attr):
                clock.wrap(mod, attr, "softmax cross-entropy")
    if hasattr(m.drop, "backward_into"):
        clock.wrap(m.drop, "backward_into", "dropout (masks)")
    clock.wrap(m, "zero_grad", "zero grads")
    clock.wrap(trainer_mod, "clip_grad_norm", "clipping")
    clock.wrap(tr.adam, "step", "adam")
    from fastlstm.backends import get_backend
    be = get_backend(m.lstm.backend) if m.lstm.backend != "auto" else None
    if be is None:
        from fastlstm.backends import available_backends
        be = get_backend("c" if "c" in available_backends() else "numpy")
    clock.wrap(be, "forward", KERNEL_PHASES[0])
    clock.wrap(be, "backward", KERNEL_PHASES[1])
    return be


#: --compare's variants: (CharModel.fold_embedding, LSTM._reuse_buffers).
VARIANTS = {"fold, reused buffers": (True, True), "no fold, reused buffers": (False, True),
            "fold, fresh buffers": (True, False)}


def compare(tr, args):
    """Alternate the variants round by round in one process; print their step times."""
    times = {k: [] for k in VARIANTS}
    for _ in range(args.rounds):
        for name, (fold, reuse) in VARIANTS.items():
            tr.model.fold_embedding, tr.model.lstm._reuse_buffers = fold, reuse
            tr.train_step()  # the first step of a variant pays its first-call costs
            t0 = time.perf_counter()
            for _ in range(args.steps):
                tr.train_step()
            times[name].append((time.perf_counter() - t0) / args.steps * 1e3)
    print(f"{args.steps} steps x {args.rounds} rounds per variant, alternating")
    print()
    print("| variant | median ms per step | fastest | every round |")
    print("| --- | ---: | ---: | --- |")
    for name, t in times.items():
        print(f"| {name} | {statistics.median(t):.1f} | {min(t):.1f} | {', '.join(f'{x:.0f}' for x in t)} |")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--text", help="training text (default: the trainer's corpus option)")
    ap.add_argument("--steps", type=int, default=30, help="timed steps (default 30)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first (default 3)")
    ap.add_argument("--rounds", type=int, default=1, help="timed rounds; the fastest is shown (default 1)")
    ap.add_argument("--defaults", action="store_true", help="fastlstm train's defaults instead of the peer setup")
    ap.add_argument("--no-fold", action="store_true", help="turn the embedding fold off (when the trainer has it)")
    ap.add_argument("--compare", action="store_true",
                    help="alternate the fold and the buffer reuse on and off instead of the phase table")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    from fastlstm.charlm.threads import compute_threads
    tr = make_trainer(args)
    if args.compare:
        with compute_threads():
            for _ in range(args.warmup):
                tr.train_step()
            compare(tr, args)
        return
    clock = PhaseClock()
    rounds = []
    with compute_threads():
        for _ in range(args.warmup):
            tr.train_step()
        be = instrument(tr, clock)
        for _ in range(args.rounds):
            clock.total.clear()
            step = 0.0
            for _ in range(args.steps):
                t0 = time.perf_counter()
                tr.train_step()
                step += time.perf_counter() - t0
            rounds.append((step, dict(clock.total)))
    n = args.steps
    step, totals = min(rounds, key=lambda r: r[0])
    timed = sum(totals.values())
    rows = sorted(totals.items(), key=lambda kv: -kv[1]) + [("other (Python, allocations)", step - timed)]
    print(f"backend {be.NAME}, {n} steps x {args.rounds} rounds, fastest round {step / n * 1e3:.1f} ms per step, "
          f"{tr.opts['seq_len'] * tr.opts['batch_size'] * n / step:,.0f} chars/s "
          f"(every round: {', '.join(f'{r[0] / n * 1e3:.0f}' for r in rounds)} ms per step)")
    print()
    print("| phase | ms | % of step |")
    print("| --- | ---: | ---: |")
    for phase, t in rows:
        print(f"| {phase} | {t / n * 1e3:.2f} | {100 * t / step:.1f} |")
    kernels = sum(totals.get(p, 0.0) for p in KERNEL_PHASES)
    print(f"| **outside the LSTM kernels** | **{(step - kernels) / n * 1e3:.2f}** | "
          f"**{100 * (step - kernels) / step:.1f}** |")


if __name__ == "__main__":
    sys.exit(main())
