"""Two builds of the C extension side by side in one process: which is faster?

For kernel work: build the commit to compare against in another folder
(`git worktree add /tmp/base <commit> && cd /tmp/base && python setup.py
build_ext --inplace`), then

    python bench/ab_builds.py --base /tmp/base --new . --threads 1 --kernel avx2

loads both `fastlstm/backends/_c` extensions (each with its own `_config`),
and times the backend's forward (or forward+backward) on the same arrays in
alternating rounds (base new, new base, ...), so that a slow stretch of a
shared machine falls on both alike. Prints medians, minima and new/base.
"""

import argparse
import glob
import importlib.util
import os
import statistics
import sys
import time
import types

import numpy as np

CASES = ["2,300,50,30,64", "2,300,50,128,64", "1,128,100,32,128", "1,512,100,32,512"]


def load_build(tag, root):
    """The `_c` extension built in `root` and that tree's `_config`, under the package `tag`."""
    import fastlstm.backends
    import fastlstm.backends._blas_threads
    so = glob.glob(os.path.join(root, "fastlstm", "backends", "_c.*.so"))
    if not so:
        raise SystemExit(f"no built extension in {root}/fastlstm/backends (python setup.py build_ext --inplace)")
    package = types.ModuleType(tag)
    package.__path__ = []
    spec = importlib.util.spec_from_file_location(tag + "._config", os.path.join(root, "fastlstm", "_config.py"))
    config = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(config)
    package._config = config
    sys.modules.update({tag: package, tag + "._config": config, tag + ".backends": fastlstm.backends,
                        tag + ".backends._blas_threads": fastlstm.backends._blas_threads})
    spec = importlib.util.spec_from_file_location(tag + ".backends._c", so[0])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_layers(L, H, T, N, I, rng):
    def f32(*shape):
        return (rng.standard_normal(shape) * 0.3).astype(np.float32)
    layers = []
    for k in range(L):
        Ik = I if k == 0 else H
        layers.append(dict(
            fwd=[f32(T, N, Ik), f32(N, H), f32(N, H), f32(4 * H, Ik), f32(4 * H, H), f32(4 * H),
                 np.empty((T, N, H), np.float32), np.empty((N, H), np.float32), np.empty((N, H), np.float32),
                 np.empty((T, N, 4 * H), np.float32), np.empty((T, N, H), np.float32)],
            dy=f32(T, N, H), dhT=f32(N, H), dcT=f32(N, H), dx=np.empty((T, N, Ik), np.float32),
            dh0=np.empty((N, H), np.float32), dc0=np.empty((N, H), np.float32),
            dW_ih=np.zeros((4 * H, Ik), np.float32), dW_hh=np.zeros((4 * H, H), np.float32),
            db=np.zeros(4 * H, np.float32)))
    return layers


def accepts_keep(module):
    """Whether a build's forward takes keep= (builds before it always keep the gates)."""
    a = make_layers(1, 1, 1, 1, 1, np.random.default_rng(0))[0]
    try:
        module.forward(*a["fwd"], keep=False)
    except TypeError:
        return False
    return True


def runner(module, layers, backward, inference=False):
    extra = {"keep": False} if inference and not backward and accepts_keep(module) else {}

    def run():
        for a in layers:
            module.forward(*a["fwd"], **extra)
        if backward:
            for a in reversed(layers):
                x, h0, c0, W_ih, W_hh, _, y, _, _, gates, cs = a["fwd"]
                module.backward(x, h0, c0, W_ih, W_hh, y, gates, cs, a["dy"], a["dhT"], a["dcT"],
                                a["dx"], a["dh0"], a["dc0"], a["dW_ih"], a["dW_hh"], a["db"])
    return run


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="source tree with the baseline build")
    parser.add_argument("--new", default=".", help="source tree with the build to test (default: .)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--kernel", default=None, help="FASTLSTM_KERNEL for both (default: the fastest)")
    parser.add_argument("--backward", action="store_true", help="time forward+backward")
    parser.add_argument("--inference", action="store_true",
                        help="time the forward as inference (keep=False, where a build has it)")
    parser.add_argument("cases", nargs="*", default=CASES, help="L,H,T,N,I (default: %(default)s)")
    args = parser.parse_args(argv)
    os.environ["FASTLSTM_NUM_THREADS"] = str(args.threads)
    if args.kernel:
        os.environ["FASTLSTM_KERNEL"] = args.kernel
    try:
        from threadpoolctl import threadpool_limits
        threadpool_limits(args.threads)
    except ImportError:
        pass
    sys.path.insert(0, os.path.abspath(args.new))  # the fastlstm package around the builds
    builds = {"base": load_build("ab_base", os.path.abspath(args.base)),
              "new": load_build("ab_new", os.path.abspath(args.new))}
    rng = np.random.default_rng(0)
    what = "forward+backward" if args.backward else "inference forward" if args.inference else "forward"
    print(f"{what}, {args.threads} thread(s), kernel {args.kernel or 'auto'}, {args.rounds} alternating rounds")
    for case in args.cases:
        L, H, T, N, I = (int(v) for v in case.split(","))
        layers = make_layers(L, H, T, N, I, rng)
        runs = {tag: runner(m, layers, args.backward, args.inference) for tag, m in builds.items()}
        times = {tag: [] for tag in runs}
        for run in runs.values():
            run()  # warm-up
        for r in range(args.rounds):
            for tag in (("base", "new") if r % 2 == 0 else ("new", "base")):
                t0 = time.perf_counter()
                runs[tag]()
                times[tag].append(time.perf_counter() - t0)
        med = {tag: statistics.median(t) for tag, t in times.items()}
        low = {tag: min(t) for tag, t in times.items()}
        print(f"L={L} H={H} T={T} N={N} I={I}: base {med['base'] * 1e3:.2f} ms, new {med['new'] * 1e3:.2f} ms"
              f" (medians); new/base {med['new'] / med['base']:.3f} (medians), {low['new'] / low['base']:.3f} (minima)")


if __name__ == "__main__":
    main()
