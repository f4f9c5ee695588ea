"""The run loop of ``fastlstm train``: ``prepare_run`` checks everything before anything is written
and returns a ready Trainer; ``run_training`` steps it until a limit or Ctrl-C, validating,
checkpointing, logging metrics and drawing the loss curve. The CLI and the tests call these two.
Under MPI (a Trainer with a ``parallel.Group``) every rank runs this loop in step; the ranks agree
on when to stop, and the root alone writes checkpoints, metrics, the plot and progress.
"""

import contextlib
import math
import os
import sys
import time
from pathlib import Path

from .. import _config
from .checkpoints import BEST_JSON, BEST_NPZ, CHECKPOINT_JSON, CheckpointError, copy_checkpoint, load_checkpoint
from .data import Vocab, load_corpus
from .metrics import METRICS_FILE, PLOT_FILE, MetricsLog, plot_metrics, truncate_metrics
from .options import DEFAULT_EPOCHS, resolve_options
from .parallel import STOP_DONE, STOP_EARLY, STOP_INTERRUPTED
from .progress import Progress, backend_label, hms
from .signals import SaveOnSignal, StopRequests
from .threads import compute_threads
from .trainer import Trainer

__all__ = ["prepare_run", "prepare_text", "run_training"]


def prepare_text(opts):
    """Load the corpus named by the options, apply --lowercase. Returns (text, source)."""
    text, source = load_corpus(opts["text"], opts["corpus"], opts["encoding"])
    if opts["lowercase"]:
        text = text.lower()
    return text, source


