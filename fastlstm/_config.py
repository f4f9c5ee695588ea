"""Knobs of fastlstm in one place, each with its environment override.

Every ``FASTLSTM_*`` variable is read here, at call time (not import time, so
that tests can patch the environment), through one of the typed helpers
below; a value that cannot be used raises :class:`ConfigError` naming the
variable, its value and what is allowed. ``VARIABLES`` lists them all.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable

#: Backend names (the one list the API, the CLI and FASTLSTM_BACKEND share).
BACKENDS = ("c", "cuda", "numpy")


class ConfigError(ValueError):
    """A FASTLSTM_* environment variable holds a value that cannot be used."""


class _EnvironReader:
    """Reads one variable of ``os.environ`` as it is now, without the mapping's
    per-read key encoding: on POSIX CPython, straight from the dictionary of bytes
    behind it (a few hundred ns less per read; a small inference call reads about ten
    variables). Falls back to ``os.environ.get`` where that dictionary is not there,
    and follows ``os.environ`` when the object itself is replaced (as tests may do)."""

    def __init__(self) -> None:
        self._env: object = None
        self._keys: dict[str, bytes] = {}
        self._fast: tuple[dict, Callable[[str], bytes], Callable[[bytes], str]] | None = None

    def _bind(self) -> None:
        env = os.environ
        data = getattr(env, "_data", None)
        encode = getattr(env, "encodekey", None)
        decode = getattr(env, "decodevalue", None)
        fast = os.name == "posix" and isinstance(data, dict) and callable(encode) and callable(decode)
        self._env, self._keys = env, {}
        self._fast = (data, encode, decode) if fast else None  # type: ignore[assignment]

    def __call__(self, name: str) -> str:
        if os.environ is not self._env:
            self._bind()
        if self._fast is None:
            return os.environ.get(name, "")
        data, encode, decode = self._fast
        key = self._keys.get(name)
        if key is None:
            key = self._keys[name] = encode(name)
        value = data.get(key)
        return "" if value is None else decode(value)


_read_environ = _EnvironReader()


def _raw(name: str) -> str:
    return _read_environ(name).strip()


def env_choice(name: str, choices: tuple[str, ...], default: str) -> str:
    """The value of ``name`` (case-insensitive), one of ``choices``; ``default`` when unset."""
    value = _raw(name).lower()
    if not value:
        return default
    if value not in choices:
        raise ConfigError(f"{name}={value!r} is not valid: expected one of {', '.join(choices)}")
    return value


def env_int(name: str, default: int, minimum: int = 0) -> int:
    """The integer value of ``name`` (at least ``minimum``); ``default`` when unset."""
    value = _raw(name)
    if not value:
        return default
    try:
        n = int(value.replace("_", ""))
    except ValueError:
        n = None
    if n is None or n < minimum:
        raise ConfigError(f"{name}={value!r} is not valid: expected an integer >= {minimum}")
    return n


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def env_flag(name: str, default: bool) -> bool:
    """A yes/no variable (1/0, true/false, yes/no, on/off); ``default`` when unset."""
    value = _raw(name).lower()
    if not value:
        return default
    if value not in _TRUE + _FALSE:
        raise ConfigError(f"{name}={value!r} is not valid: expected 1 or 0 (true/false, yes/no, on/off)")
    return value in _TRUE


def env_text(name: str) -> str | None:
    """The text of ``name`` (stripped), or None when unset or empty."""
    return _raw(name) or None


#: Environment variable naming the backend used when ``backend="auto"``.
BACKEND_ENV = "FASTLSTM_BACKEND"


def backend_override():
    """The backend named by FASTLSTM_BACKEND, or None when unset or "auto".

    The name is checked where every backend name is, in ``backends._require``
    (whose error lists the backends available here)."""
    name = _raw(BACKEND_ENV).lower()
    return None if name in ("", "auto") else name

#: Environment variable choosing the float32 kernel path of the C backend:
#: "auto" (the fastest the CPU has), "avx512", "avx2", "portable", or "blas"
#: (a BLAS product per step plus the separate fused gate pass; float64 always
#: runs this way).
KERNEL_ENV = "FASTLSTM_KERNEL"
KERNELS = ("auto", "avx512", "avx2", "portable", "blas")

#: Environment variable choosing the code path of the bf16-weight inference
#: kernels (LSTM.inference_weights("bf16"), fastlstm generate --weights bf16):
#: "auto" (the fastest the CPU has), "avx512bf16" (VDPBF16PS, activations
#: rounded to bf16 too), "avx512", "avx2" or "portable" (weights widened to
#: float32 in registers).
BF16_KERNEL_ENV = "FASTLSTM_BF16_KERNEL"
BF16_KERNELS = ("auto", "avx512bf16", "avx512", "avx2", "portable")


def bf16_kernel():
    """The bf16 kernel path asked for (FASTLSTM_BF16_KERNEL), "auto" by default."""
    return env_choice(BF16_KERNEL_ENV, BF16_KERNELS, "auto")


#: Environment variable capping the threads of the fused kernels.
THREADS_ENV = "FASTLSTM_NUM_THREADS"

#: Below this many multiply-adds per step (N * 4H * H) the fused time loops
#: (forward and backward) and `step` run on one thread: the per-step barrier
#: would cost more than the second thread saves (`step` counts its work times
#: STEP_WORK_DIVISOR). Measured on two cores, alternating rounds. Earlier, on
#: another 2-core machine (bench/ab_builds.py): at 65k (N=1, H=128 and N=4, H=64)
#: two threads took 0.86-1.16x the time of one, at 102k (N=1, H=160) 0.70-0.78x,
#: a 2-layer step at H=96 (37k) 0.75-0.94x. On an AMD EPYC Zen 5 (T=100, forward
#: and forward+backward, one process, alternating): 0.63-0.65x at 65k, 0.67-0.73x
#: at 37k (N=1, H=96), 0.75-0.77x at 16k (N=1, H=64), 0.95-1.06x at 4k (N=1,
#: H=32). 32k is where both machines' figures favour two threads (it was 96k for
#: the loops and 32k for `step`); below it the Zen 5 still gains, the other is unknown.
MIN_PARALLEL_WORK_ENV = "FASTLSTM_MIN_PARALLEL_WORK"
MIN_PARALLEL_WORK = 32_768
STEP_WORK_DIVISOR = 1


def kernel():
    """The kernel path asked for (FASTLSTM_KERNEL), "auto" by default."""
    return env_choice(KERNEL_ENV, KERNELS, "auto")


_SHARE = threading.local()


def num_threads(default):
    """Threads for the fused kernels: FASTLSTM_NUM_THREADS, else ``default``; at
    most the calling thread's share while a ``thread_share`` block runs."""
    n = env_int(THREADS_ENV, default, minimum=1)
    cap = getattr(_SHARE, "threads", None)
    return n if cap is None else max(1, min(n, cap))


