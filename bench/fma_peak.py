"""The machine's float32 FMA peak beside NumPy's matmul roof, in one run (a script).

The benchmarks compare fastlstm with a "roof": NumPy's float32 2048² matmul at the same
thread count. This script says what that roof is worth: it compiles a loop of independent
fused multiply-adds (16 accumulators of 16 floats on AVX-512, 8 of 8 on AVX2; no memory
traffic) with the system C compiler, runs it on 1 and on N OpenMP threads, and times the
matmul on the same thread counts in between. When the two agree, the roof is the
hardware's own peak and no kernel can go past it.

    python bench/fma_peak.py                 # prints a markdown section
    python bench/fma_peak.py --write         # and appends it to bench/TRAINER_RESULTS.md
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from fastlstm.bench.machine import append_section, machine_info  # noqa: E402

SOURCE = r"""
#include <immintrin.h>
#include <stdio.h>
#include <time.h>
#include <omp.h>
#ifdef __AVX512F__
typedef __m512 V;
#define FMA _mm512_fmadd_ps
#define SET _mm512_set1_ps
#define LANES 16
#else
typedef __m256 V;
#define FMA _mm256_fmadd_ps
#define SET _mm256_set1_ps
#define LANES 8
#endif
#define ACC 16
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + 1e-9 * t.tv_nsec; }
int main(int argc, char **argv) {
    long n = argc > 1 ? atol(argv[1]) : 20000000L;
    double total = 0.0;
    #pragma omp parallel reduction(+ : total)
    {
        V a[ACC], b = SET(1.0000001f), c = SET(1e-7f);
        for (int i = 0; i < ACC; i++) a[i] = SET((float)i);
        double t0 = now();
        for (long it = 0; it < n; it++) {
            #pragma GCC unroll 16
            for (int i = 0; i < ACC; i++) a[i] = FMA(a[i], b, c);
        }
        double t = now() - t0;
        float keep[LANES];
        V s = a[0];
        for (int i = 1; i < ACC; i++) s = FMA(s, b, a[i]);
        __builtin_memcpy(keep, &s, sizeof keep);
        total += 2.0 * LANES * ACC * n / t / 1e9 + 0.0 * keep[0];
    }
    printf("%.2f\n", total);
    return 0;
}
"""


def build(tmp: Path) -> Path:
    """The FMA loop, compiled for the best vector ISA this CPU has."""
    from fastlstm.backends import _c
    arch = "-mavx512f" if "avx512" in _c.SUPPORTED_KERNELS else "-mavx2"
    src, exe = tmp / "fma.c", tmp / "fma"
    src.write_text(SOURCE)
    cc = os.environ.get("CC", "cc")
    subprocess.run([cc, "-O2", arch, "-mfma", "-fopenmp", str(src), "-o", str(exe)], check=True)
    return exe


def fma_gflops(exe: Path, threads: int) -> float:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), OMP_PROC_BIND="spread")
    out = subprocess.run([str(exe)], env=env, capture_output=True, text=True, check=True)
    return float(out.stdout)


def matmul_gflops(threads: int, rounds: int = 10) -> float:
    """NumPy's float32 2048² matmul on `threads` BLAS threads, best of `rounds`."""
    from threadpoolctl import threadpool_limits
    a = np.random.default_rng(0).random((2048, 2048), dtype=np.float32)
    out = np.empty_like(a)
    with threadpool_limits(threads, user_api="blas"):
        np.matmul(a, a, out=out)
        best = min(_timed(lambda: np.matmul(a, a, out=out)) for _ in range(rounds))
    return 2 * 2048**3 / best / 1e9


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2, help="the larger thread count (default 2)")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds (best of each kind)")
    ap.add_argument("--write", action="store_true", help="append the section to bench/TRAINER_RESULTS.md")
    args = ap.parse_args(argv)
    counts = sorted({1, args.threads})
    fma = {t: 0.0 for t in counts}
    mm = {t: 0.0 for t in counts}
    with tempfile.TemporaryDirectory() as tmp:
        exe = build(Path(tmp))
        for _ in range(args.rounds):
            for t in counts:
                fma[t] = max(fma[t], fma_gflops(exe, t))
                mm[t] = max(mm[t], matmul_gflops(t))
    info = machine_info()
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    lines = [f"## Float32 FMA peak and the matmul roof, {stamp}, {info['cpu']}", "",
             f"Command: `python bench/fma_peak.py --threads {args.threads} --rounds {args.rounds}`; best "
             "of the alternating rounds. FMA peak: a loop of independent vector FMAs, no memory "
             "traffic, on every thread at once; roof: NumPy's float32 2048² matmul.", "",
             "| threads | FMA peak GFLOP/s | matmul roof GFLOP/s | roof / peak |", "|---|---|---|---|"]
    lines += [f"| {t} | {fma[t]:.1f} | {mm[t]:.1f} | {mm[t] / fma[t]:.2f} |" for t in counts]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.write:
        append_section(HERE / "TRAINER_RESULTS.md", "Trainer benchmark", "bench/bench_trainer.py", text)


if __name__ == "__main__":
    main()
