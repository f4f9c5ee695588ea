"""Numba CUDA kernels of the ``cuda`` backend (used by fastlstm/backends/cuda.py).

``kernels(dtype)`` compiles one set per dtype: a register-blocked GEMM for the
all-steps products, the fused LSTM cell step forward and backward (one thread
per (batch, hidden) unit, all four gates together), both as one-step launches
and as persistent cooperative kernels that loop over time with a grid-wide
barrier and keep each block's slice of W_hh in shared memory when it fits.
Arrays are device arrays, C-contiguous, time-major; letters as in reference.py.
"""

import math
from functools import lru_cache

import numba
import numpy as np
from numba import cuda

SIMULATOR = bool(numba.config.ENABLE_CUDASIM)
# GEMM blocks: GEMM_THREADS x GEMM_THREADS threads, each computing a 4 x 4 piece
# of a GEMM_TILE x GEMM_TILE output tile. The simulator runs every thread as a
# Python thread, so it gets small blocks (tests run the GPU shape once too).
GEMM_THREADS = 4 if SIMULATOR else 16
GEMM_TILE = 4 * GEMM_THREADS
GEMM_K = 4 if SIMULATOR else 16    # depth of one shared-memory slab
#: Long sums (the all-steps gradient products over K = T*N rows, the bias
#: gradient) add SUM_SLAB terms into a partial and the partials into the total:
#: the float32 rounding error then grows like K/SUM_SLAB + SUM_SLAB, not like K.
SUM_SLAB = 256
#: Threads per block of the persistent kernels, given to the compiler as their
#: launch bound so that a block of this size always fits on one SM (register cap).
PERSISTENT_THREADS = 1024