@contextlib.contextmanager
def thread_share(threads):
    """Within the block, kernels called from this thread use at most ``threads``
    threads (the two directions of a bidirectional layer run side by side, each
    on its share of the cores)."""
    old = getattr(_SHARE, "threads", None)
    _SHARE.threads = threads
    try:
        yield
    finally:
        _SHARE.threads = old


def thread_share_now():
    """The calling thread's share (``thread_share``), or None outside one."""
    return getattr(_SHARE, "threads", None)


def threads_for(N, H, available, step=False):
    """Threads for one layer's time loop (or, with step, one step) of batch N and hidden size H."""
    n = num_threads(available)
    threshold = env_int(MIN_PARALLEL_WORK_ENV, MIN_PARALLEL_WORK)
    if N * 4 * H * H * (STEP_WORK_DIVISOR if step else 1) < threshold:
        return 1
    return max(1, n)

#: Set to 0 to stop the C backend from pinning SciPy's OpenBLAS to one thread
#: inside each of its own threads (read once, when the extension loads).
BLAS_LOCAL_THREADS_ENV = "FASTLSTM_BLAS_LOCAL_THREADS"


def blas_local_threads():
    return env_flag(BLAS_LOCAL_THREADS_ENV, True)


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


def fuse_input(I, H, N, nthreads, panel_row_bytes, R=None):
    """Whether the C kernels fuse x_t . W_ih^T into each step (see above).

    ``panel_row_bytes``: bytes per k-row of a packed forward panel, from the C
    kernels (``lstm_fused_panel_row_bytes``), for the streamed-panel estimate.
    ``R``: the width of the recurrent state (P with a projection; H by default).
    """
    mode = env_choice(FUSE_INPUT_ENV, ("auto", "always", "never"), "auto")
    if mode != "auto":
        return mode == "always"
    if N < FUSE_MIN_ROWS:
        return False
    limit = env_int(FUSE_INPUT_BYTES_ENV, FUSE_INPUT_BYTES)
    K = I + (H if R is None else R)
    if 4 * H * K * 4 / max(1, nthreads) <= limit:
        return True
    streamed = 2 * K * panel_row_bytes + N * K * 4
    return N >= FUSE_STREAM_MIN_ROWS and streamed <= FUSE_STREAM_FRACTION * limit

