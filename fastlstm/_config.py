"""Knobs of fastlstm in one place, each with its environment override.

Read at call time (not import time) so that tests can patch the environment.
"""

import os

#: Environment variable naming the backend used when ``backend="auto"``.
BACKEND_ENV = "FASTLSTM_BACKEND"


def backend_override():
    """The backend named by FASTLSTM_BACKEND, or None when unset or "auto"."""
    name = os.environ.get(BACKEND_ENV, "").strip().lower()
    return None if name in ("", "auto") else name

#: Environment variable choosing the float32 kernel path of the C backend:
#: "auto" (the fastest the CPU has), "avx512", "avx2", "portable", or "blas"
#: (a BLAS product per step plus the separate fused gate pass; float64 always
#: runs this way).
KERNEL_ENV = "FASTLSTM_KERNEL"
KERNELS = ("auto", "avx512", "avx2", "portable", "blas")

#: Environment variable capping the threads of the fused kernels.
THREADS_ENV = "FASTLSTM_NUM_THREADS"

#: Below this many multiply-adds per step (N * 4H * H) the fused time loops
#: (forward and backward) run on one thread: the per-step barrier would cost
#: more than the second thread saves. `step` (one barrier per layer, no
#: packing) splits from a third of it. Measured on two cores
#: (bench/ab_builds.py, alternating rounds): at 65k (N=1, H=128 and N=4,
#: H=64) two threads were 0.86-1.16x the time of one, at 102k (N=1, H=160)
#: 0.70-0.78x; a 2-layer step at H=96 (37k) 0.75-0.94x, at H=128 0.68-0.82x.
MIN_PARALLEL_WORK_ENV = "FASTLSTM_MIN_PARALLEL_WORK"
MIN_PARALLEL_WORK = 96_000
STEP_WORK_DIVISOR = 3


def kernel():
    """The kernel path asked for (FASTLSTM_KERNEL), "auto" by default."""
    name = os.environ.get(KERNEL_ENV, "auto").strip().lower() or "auto"
    if name not in KERNELS:
        raise ValueError(f"{KERNEL_ENV} must be one of {', '.join(KERNELS)}, got {name!r}")
    return name


def num_threads(default):
    """Threads for the fused kernels: FASTLSTM_NUM_THREADS, else ``default``."""
    value = os.environ.get(THREADS_ENV, "").strip()
    if not value:
        return default
    try:
        n = int(value)
    except ValueError:
        raise ValueError(f"{THREADS_ENV} must be a positive integer, got {value!r}") from None
    if n < 1:
        raise ValueError(f"{THREADS_ENV} must be a positive integer, got {value!r}")
    return n


def threads_for(N, H, available, step=False):
    """Threads for one layer's time loop (or, with step, one step) of batch N and hidden size H."""
    n = num_threads(available)
    threshold = int(os.environ.get(MIN_PARALLEL_WORK_ENV, MIN_PARALLEL_WORK))
    if N * 4 * H * H * (STEP_WORK_DIVISOR if step else 1) < threshold:
        return 1
    return max(1, n)

#: Set to 0 to stop the C backend from pinning SciPy's OpenBLAS to one thread
#: inside each of its own threads (read once, when the extension loads).
BLAS_LOCAL_THREADS_ENV = "FASTLSTM_BLAS_LOCAL_THREADS"


def blas_local_threads():
    return os.environ.get(BLAS_LOCAL_THREADS_ENV, "1").strip() not in ("0", "false", "no")