@lru_cache(maxsize=None)
def kernels(dtype, gemm_threads=GEMM_THREADS, gemm_k=GEMM_K):
    """The compiled kernel set for float32 or float64 (a namespace object).

    ``gemm_threads`` sets the GEMM block's side (its tile is 4 times that),
    ``gemm_k`` the depth of its shared-memory slabs.
    """
    ft = numba.float32 if np.dtype(dtype) == np.float32 else numba.float64
    GEMM_THREADS = gemm_threads
    GEMM_TILE = 4 * gemm_threads
    GEMM_REG = 4
    GEMM_K = gemm_k
    zero, one = ft(0.0), ft(1.0)
    # The simulator's jit has no launch bounds (and no registers to cap).
    persistent_jit = cuda.jit if SIMULATOR else cuda.jit(launch_bounds=(PERSISTENT_THREADS, 1))
    fold_every = max(1, SUM_SLAB // GEMM_K)   # shared-memory slabs per partial sum

    @cuda.jit(device=True, inline=True)
    def sigmoid(z):
        # exp of a non-positive number only: no overflow for any z.
        e = math.exp(-abs(z))
        s = one / (one + e)
        return s if z >= zero else e * s

    @cuda.jit(device=True, inline=True)
    def slab_index(e, along_tile):
        """(tile index, depth index) of a slab's e-th element; consecutive e run
        along the tile when the operand is stored that way (coalesced loads)."""
        if along_tile:
            return e % GEMM_TILE, e // GEMM_TILE
        return e // GEMM_K, e % GEMM_K

    @cuda.jit(device=True, inline=True)
    def operand(X, stored_t, i, k, rows, depth):
        """Element [i, k] of an operand stored as X (X[k, i] when stored_t); 0 outside."""
        if i < rows and k < depth:
            return X[k, i] if stored_t else X[i, k]
        return zero

    @cuda.jit(device=True, inline=True)
    def store(C, m, p, v, bias, accumulate):
        """C[m, p] = v (+ bias[p] when there is a bias) (+ C[m, p] when accumulating)."""
        if bias.shape[0] > 0:
            v += bias[p]
        if accumulate:
            v += C[m, p]
        C[m, p] = v

    @cuda.jit
    def gemm(A, B, C, bias, ta, tb, accumulate):
        """C[M, P] (+)= op(A)[M, K] . op(B)[K, P] + bias[P]; op transposes when ta/tb.

        bias of length 0 means none. Block (GEMM_THREADS, GEMM_THREADS), a 1-D grid of
        ceil(M / GEMM_TILE) * ceil(P / GEMM_TILE) tiles (row-major over the tiles: grid x
        allows 2**31 - 1 blocks, where grid y's 65,535 would cap T*N at about 4.2M rows).
        """
        sA = cuda.shared.array((GEMM_K, GEMM_TILE), ft)   # sA[k, m]
        sB = cuda.shared.array((GEMM_K, GEMM_TILE), ft)   # sB[k, p]
        acc = cuda.local.array((GEMM_REG, GEMM_REG), ft)
        part = cuda.local.array((GEMM_REG, GEMM_REG), ft)   # the current SUM_SLAB terms
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        tid = ty * GEMM_THREADS + tx
        tiles_p = (C.shape[1] + GEMM_TILE - 1) // GEMM_TILE
        m0 = (cuda.blockIdx.x // tiles_p) * GEMM_TILE
        p0 = (cuda.blockIdx.x % tiles_p) * GEMM_TILE
        M = C.shape[0]
        P = C.shape[1]
        K = A.shape[0] if ta else A.shape[1]
        for r in range(GEMM_REG):
            for s in range(GEMM_REG):
                acc[r, s] = zero
                part[r, s] = zero
        for k0 in range(0, K, GEMM_K):
            # Each thread loads GEMM_K * GEMM_TILE / threads elements of each slab.
            # B stored untransposed is laid out as A stored transposed, hence "not tb".
            for e in range(tid, GEMM_K * GEMM_TILE, GEMM_THREADS * GEMM_THREADS):
                mm, kk = slab_index(e, ta)
                sA[kk, mm] = operand(A, ta, m0 + mm, k0 + kk, M, K)
                pp, kk = slab_index(e, not tb)
                sB[kk, pp] = operand(B, not tb, p0 + pp, k0 + kk, P, K)
            cuda.syncthreads()
            for kk in range(GEMM_K):
                for r in range(GEMM_REG):
                    a = sA[kk, ty + r * GEMM_THREADS]
                    for s in range(GEMM_REG):
                        part[r, s] += a * sB[kk, tx + s * GEMM_THREADS]
            cuda.syncthreads()
            if (k0 // GEMM_K) % fold_every == fold_every - 1 or k0 + GEMM_K >= K:
                for r in range(GEMM_REG):
                    for s in range(GEMM_REG):
                        acc[r, s] += part[r, s]
                        part[r, s] = zero
        for r in range(GEMM_REG):
            m = m0 + ty + r * GEMM_THREADS
            for s in range(GEMM_REG):
                p = p0 + tx + s * GEMM_THREADS
                if m < M and p < P:
                    store(C, m, p, acc[r, s], bias, accumulate)

    @cuda.jit
    def gemm_simple(A, B, C, bias, ta, tb, accumulate):
        """The same product as ``gemm``, one thread per output element, no shared memory.

        What the simulator runs in the layer tests (its threads are Python
        threads and the tiled kernel's barriers cost seconds there).
        """
        M = C.shape[0]
        P = C.shape[1]
        K = A.shape[0] if ta else A.shape[1]
        for e in range(cuda.grid(1), M * P, cuda.gridsize(1)):
            m = e // P
            p = e % P
            v = zero
            for k0 in range(0, K, SUM_SLAB):
                part = zero
                for k in range(k0, min(k0 + SUM_SLAB, K)):
                    part += (A[k, m] if ta else A[m, k]) * (B[p, k] if tb else B[k, p])
                v += part
            store(C, m, p, v, bias, accumulate)

    @cuda.jit
    def transpose(A, At):
        """At[j, i] = A[i, j]; one thread per element, grid-stride."""
        R, S = A.shape
        for e in range(cuda.grid(1), R * S, cuda.gridsize(1)):
            i = e // S
            j = e % S
            At[j, i] = A[i, j]

    @cuda.jit
    def swap01(A, B):
        """B[n, t, f] = A[t, n, f] for 3-D A (T, N, F)."""
        T, N, F = A.shape
        for e in range(cuda.grid(1), T * N * F, cuda.gridsize(1)):
            t = e // (N * F)
            n = (e // F) % N
            f = e % F
            B[n, t, f] = A[t, n, f]

    @cuda.jit
    def multiply(A, B, out):
        """out = A * B elementwise over flat (1-D views of) arrays."""
        for e in range(cuda.grid(1), out.shape[0], cuda.gridsize(1)):
            out[e] = A[e] * B[e]

    @cuda.jit
    def column_sums(A, out):
        """out[g] += sum over rows of A[:, g] (bias gradients), in SUM_SLAB partials."""
        R, S = A.shape
        for g in range(cuda.grid(1), S, cuda.gridsize(1)):
            s = zero
            for r0 in range(0, R, SUM_SLAB):
                part = zero
                for r in range(r0, min(r0 + SUM_SLAB, R)):
                    part += A[r, g]
                s += part
            out[g] += s

    @cuda.jit(device=True, inline=True)
    def unit_of(p, hb, j0, lens):
        """Work item p of a block owning hb units from j0: (unit within the block,
        batch row, unit, the row's length)."""
        n = p // hb
        return p % hb, n, j0 + p % hb, lens[n]

    @cuda.jit(device=True, inline=True)
    def split3(e, N, F):
        """(t, n, f) of flat element e of a (T, N, F) array."""
        return e // (N * F), (e // F) % N, e % F

    @cuda.jit(device=True, inline=True)
    def row_times(s, L, reverse):
        """Step s of a sequence of length L: (its time index, the time index of the step
        before it, the time index of the step after it). Forward the sequence runs
        t = 0 .. L-1, reverse t = L-1 .. 0."""
        if reverse:
            t = L - 1 - s
            return t, t + 1, t - 1
        return s, s - 1, s + 1

    @cuda.jit(device=True, inline=True)
    def forward_units(s, lens, reverse, gates, cs, y, out, h0, c0, WhhT, Ws, use_smem, j0, hb,
                      tid, nthreads):
        """Step s of every sequence still running (s < lens[n]), units j0 <= j < j0 + hb.

        gates[t] holds the input projection (+ bias) on entry and the activated
        gates on exit; the previous h, c come from h0/c0 at s = 0, else from y/cs
        at the previous step's time. out[t] receives o * tanh(c) (y itself, or the
        unprojected buffer when a projection follows). With use_smem the unit
        slice of W_hh is read from Ws[k, g, jj].
        """
        N = gates.shape[1]
        H = cs.shape[2]
        K = WhhT.shape[0]  # features of h: H, or P with a projection
        for p in range(tid, N * hb, nthreads):
            jj, n, j, L = unit_of(p, hb, j0, lens)
            if j < H and s < L:
                t, tp, _ = row_times(s, L, reverse)
                ai = gates[t, n, j]
                af = gates[t, n, H + j]
                ag = gates[t, n, 2 * H + j]
                ao = gates[t, n, 3 * H + j]
                for k in range(K):
                    hk = h0[n, k] if s == 0 else y[tp, n, k]
                    if use_smem:
                        base = k * 4 * hb + jj
                        ai += hk * Ws[base]
                        af += hk * Ws[base + hb]
                        ag += hk * Ws[base + 2 * hb]
                        ao += hk * Ws[base + 3 * hb]
                    else:
                        ai += hk * WhhT[k, j]
                        af += hk * WhhT[k, H + j]
                        ag += hk * WhhT[k, 2 * H + j]
                        ao += hk * WhhT[k, 3 * H + j]
                i = sigmoid(ai)
                f = sigmoid(af)
                g = math.tanh(ag)
                o = sigmoid(ao)
                c_prev = c0[n, j] if s == 0 else cs[tp, n, j]
                c = f * c_prev + i * g
                gates[t, n, j] = i
                gates[t, n, H + j] = f
                gates[t, n, 2 * H + j] = g
                gates[t, n, 3 * H + j] = o
                cs[t, n, j] = c
                out[t, n, j] = o * math.tanh(c)

    @cuda.jit(device=True, inline=True)
    def grad_h(s, L, reverse, n, col, gates, dy, dhT, W_hh, Ws, use_smem, jj, hb):
        """Gradient reaching h (feature col) at step s of row n: dy there, plus
        dhT at the sequence's last step, else dP of the step after it . W_hh."""
        t, _, tn = row_times(s, L, reverse)
        dh = dy[t, n, col]
        if s == L - 1:
            dh += dhT[n, col]
        else:
            for k in range(gates.shape[2]):
                w = Ws[k * hb + jj] if use_smem else W_hh[k, col]
                dh += gates[tn, n, k] * w
        return dh

    @cuda.jit(device=True, inline=True)
    def backward_units(s, lens, reverse, gates, cs, c0, dy, dhT, W_hh, Ws, use_smem, dc, dm,
                       proj, j0, hb, tid, nthreads):
        """Backward step s for units j0 <= j < j0 + hb of the rows still running:
        gates[t] becomes dP[t]; dc (N, H) carries each row's dc from the step after in
        and its dc out. With proj, the gradient reaching o * tanh(c) is dm (N, H),
        computed before; else it is grad_h. With use_smem, Ws[k, jj] = W_hh[k, j0 + jj].
        """
        N = gates.shape[1]
        H = cs.shape[2]
        for p in range(tid, N * hb, nthreads):
            jj, n, j, L = unit_of(p, hb, j0, lens)
            if j < H and s < L:
                t, tp, _ = row_times(s, L, reverse)
                if proj:
                    dh = dm[n, j]
                else:
                    dh = grad_h(s, L, reverse, n, j, gates, dy, dhT, W_hh, Ws, use_smem, jj, hb)
                i = gates[t, n, j]
                f = gates[t, n, H + j]
                g = gates[t, n, 2 * H + j]
                o = gates[t, n, 3 * H + j]
                c_prev = c0[n, j] if s == 0 else cs[tp, n, j]
                tc = math.tanh(cs[t, n, j])
                dct = dc[n, j] + dh * o * (one - tc * tc)
                gates[t, n, j] = dct * g * i * (one - i)
                gates[t, n, H + j] = dct * c_prev * f * (one - f)
                gates[t, n, 2 * H + j] = dct * i * (one - g * g)
                gates[t, n, 3 * H + j] = dh * tc * o * (one - o)
                dc[n, j] = dct * f

    @cuda.jit(device=True, inline=True)
    def first_dh(lens, reverse, gates, W_hh, Ws, use_smem, dhT, dh0, j0, hb, tid, nthreads):
        """dh0 = dP of each row's first step . W_hh for features j0 <= j < j0 + hb
        (dhT for a row of length 0)."""
        N = gates.shape[1]
        K = dh0.shape[1]
        for p in range(tid, N * hb, nthreads):
            jj, n, j, L = unit_of(p, hb, j0, lens)
            if j < K:
                if L == 0:
                    dh0[n, j] = dhT[n, j]
                else:
                    t0 = L - 1 if reverse else 0
                    s = zero
                    for k in range(gates.shape[2]):
                        w = Ws[k * hb + jj] if use_smem else W_hh[k, j]
                        s += gates[t0, n, k] * w
                    dh0[n, j] = s

    @cuda.jit
    def forward_step(s, lens, reverse, gates, cs, y, out, h0, c0, WhhT):
        """One launch per step: every (n, j) unit of step s, grid-stride."""
        H = cs.shape[2]
        forward_units(s, lens, reverse, gates, cs, y, out, h0, c0, WhhT, WhhT[0], False, 0, H,
                      cuda.grid(1), cuda.gridsize(1))

    @cuda.jit
    def rows_product(s, lens, reverse, A, W, out, w_rows, out_at_t):
        """For step s of every running row n (at its time t): with w_rows,
        out[., n, f] = W[f, :] . A[t, n, :] (the projection h = W_hr m); else
        out[., n, f] = A[t, n, :] . W[:, f] (dm = dh W_hr). out is indexed at t
        when out_at_t, else at 0 (a one-step buffer)."""
        N = A.shape[1]
        F = W.shape[0] if w_rows else W.shape[1]
        D = A.shape[2]
        for e in range(cuda.grid(1), N * F, cuda.gridsize(1)):
            _, n, f, L = unit_of(e, F, 0, lens)
            if s < L:
                t, _, _ = row_times(s, L, reverse)
                v = zero
                for d in range(D):
                    v += (W[f, d] if w_rows else W[d, f]) * A[t, n, d]
                out[t if out_at_t else 0, n, f] = v

    @cuda.jit
    def backward_step(s, lens, reverse, gates, cs, c0, dy, dhT, W_hh, dc, dm, proj):
        H = cs.shape[2]
        backward_units(s, lens, reverse, gates, cs, c0, dy, dhT, W_hh, W_hh[0], False, dc, dm, proj,
                       0, H, cuda.grid(1), cuda.gridsize(1))

    @cuda.jit
    def projected_grads_step(s, lens, reverse, gates, dy, dhT, W_hh, dhs):
        """With a projection: the gradient reaching each running row's h (P features)
        at step s, into dhs[t] (kept for dW_hr and for the dm product)."""
        N = gates.shape[1]
        P = dhs.shape[2]
        for e in range(cuda.grid(1), N * P, cuda.gridsize(1)):
            _, n, q, L = unit_of(e, P, 0, lens)
            if s < L:
                t, _, _ = row_times(s, L, reverse)
                dhs[t, n, q] = grad_h(s, L, reverse, n, q, gates, dy, dhT, W_hh, W_hh[0], False, 0, 1)

    @cuda.jit
    def backward_first_dh(lens, reverse, gates, W_hh, dhT, dh0):
        K = dh0.shape[1]
        first_dh(lens, reverse, gates, W_hh, W_hh[0], False, dhT, dh0, 0, K, cuda.grid(1), cuda.gridsize(1))

    @cuda.jit
    def final_state(lens, reverse, y, cs, h0, c0, hT, cT):
        """Each row's state after its own last step (h0, c0 for a length of 0)."""
        N = hT.shape[0]
        K = hT.shape[1]
        H = cT.shape[1]
        for e in range(cuda.grid(1), N * (K + H), cuda.gridsize(1)):
            n = e // (K + H)
            f = e % (K + H)
            L = lens[n]
            t = 0 if reverse else L - 1
            if f < K:
                hT[n, f] = h0[n, f] if L == 0 else y[t, n, f]
            else:
                cT[n, f - K] = c0[n, f - K] if L == 0 else cs[t, n, f - K]

    @cuda.jit
    def zero_past_lengths(A, lens):
        """A[t, n, :] = 0 for t >= lens[n] (A is (T, N, F))."""
        T, N, F = A.shape
        for e in range(cuda.grid(1), T * N * F, cuda.gridsize(1)):
            t, n, f = split3(e, N, F)
            if t >= lens[n]:
                A[t, n, f] = zero

    @cuda.jit
    def previous_h(lens, reverse, y, h0, out):
        """out[t, n] = the h step t of row n read: h0 at its first step, else y at the
        step before it (anything past its length, where dP is zero)."""
        T, N, K = out.shape
        for e in range(cuda.grid(1), T * N * K, cuda.gridsize(1)):
            t, n, k = split3(e, N, K)
            first = lens[n] - 1 if reverse else 0
            if t == first:
                out[t, n, k] = h0[n, k]
            elif reverse:
                out[t, n, k] = y[t + 1, n, k] if t + 1 < T else zero
            else:
                out[t, n, k] = y[t - 1, n, k]

    @cuda.jit
    def concat_features(A, B, out):
        """out = [A | B] along the last axis of (T, N, F) arrays."""
        T, N, F = out.shape
        FA = A.shape[2]
        for e in range(cuda.grid(1), T * N * F, cuda.gridsize(1)):
            t, n, f = split3(e, N, F)
            out[t, n, f] = A[t, n, f] if f < FA else B[t, n, f - FA]

    @cuda.jit
    def take_features(A, start, out):
        """out = A[:, :, start:start + out.shape[2]]."""
        T, N, F = out.shape
        for e in range(cuda.grid(1), T * N * F, cuda.gridsize(1)):
            t, n, f = split3(e, N, F)
            out[t, n, f] = A[t, n, start + f]

    @cuda.jit
    def add(A, B, out):
        """out = A + B elementwise over flat (1-D views of) arrays."""
        for e in range(cuda.grid(1), out.shape[0], cuda.gridsize(1)):
            out[e] = A[e] + B[e]

    @persistent_jit
    def forward_persistent(lens, gates, cs, y, h0, c0, WhhT, hb, use_smem):
        """Every step in one cooperative launch; block b owns units [b*hb, (b+1)*hb)."""
        Ws = cuda.shared.array(0, ft)
        T = gates.shape[0]
        H = cs.shape[2]
        j0 = cuda.blockIdx.x * hb
        tid = cuda.threadIdx.x
        nth = cuda.blockDim.x
        if use_smem:
            for e in range(tid, H * 4 * hb, nth):
                k = e // (4 * hb)
                r = e % (4 * hb)
                j = j0 + r % hb
                Ws[e] = WhhT[k, (r // hb) * H + j] if j < H else zero
            cuda.syncthreads()
        grid = cuda.cg.this_grid()
        for t in range(T):
            forward_units(t, lens, False, gates, cs, y, y, h0, c0, WhhT, Ws, use_smem, j0, hb, tid, nth)
            grid.sync()

    @persistent_jit
    def backward_persistent(lens, gates, cs, c0, dy, dhT, W_hh, dc, dh0, hb, use_smem):
        Ws = cuda.shared.array(0, ft)
        T = gates.shape[0]
        G = gates.shape[2]
        H = G // 4
        j0 = cuda.blockIdx.x * hb
        tid = cuda.threadIdx.x
        nth = cuda.blockDim.x
        if use_smem:
            for e in range(tid, G * hb, nth):
                j = j0 + e % hb
                Ws[e] = W_hh[e // hb, j] if j < H else zero
            cuda.syncthreads()
        grid = cuda.cg.this_grid()
        for s in range(T - 1, -1, -1):
            backward_units(s, lens, False, gates, cs, c0, dy, dhT, W_hh, Ws, use_smem, dc, dc, False,
                           j0, hb, tid, nth)
            grid.sync()
        first_dh(lens, False, gates, W_hh, Ws, use_smem, dhT, dh0, j0, hb, tid, nth)

    class Kernels:
        pass

    ns = Kernels()
    ns.gemm_threads, ns.gemm_tile = GEMM_THREADS, GEMM_TILE
    for name, fn in dict(gemm=gemm, gemm_simple=gemm_simple, transpose=transpose, swap01=swap01, multiply=multiply,
                         column_sums=column_sums, forward_step=forward_step, rows_product=rows_product,
                         backward_step=backward_step, projected_grads_step=projected_grads_step,
                         backward_first_dh=backward_first_dh, final_state=final_state,
                         zero_past_lengths=zero_past_lengths, previous_h=previous_h,
                         concat_features=concat_features, take_features=take_features, add=add,
                         forward_persistent=forward_persistent,
                         backward_persistent=backward_persistent).items():
        setattr(ns, name, fn)
    return ns