#: The hoisted input projection (when not fused) runs on the fused kernels
#: while x (rows x I floats, all steps) is at most FASTLSTM_PROJECT_X_BYTES:
#: each thread packs its panels of W_ih and passes each panel over x, which
#: stays in its L2; a larger x goes to one BLAS product per thread, which
#: blocks for it (0: always BLAS). Measured on an AMD EPYC Zen 5 (2 cores, 1 MB
#: L2 each; T=100, N=1, I=H, forward, alternating in one process): 0.95x the
#: time of BLAS at H=128 and 300, 0.93-0.99x at H=512, 0.99-1.0x at H=1024
#: (400 KB of x); OpenBLAS ran its product at 75-85 GFLOP/s, this one at about 120.
PROJECT_X_BYTES_ENV = "FASTLSTM_PROJECT_X_BYTES"
PROJECT_X_BYTES = 512 * 1024


def project_in_kernel(rows, I):
    """Whether the hoisted projection of rows x I inputs runs on the fused kernels (see above)."""
    return 0 < rows * I * 4 <= env_int(PROJECT_X_BYTES_ENV, PROJECT_X_BYTES)

#: A forward of one row (N = 1) with at least 64 inputs projects its next rows inside the
#: steps (lstm_fused_impl.h, step_project_block): a step of one row waits on its weights,
#: and the projection's FMAs fill that wait, but its W_ih panels then share the cache with
#: W_hh. Measured (T=100, N=1, the loop with it against without): on an AMD EPYC Zen 5
#: (1 MB of L2 a core; I=H) 0.93-0.98x the time at H=128-512; on an Intel Xeon (2 MB of L2
#: a core; the layer's forward, each setting in its own processes, best of 3) 1.36x at
#: H=I=300 on 1 thread, 1.35x at H=I=512 (1.74x on 2 threads), 1.0-1.1x at H=I=128 and at
#: H=300 with I=300 on 2 threads or I=64. So it runs where a core's L2 is below
#: ONE_ROW_AHEAD_MAX_L2 (or cannot be read). FASTLSTM_ONE_ROW_AHEAD: "auto" (this rule),
#: "on" or "off". The results are the same either way, bit for bit.
ONE_ROW_AHEAD_MAX_L2 = 2 << 20
ONE_ROW_AHEAD_ENV = "FASTLSTM_ONE_ROW_AHEAD"


def one_row_ahead() -> bool:
    """Whether a one-row forward projects its next rows inside the steps (see above)."""
    mode = env_choice(ONE_ROW_AHEAD_ENV, ("auto", "on", "off"), "auto")
    if mode != "auto":
        return mode == "on"
    l2 = l2_cache_bytes()
    return l2 is None or l2 < ONE_ROW_AHEAD_MAX_L2

#: A training forward on the C kernels whose kept gates (rows x 4H floats) take at
#: least STREAM_GATES_BYTES writes them with non-temporal stores, past the caches
#: (csrc/lstm_common.h, LSTM_KEEP_STREAM), where each thread's share of the packed
#: weights is over FUSE_INPUT_BYTES (so streams from L3 at every step): there the
#: gates' lines would push the weights out of L2. Measured on an Intel Xeon with AMX
#: (2 threads, alternating in one process): T=100, N=32, H=1024, P=256 (52 MB of gates,
#: 4 MB of weights a thread) the forward took 0.91-0.94x the time; H=512, I=512, N=32
#: (26 MB, 4 MB) 1.0x; but H=256, I=128, N=64 (26 MB, 0.75 MB a thread, in L2) 1.20x,
#: since ordinary stores leave the gates in L3 for backward. The results are the same,
#: bit for bit. FASTLSTM_STREAM_GATES_BYTES sets the size for every layer (0: never).
STREAM_GATES_BYTES = 16 << 20
STREAM_GATES_BYTES_ENV = "FASTLSTM_STREAM_GATES_BYTES"


