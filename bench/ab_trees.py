"""Two source trees side by side, each in its own process: which is faster? (a script)

For changes `ab_builds.py` cannot compare in one process (the layer, its threads and its
scratch buffers, not only the backend's kernels): build the commit to compare against in
another folder (`git worktree add /tmp/base <commit> && cd /tmp/base && python setup.py
build_ext --inplace`), then

    python bench/ab_trees.py --base /tmp/base --backward --bidirectional 2,300,50,30,64
    python bench/ab_trees.py --base /tmp/base --lengths 1,256,100,64,128
    python bench/ab_trees.py --base /tmp/base --backward --proj 256 1,1024,100,32,256

times `fastlstm.LSTM` forward (or forward+backward, as training) of each tree in a fresh
process with that tree first on the path, in alternating rounds (base new, new base, ...),
so that a slow stretch of a shared machine falls on both alike. Each process reports the
median of its calls; the script prints each tree's best round and new/base. --lengths
gives the batch lengths uniform in [1, T] (those of `python -m fastlstm.bench --options`);
--proj the layer's proj_size.
"""

import argparse
import os
import subprocess
import sys

CASES = ["2,300,50,1,64", "2,300,50,30,64", "2,300,50,128,64"]

WORKER = r"""
import statistics, sys, time
import numpy as np
import fastlstm
tree, L, H, T, N, I, bidir, backward, with_lengths, P = sys.argv[1], *map(int, sys.argv[2:])
assert fastlstm.__file__.startswith(tree), fastlstm.__file__
layer = fastlstm.LSTM(I, H, L, bidirectional=bool(bidir), proj_size=P, seed=0)
rng = np.random.default_rng(0)
lengths = rng.integers(1, T + 1, N) if with_lengths else None
x = rng.standard_normal((T, N, I)).astype(np.float32)
dy = rng.standard_normal((T, N, (2 if bidir else 1) * (P or H))).astype(np.float32)
def call():
    if backward:
        layer.forward(x, lengths=lengths, training=True)
        layer.backward(dy)
    else:
        layer.forward(x, lengths=lengths)
call()
t0 = time.perf_counter(); call(); once = time.perf_counter() - t0
times = []
for _ in range(max(5, int(0.5 / max(once, 1e-6)))):
    t0 = time.perf_counter(); call(); times.append(time.perf_counter() - t0)
print(statistics.median(times))
"""


def time_tree(tree, case, args):
    env = dict(os.environ, PYTHONPATH=tree, FASTLSTM_NUM_THREADS=str(args.threads),
               OMP_NUM_THREADS=str(args.threads))
    cmd = [sys.executable, "-c", WORKER, tree, *case.split(","), str(int(args.bidirectional)),
           str(int(args.backward)), str(int(args.lengths)), str(args.proj)]
    out = subprocess.run(cmd, env=env, cwd=tree, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"{tree}: {out.stderr.strip()}")
    return float(out.stdout)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="source tree with the baseline build")
    parser.add_argument("--new", default=".", help="source tree to test (default: .)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=4, help="alternating rounds (default 4)")
    parser.add_argument("--backward", action="store_true", help="time forward+backward (training)")
    parser.add_argument("--bidirectional", action="store_true")
    parser.add_argument("--lengths", action="store_true", help="lengths uniform in [1, T]")
    parser.add_argument("--proj", type=int, default=0, help="proj_size (default 0: none)")
    parser.add_argument("cases", nargs="*", default=CASES, help="L,H,T,N,I (default: %(default)s)")
    args = parser.parse_args(argv)
    trees = {"base": os.path.abspath(args.base), "new": os.path.abspath(args.new)}
    what = "forward+backward" if args.backward else "forward"
    kind = ("bidirectional" if args.bidirectional else "unidirectional") + (", lengths" if args.lengths else "") \
        + (f", proj_size {args.proj}" if args.proj else "")
    print(f"{kind} fastlstm.LSTM {what}, {args.threads} thread(s), {args.rounds} alternating rounds, "
          "a process per tree and round")
    for case in args.cases:
        best = {tag: float("inf") for tag in trees}
        for r in range(args.rounds):
            for tag in (("base", "new") if r % 2 == 0 else ("new", "base")):
                best[tag] = min(best[tag], time_tree(trees[tag], case, args))
        L, H, T, N, I = case.split(",")
        print(f"L={L} H={H} T={T} N={N} I={I}: base {best['base'] * 1e3:.2f} ms, new {best['new'] * 1e3:.2f} ms"
              f" (best rounds); new/base {best['new'] / best['base']:.3f}", flush=True)


if __name__ == "__main__":
    main()