#: Fuse the input projection into the time loop (instead of one product over
#: all steps): "auto" (the rule below), "always" or "never".
FUSE_INPUT_ENV = "FASTLSTM_FUSE_INPUT"
#: The rule: with at least FUSE_MIN_ROWS rows (below, each step is bound by
#: reading the weights, and the hoisted product halves what a step reads),
#: fuse while each thread's share of [W_ih | W_hh] is at most
#: FASTLSTM_FUSE_INPUT_BYTES, i.e. stays in its core's L2. Above it the
#: weights stream from L3 at every step, which still wins when each panel of
#: them serves enough rows (FUSE_STREAM_MIN_ROWS: the kernel fetches the next
#: panel while these run) and a panel, the next one and the rows it
#: multiplies fit in FUSE_STREAM_FRACTION of that budget.
FUSE_INPUT_BYTES_ENV = "FASTLSTM_FUSE_INPUT_BYTES"
FUSE_INPUT_BYTES = 1_500_000
FUSE_MIN_ROWS = 4
FUSE_STREAM_MIN_ROWS = 19
FUSE_STREAM_FRACTION = 0.8


def fuse_input(I, H, N, nthreads, panel_row_bytes):
    """Whether the C kernels fuse x_t . W_ih^T into each step (see above).

    ``panel_row_bytes``: bytes per k-row of a packed forward panel, from the C
    kernels (``lstm_fused_panel_row_bytes``), for the streamed-panel estimate.
    """
    mode = os.environ.get(FUSE_INPUT_ENV, "auto").strip().lower()
    if mode in ("always", "never"):
        return mode == "always"
    if mode != "auto":
        raise ValueError(f"{FUSE_INPUT_ENV}={mode!r}: expected auto, always or never")
    if N < FUSE_MIN_ROWS:
        return False
    limit = int(os.environ.get(FUSE_INPUT_BYTES_ENV, FUSE_INPUT_BYTES))
    K = I + H
    if 4 * H * K * 4 / max(1, nthreads) <= limit:
        return True
    streamed = 2 * K * panel_row_bytes + N * K * 4
    return N >= FUSE_STREAM_MIN_ROWS and streamed <= FUSE_STREAM_FRACTION * limit

#: How the threads of the C time loops split a step: "units" (each takes a
#: share of the hidden units, so reads a share of the packed weights but all
#: of the previous step's rows, half of them written on the other core),
#: "rows" (each takes a share of the batch rows, so reads all of the weights
#: but only rows it wrote itself), or "auto": rows while the packed weights of
#: the pass fit in ROW_SPLIT_BYTES, which leaves room for them in a 2 MB L2.
#: Measured on two cores (bench/ab_builds.py): H=128, N=32 forward 0.81x the
#: time, H=160 0.91-0.98x; at 1 MB of weights the backward was 1.07x slower.
THREAD_SPLIT_ENV = "FASTLSTM_THREAD_SPLIT"
ROW_SPLIT_BYTES = 896 * 1024


def split_by_rows(weight_bytes, nthreads):
    """Whether the threads split a step by batch rows (see above)."""
    mode = os.environ.get(THREAD_SPLIT_ENV, "auto").strip().lower()
    if mode in ("rows", "units"):
        return mode == "rows"
    if mode != "auto":
        raise ValueError(f"{THREAD_SPLIT_ENV}={mode!r}: expected auto, rows or units")
    return nthreads > 1 and weight_bytes <= ROW_SPLIT_BYTES

#: The CUDA backend's time loop: "auto" (one persistent cooperative launch for
#: all steps when the grid fits on the device at once, else one launch per
#: step), "persistent", or "steps" (one launch per step, always).
CUDA_LOOP_ENV = "FASTLSTM_CUDA_LOOP"
CUDA_LOOPS = ("auto", "persistent", "steps")

#: Bytes of shared memory a persistent block may use for its slice of W_hh
#: (48 KiB: what every CUDA device gives a block without opting in).
CUDA_SMEM_BYTES_ENV = "FASTLSTM_CUDA_SMEM_BYTES"
CUDA_SMEM_BYTES = 48 * 1024


def cuda_loop():
    name = os.environ.get(CUDA_LOOP_ENV, "auto").strip().lower() or "auto"
    if name not in CUDA_LOOPS:
        raise ValueError(f"{CUDA_LOOP_ENV} must be one of {', '.join(CUDA_LOOPS)}, got {name!r}")
    return name


def cuda_smem_bytes():
    return int(os.environ.get(CUDA_SMEM_BYTES_ENV, CUDA_SMEM_BYTES))