def stream_gates_bytes(weight_bytes_per_thread: int | None = None) -> int:
    """From how many bytes of gates a training forward streams them (see above; 0:
    never), for a layer with this many bytes of packed weights per thread."""
    value = env_int(STREAM_GATES_BYTES_ENV, -1)
    if value >= 0:
        return value
    if weight_bytes_per_thread is not None and weight_bytes_per_thread <= FUSE_INPUT_BYTES:
        return 0
    return STREAM_GATES_BYTES

#: The C backward computes its weight gradients on Intel AMX where the CPU and OS
#: allow it (csrc/lstm_amx.h: each float32 operand split into three bf16 parts, six
#: part products summed in float32, as close to the exact product as a float32 loop),
#: for each thread's block of at least AMX_ROWS rows: below that, packing the operands
#: costs about what the product saves. Measured on an Intel Xeon with AMX
#: (forward+backward, alternating in one process, AMX against the loop): 40 rows a
#: thread 1.09x the time, 50-100 rows 0.98-1.02x, 200 rows 0.93-1.0x, 400 rows 0.90x,
#: 1,600 rows 0.88-0.91x. FASTLSTM_AMX_ROWS sets the rows (0: never).
AMX_ROWS = 128
AMX_ROWS_ENV = "FASTLSTM_AMX_ROWS"


def amx_rows() -> int:
    """From how many rows a thread's weight-gradient block runs on AMX (see above; 0: never)."""
    return env_int(AMX_ROWS_ENV, AMX_ROWS)


#: The C forward computes the input product x_t . W_ih^T on Intel AMX (the same three
#: bf16 parts) for chunks of steps at a time, between steps whose FMAs run the
#: recurrent product alone, for batches of at least AMX_INPUT_ROWS rows with at least
#: AMX_INPUT_SIZE inputs and hidden units, where the CPU and OS allow it. Measured on an
#: Intel Xeon with AMX (inference forward, two threads, alternating in one process, AMX
#: against the loop): H=256 I=128 N=4-64 0.90-0.94x the time, H=128 I=128 N=32-64
#: 0.93-0.95x, 1x512 N=32 0.90x, the bidirectional tutorial model N=30 / 128 0.90 / 0.88x,
#: the lengths case 0.94x; I=64 with H=64-192 1.02-1.04x, and H=64 I=128 1.02x. The rule
#: depends on the shape only, so every thread split gives the same numbers.
#: FASTLSTM_AMX_INPUT_ROWS sets the rows, for every size (0: never).
AMX_INPUT_ROWS = 4
AMX_INPUT_SIZE = 96
AMX_INPUT_ROWS_ENV = "FASTLSTM_AMX_INPUT_ROWS"


def amx_input_rows(I, H):
    """From how many batch rows the C forward's input product runs on AMX for I inputs
    and H hidden units (see above; 0: never)."""
    if _raw(AMX_INPUT_ROWS_ENV):
        return env_int(AMX_INPUT_ROWS_ENV, AMX_INPUT_ROWS)
    return AMX_INPUT_ROWS if min(I, H) >= AMX_INPUT_SIZE else 0

