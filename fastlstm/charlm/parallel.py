"""Data-parallel training over MPI: whether ``fastlstm train`` runs under an MPI launcher, and the
``Group`` of its ranks (each rank's rows of a global batch, the gradient Allreduce of the model's
one flat buffer, the agreed stop, the sums and broadcasts validation needs, the kernel threads a
rank may use). mpi4py is imported only when a launcher started more than one rank.
"""

import os
import queue
import threading
import time

import numpy as np

__all__ = ["MPI_MISSING", "OVERLAP_ENV", "STOP_DONE", "STOP_EARLY", "STOP_INTERRUPTED", "Group", "connect",
           "launcher_size"]

#: What launchers set in each rank's environment: the number of ranks (Open MPI; MPICH/Hydra
#: and Intel MPI).
SIZE_VARIABLES = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE")
#: ... and this rank's number.
RANK_VARIABLES = ("OMPI_COMM_WORLD_RANK", "PMI_RANK")
#: Why the ranks stop, in increasing precedence (the ranks agree on the largest).
STOP_DONE, STOP_EARLY, STOP_INTERRUPTED = 1, 2, 3
#: "0" reduces the gradients after the whole backward (one Allreduce of the flat buffer);
#: otherwise (the default) each layer's part is reduced, by a thread, while the layers below
#: run their backward.
OVERLAP_ENV = "FASTLSTM_MPI_OVERLAP"
MPI_MISSING = ("this run was started by an MPI launcher with {size} ranks, but mpi4py is not installed: "
               "install it with `pip install 'fastlstm[mpi]'` (mpi4py and Open MPI), or run without mpiexec")


def _launcher_number(names, environ):
    """The first of the variables ``names`` that holds a number, or None."""
    environ = os.environ if environ is None else environ
    for name in names:
        value = environ.get(name, "").strip()
        if value.isdigit():
            return int(value)
    return None


def launcher_size(environ=None):
    """The number of ranks an MPI launcher started (1 outside one)."""
    size = _launcher_number(SIZE_VARIABLES, environ)
    return 1 if size is None else max(1, size)


def launcher_rank(environ=None):
    """This process's rank under an MPI launcher (0 outside one)."""
    rank = _launcher_number(RANK_VARIABLES, environ)
    return 0 if rank is None else rank


def connect():
    """The Group of this job's ranks, or None when one process runs (no launcher, or one rank).

    Raises RuntimeError (naming the extra to install) when a launcher started several ranks
    and mpi4py is missing.
    """
    size = launcher_size()
    if size <= 1:
        return None
    try:
        from mpi4py import MPI
    except ImportError:
        raise RuntimeError(MPI_MISSING.format(size=size)) from None
    comm = MPI.COMM_WORLD
    return Group(comm, MPI) if comm.Get_size() > 1 else None


