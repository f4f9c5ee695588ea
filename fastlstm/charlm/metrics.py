"""A run's metrics: ``metrics.jsonl`` (one JSON object per training step and one per validation,
appended as the run goes, cut back to the checkpoint on resume) and the loss-curve PNG drawn
from it with matplotlib. The run loop writes through ``MetricsLog``; anything may read the file.
"""

import json
import os
from pathlib import Path

import numpy as np

from .data import atomic_write

__all__ = ["METRICS_FILE", "PLOT_FILE", "MetricsLog", "plot_metrics", "read_metrics", "truncate_metrics"]

METRICS_FILE = "metrics.jsonl"
PLOT_FILE = "loss.png"


class MetricsLog:
    """``metrics.jsonl`` opened for appending (a context manager)."""

    def __init__(self, path):
        # held open for the whole run (a line per step); __exit__ closes it
        self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._file.close()

    def log_step(self, steps_done, epoch, elapsed, loss):
        # formatted by hand: one line per step, and this is the cheapest way to write it
        self._file.write(f'{{"step": {steps_done}, "epoch": {epoch:.4f}, "time": {elapsed:.3f}, '
                         f'"loss": {loss!r}}}\n')

    def log_validation(self, record):
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def flush(self):
        self._file.flush()


def read_metrics(path):
    """The records of a metrics file, in order (lines that are not JSON, e.g. torn by a crash,
    are skipped) as (line, record) pairs."""
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            yield line, json.loads(line)
        except ValueError:
            continue


def truncate_metrics(path, steps_done):
    """Drop metric lines past ``steps_done`` (written after the checkpoint a run resumes from)."""
    path = Path(path)
    if not path.is_file():
        return
    keep = [line for line, rec in read_metrics(path) if rec.get("step", 0) <= steps_done]
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
    for _, rec in read_metrics(metrics_path):
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