#: A bidirectional inference forward of fewer rows than this runs its two directions
#: one after the other, each on all of the threads, instead of side by side on half of
#: them each: split by units, each core keeps its half of a direction's W_hh in its own
#: L2, where side by side each core streams a whole W_hh from L3 at every step. Measured
#: on an AMD EPYC Zen 5 (2 cores, 1 MB L2 each; the tutorial model bidirectional,
#: H=300, T=50): N=1 3.1 ms instead of 3.4 back to back, 3.8-4.0 instead of 6.0-6.9
#: alternating with torch's calls; N=4-16 0.9-1.0x; N=30 and 128 within noise. Training
#: keeps them side by side (at N=1 its forward+backward took 1.09x the time apart).
#: FASTLSTM_DIRECTIONS: "auto" (this rule), "apart" or "side-by-side" (always).
DIRECTIONS_APART_ROWS = 64
DIRECTIONS_ENV = "FASTLSTM_DIRECTIONS"
DIRECTIONS = ("auto", "apart", "side-by-side")
#: Where one core's L2 holds a whole direction's recurrent weights (W_hh, and W_hr with a
#: projection), side by side wins from this many rows on: each core's direction stays in
#: its own L2 and no step waits for the other core. Measured on an Intel Xeon (2 cores,
#: 2 MB L2 each; the tutorial model bidirectional, 1.4 MB of W_hh a direction; T=50,
#: inference): N=8 8.6 ms side by side against 9.4 apart, N=16 15.9 against 17.5, N=30
#: 25.4 against 25.7, N=6 6.6 against 6.9; N=4 4.7 against 4.6 and N=1 4.3 against 3.2
#: (one row a step reads its weights faster from two cores' L2 than from one).
DIRECTIONS_SIDE_MIN_ROWS = 6


def l2_cache_bytes() -> int | None:
    """Bytes of one core's L2 (Linux's sysfs for cpu0, read once), or None where it cannot
    be read."""
    if not _L2_BYTES:
        _L2_BYTES.append(_read_l2_bytes())
    return _L2_BYTES[0]


_L2_BYTES: list[int | None] = []  # [the size] once read


def _read_l2_bytes() -> int | None:
    import glob

    for index in sorted(glob.glob("/sys/devices/system/cpu/cpu0/cache/index*")):
        try:
            with open(os.path.join(index, "level")) as f:
                level = f.read().strip()
            with open(os.path.join(index, "type")) as f:
                kind = f.read().strip()
            with open(os.path.join(index, "size")) as f:
                size = f.read().strip()
        except OSError:
            continue
        if level != "2" or kind not in ("Unified", "Data"):
            continue
        units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
        try:
            return int(size[:-1]) * units[size[-1]] if size[-1] in units else int(size)
        except (ValueError, IndexError):
            return None
    return None


def directions_side_by_side(N, training, recurrent_bytes=None):
    """Whether the two directions of a bidirectional layer's pass of N rows run side by
    side (see above). ``recurrent_bytes``: one direction's recurrent weights (W_hh, and
    W_hr with a projection), for the L2 rule; None leaves it out."""
    mode = env_choice(DIRECTIONS_ENV, DIRECTIONS, "auto")
    if mode != "auto":
        return mode == "side-by-side"
    if training or N >= DIRECTIONS_APART_ROWS:
        return True
    if recurrent_bytes is None or N < DIRECTIONS_SIDE_MIN_ROWS:
        return False
    l2 = l2_cache_bytes()
    return l2 is not None and recurrent_bytes <= l2


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
    mode = env_choice(THREAD_SPLIT_ENV, ("auto", "rows", "units"), "auto")
    if mode != "auto":
        return mode == "rows"
    return nthreads > 1 and weight_bytes <= ROW_SPLIT_BYTES

#: The CUDA backend's time loop: "auto" (one persistent cooperative launch for
#: all steps when the grid fits on the device at once, else one launch per
#: step), "persistent", or "steps" (one launch per step, always).
CUDA_LOOP_ENV = "FASTLSTM_CUDA_LOOP"
CUDA_LOOPS = ("auto", "persistent", "steps")

#: Most bytes of shared memory a persistent block may use for its slice of W_hh.
#: Unset: what the device lets a block opt into (227 KiB on an H100/H200; 48 KiB
#: is what every device gives without opting in).
CUDA_SMEM_BYTES_ENV = "FASTLSTM_CUDA_SMEM_BYTES"


def cuda_loop():
    return env_choice(CUDA_LOOP_ENV, CUDA_LOOPS, "auto")


def cuda_smem_bytes() -> int | None:
    """The FASTLSTM_CUDA_SMEM_BYTES cap, or None when unset (the device's opt-in limit)."""
    return env_int(CUDA_SMEM_BYTES_ENV, -1) if _raw(CUDA_SMEM_BYTES_ENV) else None


