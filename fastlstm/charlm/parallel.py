"""Data-parallel training over MPI: whether ``fastlstm train`` runs under an MPI launcher, and the
``Group`` of its ranks (each rank's rows of a global batch, the gradient Allreduce of the model's
one flat buffer, the agreed stop, the sums and broadcasts validation needs, the kernel threads a
rank may use). mpi4py is imported only when a launcher started more than one rank.
"""

import os
import time

import numpy as np

__all__ = ["MPI_MISSING", "STOP_DONE", "STOP_EARLY", "STOP_INTERRUPTED", "Group", "connect", "launcher_size"]

#: What launchers set in each rank's environment: the number of ranks (Open MPI; MPICH/Hydra
#: and Intel MPI).
SIZE_VARIABLES = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE")
#: Why the ranks stop, in increasing precedence (the ranks agree on the largest).
STOP_DONE, STOP_EARLY, STOP_INTERRUPTED = 1, 2, 3
MPI_MISSING = ("this run was started by an MPI launcher with {size} ranks, but mpi4py is not installed: "
               "install it with `pip install 'fastlstm[mpi]'` (mpi4py and Open MPI), or run without mpiexec")


def launcher_size(environ=None):
    """The number of ranks an MPI launcher started (1 outside one)."""
    environ = os.environ if environ is None else environ
    for name in SIZE_VARIABLES:
        value = environ.get(name, "")
        if value.strip().isdigit():
            return max(1, int(value))
    return 1


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
    gradients are averaged by one Allreduce of the model's flat gradient buffer per step
    (``average``, with each rank's share of the targets as its weight); the loss and the
    decision to stop go in one small Allreduce each.

    Attributes
    ----------
    rank, size : int
        This rank and the number of ranks.
    comm_seconds : float
        Time spent in the gradient Allreduce (and waiting there for the other ranks) so far.
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
        self.comm_bytes = 0

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
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        if cpus < (os.cpu_count() or cpus):
            return max(1, cpus)  # bound by the launcher
        local = self.comm.Split_type(self._mpi.COMM_TYPE_SHARED)
        try:
            return max(1, cpus // local.Get_size())
        finally:
            local.Free()
