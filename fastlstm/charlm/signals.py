"""How a training run reacts to Ctrl-C and to termination signals.

``StopRequests`` turns SIGINT (and, under MPI, SIGTERM and SIGHUP) into a request that the run
loop honours after the current step. ``SaveOnSignal`` is for the root rank of an MPI run: Open
MPI's launcher answers Ctrl-C by sending every rank SIGTERM and, a quarter of a second later,
SIGKILL, too soon for the ranks to finish a step and stop together. So the root writes the
last complete state from a thread the moment the signal arrives (the thread is woken through
``signal.set_wakeup_fd``; the main thread may be inside a kernel or a collective).
"""

import contextlib
import os
import signal
import sys
import threading

__all__ = ["SaveOnSignal", "StopRequests"]

#: The signals that stop an MPI run (launchers and schedulers send SIGTERM; SIGHUP when the
#: terminal goes away).
MPI_STOP_SIGNALS = ("SIGINT", "SIGTERM", "SIGHUP")


def _signals(names):
    return [getattr(signal, n) for n in names if hasattr(signal, n)]


class StopRequests:
    """A context manager: while it is active, the signals it handles set ``requested``.

    In one process only SIGINT is handled, and a second one raises KeyboardInterrupt at once
    (to leave a stuck run). Under MPI (``mpi=True``) SIGTERM and SIGHUP are handled too and a
    second signal changes nothing: a rank that left its loop alone would leave the others
    waiting in a collective. Handlers are installed from the main thread only.
    """

    def __init__(self, mpi=False):
        self.mpi = mpi
        self.requested = False
        self.signal_name = None
        self._previous = {}

    def _handle(self, signum, frame):
        if self.requested and not self.mpi:
            raise KeyboardInterrupt
        self.requested = True
        self.signal_name = signal.Signals(signum).name

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for s in _signals(MPI_STOP_SIGNALS if self.mpi else ("SIGINT",)):
                with contextlib.suppress(ValueError, OSError):
                    self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc):
        for s, old in self._previous.items():
            signal.signal(s, old)
        self._previous.clear()


class SaveOnSignal:
    """While active (on the root rank of an MPI run, inside ``StopRequests(mpi=True)``): when
    SIGINT, SIGTERM or SIGHUP arrives, a thread writes the checkpoint of the last complete
    state at once (``trainer.save``, which holds the trainer's state lock) and says so.

    The main thread carries on; the ranks then stop together after the step, unless the
    launcher kills them first: the checkpoint is written either way (atomically, so a kill in
    the middle of the write leaves the previous one).
    """

    def __init__(self, trainer, say, flush=None):
        self.trainer = trainer
        self.say = say
        self.flush = flush  # called before the checkpoint is written (the metrics log)
        self.saved_step = None
        self._stop_numbers = {int(s) for s in _signals(MPI_STOP_SIGNALS)}
        self._thread = None
        self._fds = None
        self._previous_fd = None
        self._closing = False

    def __enter__(self):
        if threading.current_thread() is not threading.main_thread():
            return self
        r, w = os.pipe()
        os.set_blocking(w, False)
        try:
            self._previous_fd = signal.set_wakeup_fd(w, warn_on_full_buffer=False)
        except (ValueError, OSError):
            os.close(r)
            os.close(w)
            return self
        self._fds = (r, w)
        self._thread = threading.Thread(target=self._watch, name="fastlstm-save-on-signal", daemon=True)
        self._thread.start()
        return self

    def _watch(self):
        r = self._fds[0]
        while True:
            try:
                got = os.read(r, 64)
            except OSError:
                return
            if self._closing or not got:
                return
            if self._stop_numbers.intersection(got):
                self._save()
                return

    def _save(self):
        tr = self.trainer
        try:
            if self.flush is not None:
                self.flush()
            step = tr.save()
        except Exception as e:  # noqa: BLE001 - reported; the main thread's own save may still succeed
            print(f"fastlstm train: could not save on the signal: {e}", file=sys.stderr, flush=True)
            return
        self.saved_step = step
        self.say(f"signal received: checkpoint of step {step} saved in {tr.out}")
        with contextlib.suppress(Exception):
            sys.stdout.flush()

    def __exit__(self, *exc):
        if self._fds is None:
            return
        self._closing = True
        r, w = self._fds
        signal.set_wakeup_fd(self._previous_fd if self._previous_fd is not None else -1)
        with contextlib.suppress(OSError):
            os.write(w, b"\0")
        self._thread.join()
        os.close(r)
        os.close(w)
        self._fds = None