#: Set (to 1) when the install without the C extension is intended: no warning at import.
PUREPYTHON_ENV = "FASTLSTM_PUREPYTHON"


def pure_python():
    return env_flag(PUREPYTHON_ENV, False)


#: The char-model trainer's BLAS thread policy (fastlstm train; see its options module).
TRAIN_BLAS_ENV = "FASTLSTM_TRAIN_BLAS"
TRAIN_BLAS_MODES = ("all1", "numpy1", "none")


def train_blas():
    return env_choice(TRAIN_BLAS_ENV, TRAIN_BLAS_MODES, "all1")


#: Folder of the trainer's corpora (default: the user's cache folder).
DATA_ENV = "FASTLSTM_DATA"
#: Where the Macbeth corpus is downloaded from when it is not on disk.
MACBETH_URL_ENV = "FASTLSTM_MACBETH_URL"


def data_folder():
    """FASTLSTM_DATA, or None when unset."""
    return env_text(DATA_ENV)


def macbeth_url():
    """FASTLSTM_MACBETH_URL, or None when unset."""
    return env_text(MACBETH_URL_ENV)


#: Every variable fastlstm reads at run time (the build reads FASTLSTM_PUREPYTHON,
#: FASTLSTM_REQUIRE_C and FASTLSTM_SANITIZE too; the tests FASTLSTM_REQUIRE_*).
VARIABLES = (BACKEND_ENV, KERNEL_ENV, BF16_KERNEL_ENV, THREADS_ENV, MIN_PARALLEL_WORK_ENV, BLAS_LOCAL_THREADS_ENV,
             FUSE_INPUT_ENV, FUSE_INPUT_BYTES_ENV, PROJECT_X_BYTES_ENV, THREAD_SPLIT_ENV, DIRECTIONS_ENV,
             ONE_ROW_AHEAD_ENV, STREAM_GATES_BYTES_ENV,
             CUDA_LOOP_ENV,
             CUDA_SMEM_BYTES_ENV, PUREPYTHON_ENV, TRAIN_BLAS_ENV, DATA_ENV, MACBETH_URL_ENV)
_BUILD_AND_TEST = ("FASTLSTM_REQUIRE_C", "FASTLSTM_REQUIRE_CUDA", "FASTLSTM_SANITIZE")


def settings():
    """The FASTLSTM_* variables set in this process: {name: value}, and {name: problem}
    for those that cannot be used (a bad value, or a name fastlstm does not know)."""
    found, problems = {}, {}
    for name in sorted(k for k in os.environ if k.startswith("FASTLSTM_")):
        found[name] = os.environ[name]
        if name not in VARIABLES + _BUILD_AND_TEST:
            problems[name] = "not a fastlstm variable (a typo?)"
    checks = {KERNEL_ENV: kernel, BF16_KERNEL_ENV: bf16_kernel, THREADS_ENV: lambda: num_threads(1),
              MIN_PARALLEL_WORK_ENV: lambda: env_int(MIN_PARALLEL_WORK_ENV, 0),
              BLAS_LOCAL_THREADS_ENV: blas_local_threads,
              FUSE_INPUT_ENV: lambda: env_choice(FUSE_INPUT_ENV, ("auto", "always", "never"), "auto"),
              FUSE_INPUT_BYTES_ENV: lambda: env_int(FUSE_INPUT_BYTES_ENV, 0),
              PROJECT_X_BYTES_ENV: lambda: env_int(PROJECT_X_BYTES_ENV, 0),
              THREAD_SPLIT_ENV: lambda: env_choice(THREAD_SPLIT_ENV, ("auto", "rows", "units"), "auto"),
              DIRECTIONS_ENV: lambda: directions_side_by_side(1, False),
              ONE_ROW_AHEAD_ENV: one_row_ahead, STREAM_GATES_BYTES_ENV: stream_gates_bytes,
              CUDA_LOOP_ENV: cuda_loop, CUDA_SMEM_BYTES_ENV: cuda_smem_bytes,
              PUREPYTHON_ENV: pure_python, TRAIN_BLAS_ENV: train_blas}
    for name, check in checks.items():
        if name in found:
            try:
                check()
            except ConfigError as exc:
                problems[name] = str(exc)
    return found, problems