class Group:
    """The ranks of one data-parallel run, on an MPI communicator.

    Each rank computes a contiguous share of every global batch's rows (``rows``); the
    gradients are averaged by Allreduce on the model's flat gradient buffer (``average``, with
    each rank's share of the targets as its weight), in contiguous pieces that a thread
    reduces while the backward goes on (``start_average``, ``wait``) where MPI allows threads
    and $FASTLSTM_MPI_OVERLAP is not "0"; the loss and the decision to stop go in one small
    Allreduce each.

    Attributes
    ----------
    rank, size : int
        This rank and the number of ranks.
    comm_seconds : float
        Time spent in the gradient Allreduce (and waiting there for the other ranks) so far.
    wait_seconds : float
        Time the training thread waited for the gradient reduction (``wait``; with ``average``
        called directly, the whole Allreduce): the part of ``comm_seconds`` not overlapped.
    overlap : bool
        Whether ``start_average`` reduces in the background.
    comm_bytes : int
        Bytes of the gradient buffer reduced so far (each rank sends and receives about
        twice that over a ring).
    """

    def __init__(self, comm, mpi):
        self.comm = comm
        self._mpi = mpi
        self.rank = comm.Get_rank()
        self.size = comm.Get_size()
        self.comm_seconds = 0.0
        self.wait_seconds = 0.0
        self.comm_bytes = 0
        self.overlap = (os.environ.get(OVERLAP_ENV, "1").strip() != "0"
                        and mpi is not None and mpi.Query_thread() >= mpi.THREAD_SERIALIZED)
        self._pending = queue.Queue()
        self._reducer = None
        self._failure = None

    @property
    def is_root(self):
        return self.rank == 0

    def rows(self, n):
        """This rank's rows [start, stop) of a batch of n rows: contiguous shares whose sizes
        differ by at most one (equal when the rank count divides n)."""
        return self.rank * n // self.size, (self.rank + 1) * n // self.size

    def average(self, flat, weight):
        """Replace every rank's ``flat`` by the sum over the ranks of ``weight * flat`` (the
        gradient of the global batch's mean loss when ``weight`` is the rank's share of its
        targets), with one in-place Allreduce."""
        if weight != 1.0:
            flat *= flat.dtype.type(weight)
        t = time.perf_counter()
        self.comm.Allreduce(self._mpi.IN_PLACE, flat, op=self._mpi.SUM)
        self.comm_seconds += time.perf_counter() - t
        self.comm_bytes += flat.nbytes

    def start_average(self, flat, weight):
        """``average`` of this piece of the gradients, in the background where ``overlap``
        (pieces are reduced in the order given; every rank gives the same pieces in the same
        order). Call ``wait`` before any other communication."""
        if not self.overlap:
            t = time.perf_counter()
            self.average(flat, weight)
            self.wait_seconds += time.perf_counter() - t
            return
        if self._reducer is None:
            self._reducer = threading.Thread(target=self._reduce_pieces, name="fastlstm-allreduce", daemon=True)
            self._reducer.start()
        self._pending.put((flat, weight))

    def _reduce_pieces(self):
        while True:
            flat, weight = self._pending.get()
            try:
                if self._failure is None:
                    self.average(flat, weight)
            except BaseException as e:  # noqa: BLE001 - handed to the training thread by wait()
                self._failure = e
            finally:
                self._pending.task_done()

    def wait(self):
        """Until every piece given to ``start_average`` is reduced (re-raises its error)."""
        if self._reducer is not None:
            t = time.perf_counter()
            self._pending.join()
            self.wait_seconds += time.perf_counter() - t
        if self._failure is not None:
            failure, self._failure = self._failure, None
            raise failure

    def sum(self, *values):
        """The sums over the ranks of a few floats, identical on every rank (the root's)."""
        buf = np.array(values, dtype=np.float64)
        self.comm.Allreduce(self._mpi.IN_PLACE, buf, op=self._mpi.SUM)
        self.comm.Bcast(buf, root=0)
        return tuple(float(v) for v in buf)

    def agree_stop(self, reason):
        """The stop every rank takes: the largest of the ranks' reasons (0: go on, or one of
        STOP_DONE, STOP_EARLY, STOP_INTERRUPTED), so that a time limit or a Ctrl-C seen by one
        rank stops all of them at the same step."""
        buf = np.array([reason], dtype=np.int64)
        self.comm.Allreduce(self._mpi.IN_PLACE, buf, op=self._mpi.MAX)
        return int(buf[0])

    def broadcast(self, obj):
        """The root's ``obj`` on every rank."""
        return self.comm.bcast(obj, root=0)

    def broadcast_array(self, array):
        """Overwrite ``array`` on every rank with the root's (in place)."""
        self.comm.Bcast(array, root=0)

    def gather_errors(self, error):
        """Every rank's error message (None where it had none), as a list by rank."""
        return self.comm.allgather(error)

    def barrier(self):
        self.comm.Barrier()

    def abort(self, code):
        """End every rank of the job now (the launcher reports it)."""
        self.comm.Abort(code)

    def kernel_threads(self):
        """Threads the LSTM kernels of this rank should use: the CPUs it is bound to, or when
        the launcher did not bind it, the machine's CPUs shared among its ranks on this node."""
        local = self.comm.Split_type(self._mpi.COMM_TYPE_SHARED)  # collective: every rank calls it
        try:
            on_node = local.Get_size()
        finally:
            local.Free()
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        if cpus < (os.cpu_count() or cpus):
            return max(1, cpus)  # bound by the launcher
        return max(1, cpus // on_node)
