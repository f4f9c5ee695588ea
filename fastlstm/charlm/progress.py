"""What ``fastlstm train`` shows while it runs: a tqdm bar on a terminal (steps, or seconds of
--max-time), else a plain line every few seconds; and the small formatters its messages share.
The run loop owns one ``Progress`` per session and writes every message through it.
"""

import math
import sys
import time

__all__ = ["PROGRESS_MODES", "Progress", "backend_label", "hms"]

#: --progress: "auto" is a bar on a terminal, else lines; "none" prints nothing.
PROGRESS_MODES = ("auto", "bar", "lines", "none")


class Progress:
    """A tqdm bar on a terminal (when tqdm is installed), else plain lines every ``every`` seconds."""

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

    def update(self, steps_done, epoch, loss, cps, left):
        if self.bar is not None:
            if self.by_time:
                self.bar.update(min(time.perf_counter() - self.t0, self.bar.total) - self.bar.n)
            else:
                self.bar.update(steps_done - self.bar.n)
            self.bar.set_postfix_str(f"step {steps_done} epoch {epoch:.1f} loss {loss:.3f} {cps:,.0f} chars/s "
                                     f"{hms(left)} left", refresh=False)
            return
        if self.mode == "lines":
            now = time.perf_counter()
            if now - self.last_line >= self.every:
                self.last_line = now
                self.write(f"step {steps_done} epoch {epoch:.2f} loss {loss:.4f} {cps:,.0f} chars/s "
                           f"{hms(left)} left")

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


def backend_label(name):
    """A backend name for messages; "auto" says which backend it picks here."""
    if name != "auto":
        return name
    from ..backends import available_backends
    return "auto (c)" if "c" in available_backends() else "auto (numpy)"


def hms(seconds):
    """Seconds as mm:ss, or h:mm:ss from an hour; "?" when unknown."""
    if seconds is None or not math.isfinite(seconds):
        return "?"
    s = int(max(seconds, 0) + 0.5)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60:02d}:{s % 60:02d}"
