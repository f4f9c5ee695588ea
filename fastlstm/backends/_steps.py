"""Step order for variable lengths and the reverse direction (the C backend).

The C loops know one thing about lengths: step s runs the first ``batch[s]``
rows, and the per-step arrays are packed, step after step, as in torch's
PackedSequence. ``StepOrder`` maps a padded (T, N, ...) batch to that form
and back: the rows sorted by length (longest first, ties in batch order),
and for each packed row the time index it reads: s, or ``len - 1 - s`` in
the reverse direction (each sequence runs from its own last step down to 0).
Padded positions are never read.
"""

from __future__ import annotations

import threading

import numpy as np

#: Bytes of scratch buffers each thread keeps between calls (``scratch``).
SCRATCH_KEEP_BYTES = 128 << 20

_POOL = threading.local()


def scratch(slot: str, shape: tuple[int, ...], dtype) -> np.ndarray:
    """A C-contiguous array for use within one backend call: this thread's buffer for
    ``slot``, kept between calls. Why: a fresh array of a few MB is new pages, and
    touching them costs a page fault each (about 10 ms per call of the reverse
    direction's copies at T=50, N=30, H=300). Arrays above ``SCRATCH_KEEP_BYTES`` in
    all are fresh ones. Two slots never share memory; a slot's array is valid until
    this thread asks for that slot again."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape)) * dtype.itemsize
    pool = getattr(_POOL, "buffers", None)
    if pool is None:
        pool = _POOL.buffers = {}
    buf = pool.get(slot)
    if buf is None or buf.nbytes < nbytes:
        kept = sum(b.nbytes for k, b in pool.items() if k != slot)
        if kept + nbytes > SCRATCH_KEEP_BYTES:
            return np.empty(shape, dtype)
        buf = pool[slot] = np.empty(max(nbytes, 1), np.uint8)
    return buf[:nbytes].view(dtype).reshape(shape)


def move_rows(src_rows, src, dst):
    """dst[r] = src[src_rows[r]], zeros where src_rows[r] is -1 (NumPy; the C backend
    passes its own, ``_c.move_rows``, which writes each row once)."""
    valid = src_rows >= 0
    if bool(valid.all()):
        np.take(src, src_rows, axis=0, out=dst)
        return
    dst[...] = 0
    dst[valid] = src[src_rows[valid]]


class StepOrder:
    """Where each packed row of a call lives in the padded batch.

    Attributes
    ----------
    perm : [N] intp
        Sorted row r is batch row ``perm[r]``.
    batch : [steps] intp
        Rows of each step (non-increasing, each >= 1).
    steps, rows : int
        Steps that run anything (the longest length) and packed rows (the sum
        of the lengths).
    identity : bool
        Every row runs all T steps forward: the packed arrays are the padded
        ones, reshaped, and nothing needs moving.
    """

    def __init__(self, lengths, T: int, N: int, reverse: bool, move=move_rows):
        """``move(src_rows, src, dst)``: the row mover of ``packed`` and ``unpack``
        (``move_rows``'s contract)."""
        self._move = move
        self._T, self._N = T, N
        lens = np.full(N, T, np.intp) if lengths is None else np.asarray(lengths, np.intp)
        full = bool(np.all(lens == T))
        self.identity = not reverse and full
        # every row runs all T steps backwards: the packed arrays are the padded ones with
        # time reversed, moved by slices (whole steps) rather than row by row
        self.reversed = reverse and full and T > 0 and N > 0
        self.perm = np.argsort(-lens, kind="stable")
        self.sorted_lengths = lens[self.perm]
        self.steps = int(self.sorted_lengths[0]) if N else 0
        # rows with a length above s, for every step s (lengths are sorted descending)
        self.batch = np.searchsorted(-self.sorted_lengths, -np.arange(self.steps), side="left")
        self.batch = self.batch.astype(np.intp)
        self._offsets = np.concatenate([[0], np.cumsum(self.batch)]).astype(np.intp)
        self.rows = int(self._offsets[-1])
        step = np.repeat(np.arange(self.steps, dtype=np.intp), self.batch)
        self._sorted_row = np.arange(self.rows, dtype=np.intp) - self._offsets[step]
        self._step = step
        self.n_idx = self.perm[self._sorted_row]
        self.t_idx = self.sorted_lengths[self._sorted_row] - 1 - step if reverse else step
        ran = self.sorted_lengths > 0
        self._last = self._offsets[self.sorted_lengths[ran] - 1] + np.flatnonzero(ran)
        self._ran = ran
        # each packed row's row of the padded batch viewed as [T * N, F]; its inverse
        # (-1 at padded positions) on first use
        self._padded_row = (self.t_idx * N + self.n_idx).astype(np.intp)
        self._packed_row = None

    def packed(self, a, slot=None):
        """[T, N, F] -> [rows, F]: the rows in step order (a view when identity); into
        this thread's scratch buffer ``slot`` when given (see ``scratch``)."""
        F = a.shape[2]
        if self.identity:
            return a.reshape(self.rows, F)
        out = np.empty((self.rows, F), a.dtype) if slot is None else scratch(slot, (self.rows, F), a.dtype)
        if self.reversed:
            np.copyto(out.reshape(a.shape), a[::-1])
        else:
            self._move(self._padded_row, np.ascontiguousarray(a).reshape(-1, F), out)
        return out

    def unpack(self, packed, out):
        """out [T, N, F] = packed rows at their places, zero at padded positions."""
        if self.identity:
            if not np.may_share_memory(packed, out):
                out.reshape(self.rows, out.shape[2])[...] = packed
            return
        if self.reversed:
            np.copyto(out, packed.reshape(out.shape)[::-1])
            return
        if not (out.flags.c_contiguous and packed.flags.c_contiguous and packed.ndim == 2):
            out[...] = 0
            out[self.t_idx, self.n_idx] = packed
            return
        if self._packed_row is None:
            inverse = np.full(self._T * self._N, -1, np.int64)
            inverse[self._padded_row] = np.arange(self.rows, dtype=np.int64)
            self._packed_row = inverse
        self._move(self._packed_row, packed, out.reshape(-1, out.shape[2]))

    def sorted(self, a):
        """[N, F] batch rows -> [N, F] in sorted order (a copy)."""
        return np.ascontiguousarray(a[self.perm])

    def unsort(self, a, out):
        """out [N, F] (batch order) = a [N, F] (sorted order)."""
        out[self.perm] = a

    @property
    def padded_rows(self):
        """[rows] intp: each packed row's row in the padded batch viewed as [T * N, F]."""
        return self._padded_row

    def final(self, packed, initial, out, placed=False):
        """out [N, F] = each row's value at its last step (packed [rows, F]; with
        ``placed`` the padded [T * N, F] instead), or ``initial`` [N, F] (batch order) for
        a length of 0."""
        out[...] = initial
        last = self._padded_row[self._last] if placed else self._last
        out[self.perm[self._ran]] = packed[last]

    def h_prev(self, h0, y, slot=None):
        """[rows, K]: the h each packed row read, h0 (batch order) at its first
        step, else y [T, N, K] at its previous step (in the direction of the run);
        into scratch buffer ``slot`` when given."""
        shape = (self.rows, h0.shape[1])
        hp = np.empty(shape, h0.dtype) if slot is None else scratch(slot, shape, h0.dtype)
        if self.reversed:  # the rows in batch order (a stable sort of equal lengths)
            N = h0.shape[0]
            hp[:N] = h0
            hp[N:] = y[:0:-1].reshape(-1, h0.shape[1])  # step s >= 1 reads time T - s
            return hp
        # step 0's rows (the first batch[0]) read h0, every later row y where its sequence
        # ran at the step before
        n0 = int(self.batch[0]) if self.steps else 0
        hp[:n0] = h0[self.n_idx[:n0]]
        prev = self._offsets[self._step[n0:] - 1] + self._sorted_row[n0:]
        if y.flags.c_contiguous:
            self._move(self._padded_row[prev], y.reshape(-1, y.shape[2]), hp[n0:])
        else:
            hp[n0:] = y[self.t_idx[prev], self.n_idx[prev]]
        return hp