def prepare_run(given, out, *, resume=False, overwrite=False, group=None):
    """Check everything a run needs before anything is written. Returns a ready Trainer (of
    ``group``'s ranks, with a ``parallel.Group``; every rank reads the same checkpoint).

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
    trainer = Trainer(opts, text, vocab, out=out, source=source, group=group)
    if meta is not None:
        trainer.load_state(meta, arrays)
    return trainer


def step_limit(opts, steps_per_epoch):
    """The step a run stops at (--max-steps, --epochs, or DEFAULT_EPOCHS without any limit),
    or None when only --max-time bounds it."""
    max_steps = opts["max_steps"]
    if opts["epochs"] is not None:
        max_steps = min(max_steps or math.inf, opts["epochs"] * steps_per_epoch)
    if max_steps is None and opts["max_time"] is None:
        max_steps = DEFAULT_EPOCHS * steps_per_epoch
    return max_steps


class _Session:
    """One call of run_training: its limits and clock, the running loss and rate, the best
    validation loss so far, and where it reports (the progress display and the metrics log)."""

    def __init__(self, trainer, bar, max_steps, max_time, step_callback):
        self.trainer = trainer
        self.bar = bar
        self.say = bar.write
        self.max_steps = max_steps
        self.max_time = max_time
        self.step_callback = step_callback
        self.metrics = None  # the MetricsLog, while the loop runs
        self.losses = []  # this session's, one per step
        self.ema = None  # smoothed training loss for the messages
        self.cps = 0.0  # characters per second of this session
        history = trainer.val_history
        self.last_val = history[-1]["val_loss"] if history else None
        self.best_val = min((r["val_loss"] for r in history), default=math.inf)
        self.t0 = time.perf_counter()
        self.elapsed0 = trainer.elapsed
        self.chars0 = trainer.chars_seen

    def seconds(self):
        return time.perf_counter() - self.t0

    def limit_reached(self):
        return ((self.max_steps is not None and self.trainer.steps_done >= self.max_steps)
                or (self.max_time is not None and self.seconds() >= self.max_time))

    def stop_reason(self, requests):
        """Why to stop before the next step (0: go on); with a Group, the ranks' agreed reason
        (a time limit or a signal seen by one rank stops all of them at this step)."""
        tr = self.trainer
        reason = (STOP_DONE if self.limit_reached() else STOP_INTERRUPTED if requests.requested
                  else STOP_EARLY if tr.should_stop() else 0)
        return reason if tr.group is None else tr.group.agree_stop(reason)

    def train(self, requests):
        """Step until a limit, early stopping, a stop request or KeyboardInterrupt. Returns
        "done", "stopped" (early) or "interrupted"."""
        tr = self.trainer
        names = {STOP_DONE: "done", STOP_EARLY: "stopped", STOP_INTERRUPTED: "interrupted"}
        try:
            while True:
                reason = self.stop_reason(requests)
                if reason:
                    return names[reason]
                loss = tr.train_step()
                self.after_step(loss)
        except KeyboardInterrupt:
            if tr.updating:  # stopped inside the parameter update: the state is torn
                self.say(f"stopped during an update: nothing saved; the last checkpoint in {tr.out} is kept")
                raise
            tr.undo_step()  # the step did not finish: undo its draws
            return "interrupted"

    def after_step(self, loss):
        tr = self.trainer
        self.losses.append(loss)
        tr.elapsed = self.elapsed0 + self.seconds()
        self.cps = (tr.chars_seen - self.chars0) / max(self.seconds(), 1e-9)
        self.ema = loss if self.ema is None else 0.95 * self.ema + 0.05 * loss
        self.metrics.log_step(tr.steps_done, tr.epoch, tr.elapsed, loss)
        if self.step_callback is not None:
            self.step_callback(tr, loss)
        self.bar.update(tr.steps_done, tr.epoch, self.ema, self.cps, self.time_left())
        if tr.steps_done % tr.opts["eval_every"] == 0:
            tr.sync_parameters()
            tr.save(best=self.validate())

    def time_left(self):
        left = None
        if self.max_time is not None:
            left = self.max_time - self.seconds()
        if self.max_steps is not None and self.losses:
            by_steps = (self.max_steps - self.trainer.steps_done) * self.seconds() / len(self.losses)
            left = by_steps if left is None else min(left, by_steps)
        return left

    def validate(self):
        """Validation loss, sample, log line; returns whether it is the best so far."""
        tr = self.trainer
        v = self.last_val = tr.evaluate()
        improved = v < self.best_val
        self.best_val = min(v, self.best_val)
        lr = tr.adam.lr
        on_cadence = tr.steps_done % tr.opts["eval_every"] == 0
        if on_cadence:
            tr.after_validation(v < min((r["val_loss"] for r in tr.scheduled_validations()), default=math.inf))
        rec = {"step": tr.steps_done, "epoch": round(tr.epoch, 4), "time": round(tr.elapsed, 3), "val_loss": v}
        rec["sample"] = sample = tr.sample() if tr.opts["sample_length"] and tr.is_root else ""
        tr.val_history.append({"step": tr.steps_done, "time": rec["time"], "val_loss": v,
                               **({} if on_cadence else {"off_cadence": True})})
        self.metrics.log_validation(rec)
        rate = f", lr {lr:.3g}" + (f" -> {tr.adam.lr:.3g}" if tr.adam.lr != lr else "")
        self.say(f"step {tr.steps_done} epoch {tr.epoch:.2f} validation loss {v:.4f} "
                 f"(train {self.ema:.4f}, {self.cps:,.0f} chars/s, {hms(tr.elapsed)} trained{rate})"
                 if self.ema is not None else f"step {tr.steps_done} validation loss {v:.4f}{rate}")
        if sample:
            self.say("  | " + sample.replace("\n", "\n  | "))
        return improved

    def finish(self, status):
        """The last validation (unless one ran at this step) and the checkpoint."""
        tr = self.trainer
        improved = False
        if status != "interrupted" and (not tr.val_history or tr.val_history[-1]["step"] != tr.steps_done):
            improved = self.validate()
        self.metrics.flush()
        tr.save(best=improved)


def _start_metrics(trainer):
    """Metrics of a resumed run are cut back to its checkpoint; a new run (maybe --overwrite)
    starts without anything of an earlier one. Only the root touches the files."""
    if not trainer.is_root:
        return
    out = trainer.out
    out.mkdir(parents=True, exist_ok=True)
    if trainer.steps_done > 0:
        truncate_metrics(out / METRICS_FILE, trainer.steps_done)
        return
    for name in (METRICS_FILE, BEST_JSON, BEST_NPZ):
        with contextlib.suppress(FileNotFoundError):
            (out / name).unlink()


def _describe(trainer):
    o, V = trainer.opts, len(trainer.vocab)
    what = f"{len(trainer.train_ids):,} training / {len(trainer.val_ids):,} held-out characters"
    return (f"fastlstm train: {trainer.source}, {what}, vocabulary {V}; model "
            f"{o['input_mode']} -> LSTM({o['hidden_size']}) x {o['num_layers']} -> Dense({V}), "
            f"{sum(p.size for p in trainer.model.params.values()):,} parameters; "
            f"batch {o['batch_size']} x {o['seq_len']} chars, {trainer.steps_per_epoch} steps/epoch; "
            f"backend {backend_label(trainer.model.lstm.backend)}"
            + (f"; {trainer.group.size} MPI ranks" if trainer.group is not None else "")
            + (f"; resuming at step {trainer.steps_done}" if trainer.steps_done else ""))


def run_training(trainer, *, progress="auto", log_every=10.0, stream=None, step_callback=None,
                 write_plot=True):
    """Train until --epochs, --max-steps or --max-time (or Ctrl-C); checkpoint, metrics, PNG.

    Returns a dict: status ("done", "stopped" early or "interrupted"), step (steps done), losses (this
    session's, per step), val_loss (last), chars_per_s, elapsed (this session, seconds).
    ``step_callback(trainer, loss)`` runs after each step (tests use it).
    """
    out = trainer.out
    group, root = trainer.group, trainer.is_root
    _start_metrics(trainer)
    max_steps = step_limit(trainer.opts, trainer.steps_per_epoch)
    max_time = trainer.opts["max_time"]
    total = int(max_steps) if max_steps not in (None, math.inf) else None
    bar = Progress(progress if root else "none", total, trainer.steps_done, max_time=max_time, every=log_every,
                   stream=stream or sys.stdout)
    bar.write(_describe(trainer))
    run = _Session(trainer, bar, max_steps, max_time, step_callback)
    restored = None
    threads = group.kernel_threads() if group is not None else None
    saver = (SaveOnSignal(trainer, bar.write, lambda: run.metrics.flush()) if group is not None and root
             else contextlib.nullcontext())
    try:
        with StopRequests(mpi=group is not None) as requests, compute_threads(), \
                MetricsLog(out / METRICS_FILE if root else os.devnull) as run.metrics, saver, \
                (_config.thread_share(threads) if threads else contextlib.nullcontext()):
            status = run.train(requests)
            run.finish(status)
            if status != "interrupted" and trainer.opts.get("restore_best", True) and root:
                restored = _restore_best(trainer)
    finally:
        bar.close()
    note = plot_metrics(out / METRICS_FILE, out / PLOT_FILE) if write_plot and root else None
    session = run.seconds()
    if note:
        run.say(f"note: {note}")
    if status == "interrupted":
        run.say(f"interrupted at step {trainer.steps_done}: checkpoint saved in {out}; continue with "
                f"`fastlstm train --resume --out {out}`")
    else:
        b = min(trainer.val_history, key=lambda r: r["val_loss"])
        if status == "stopped":
            run.say(f"stopped early: no new best validation loss in {trainer.opts['patience']} validations")
        if restored is not None:
            run.say(f"restored the best state, step {restored['step']} (validation loss {restored['val_loss']:.4f}), "
                    f"as the run's final one; the last validation, at step {restored['last_step']}, gave "
                    f"{run.last_val:.4f} (--no-restore-best keeps the last state)")
        run.say(f"done: step {trainer.steps_done} (epoch {trainer.epoch:.2f}), validation loss "
                f"{b['val_loss'] if restored else run.last_val:.4f} (best {b['val_loss']:.4f} at step {b['step']}), "
                f"{run.cps:,.0f} chars/s over {hms(session)}; checkpoints, metrics and plot in {out}; "
                f"try `fastlstm generate --checkpoint {out}`")
    return {"status": status, "step": trainer.steps_done, "losses": run.losses, "val_loss": run.last_val,
            "final_val_loss": restored["val_loss"] if restored else run.last_val,
            "restored_step": restored["step"] if restored else None,
            "chars_per_s": run.cps, "elapsed": session}


def _restore_best(trainer):
    """Make the best validated state the run's final one: load best.npz into the trainer and
    make it the checkpoint too (early stopping's "restore best weights"). Returns the best
    validation's record (with "last_step", the step the run had reached), or None when the
    last state is the best one (nothing to do)."""
    history = trainer.val_history
    if not history:
        return None
    best = min(history, key=lambda r: (r["val_loss"], r["step"]))
    last_step = trainer.steps_done
    if best["step"] == last_step:
        return None
    meta, arrays = load_checkpoint(trainer.out, prefer_best=True)
    if int(meta["step"]) != best["step"]:  # best.npz is not that state (an older layout): keep the last
        return None
    trainer.load_state(meta, arrays)
    copy_checkpoint(trainer.out, meta, "checkpoint")
    return dict(best, last_step=last_step)
