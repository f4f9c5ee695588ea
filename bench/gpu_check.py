"""GPU check for sessions lent an NVIDIA GPU: correctness at real sizes and timings
of the cuda backend against PyTorch's cuDNN LSTM on the same card, in one run.

    python bench/gpu_check.py --out bench/GPU_RESULTS.md

One layer, T=100, I=H, float32, H in {256, 512, 1024}, N in {1, 16, 64, 256}.
Correctness: relative 2-norm error of every output and gradient against the
float64 NumPy reference on the same float32 inputs (must be < 1e-5). Timings:
medians of forward and forward+backward with device-resident weights (the
functional API, torch CUDA tensors passed through __cuda_array_interface__),
both time loops (persistent, per step), synchronised inside each timed call;
cuDNN with TF32 off (the same float32 arithmetic) and on (its default). Writes a
markdown table (and JSON beside it) with the card's name and the date; exits 1
when a correctness check fails. Budget: about 3 minutes on an H100.
"""

import argparse
import datetime
import importlib.metadata
import json
import os
import platform
import statistics
import sys
import time

import numpy as np

HS = (256, 512, 1024)
NS = (1, 16, 64, 256)
T = 100
REL_TOL = 1e-5


def rel_err(got, want):
    got = np.asarray(got, np.float64)
    want = np.asarray(want, np.float64)
    den = np.linalg.norm(want)
    return float(np.linalg.norm(got - want) / (den if den else 1.0))


def median_time(fn, sync, reps, budget_s=2.0):
    fn()
    sync()
    times = []
    start = time.perf_counter()
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
        if time.perf_counter() - start > budget_s and len(times) >= 3:
            break
    return statistics.median(times)


def make_case(H, N, T, seed=0):
    rng = np.random.default_rng(seed)
    k = 1 / np.sqrt(H)
    G = 4 * H
    w = {"weight_ih": rng.uniform(-k, k, (G, H)), "weight_hh": rng.uniform(-k, k, (G, H)),
         "bias_ih": rng.uniform(-k, k, G), "bias_hh": rng.uniform(-k, k, G)}
    w = {name: a.astype(np.float32) for name, a in w.items()}
    x = rng.standard_normal((T, N, H)).astype(np.float32)
    dy = rng.standard_normal((T, N, H)).astype(np.float32)
    return w, x, dy


def reference(w, x, dy):
    import fastlstm
    w64 = {k: v.astype(np.float64) for k, v in w.items()}
    y, (h, c), cache = fastlstm.lstm_forward(x.astype(np.float64), **w64, backend="numpy")
    dx, (dh, dc), grads = fastlstm.lstm_backward(cache, dy.astype(np.float64))
    return {"y": y, "h_n": h, "c_n": c, "dx": dx, "dh0": dh, "dc0": dc,
            **{f"d{k}": g for k, g in grads.items()}}


def ours(w, x, dy, to_dev, to_host):
    import fastlstm
    y, (h, c), cache = fastlstm.lstm_forward(to_dev(x), **{k: to_dev(v) for k, v in w.items()})
    dx, (dh, dc), grads = fastlstm.lstm_backward(cache, to_dev(dy))
    out = {"y": y, "h_n": h, "c_n": c, "dx": dx, "dh0": dh, "dc0": dc,
           **{f"d{k}": g for k, g in grads.items()}}
    return {k: to_host(v) for k, v in out.items()}


def package_version(name):
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "absent"


def persistent_kernel_notes(cb):
    """Registers per thread and max cooperative grid per compiled persistent kernel."""
    from fastlstm.backends._cuda_kernels import kernels
    notes = []
    for dtype in (np.float32, np.float64):
        ks = kernels(np.dtype(dtype))
        for name in ("forward_persistent", "backward_persistent"):
            disp = getattr(ks, name)
            for kern in getattr(disp, "overloads", {}).values():
                try:
                    regs = kern.regs_per_thread if hasattr(kern, "regs_per_thread") else "?"
                    coop = {th: kern.max_cooperative_grid_blocks(th) for th in (256, 512, 1024)}
                except Exception as exc:  # diagnostics only
                    regs, coop = "?", repr(exc)[:200]
                notes.append(f"- {np.dtype(dtype).name} {name}: {regs} registers/thread; "
                             f"max cooperative blocks by threads {coop}")
    return notes


def option_rows(H, N, T, reps, to_dev, sync, torch, have_torch):
    """One bidirectional layer and one batch of variable lengths (uniform in [1, T]) through
    fastlstm.LSTM on the cuda backend: the relative error of outputs and gradients against
    the float64 reference, and times against torch's bidirectional / packed cuDNN LSTM.
    The layer keeps its weights on the host, so each call also uploads them."""
    import fastlstm
    rng = np.random.default_rng(1)
    lengths = rng.integers(1, T + 1, N)
    rows = []
    for name, kw, lens in (("bidirectional", dict(bidirectional=True), None), ("lengths", {}, lengths)):
        gpu = fastlstm.LSTM(H, H, backend="cuda", seed=0, **kw)
        ref = fastlstm.LSTM(H, H, dtype=np.float64, backend="numpy", **kw)
        ref.load_state_dict({k: v.astype(np.float64) for k, v in gpu.state_dict().items()})
        D = 2 if kw else 1
        x = rng.standard_normal((T, N, H)).astype(np.float32)
        dy = rng.standard_normal((T, N, D * H)).astype(np.float32)
        got, want = {}, {}
        for layer, out, dt in ((gpu, got, np.float32), (ref, want, np.float64)):
            y, (h, c) = layer.forward(x.astype(dt), lengths=lens, training=True)
            dx, _ = layer.backward(dy.astype(dt))
            out.update(y=y, h=h, c=c, dx=dx, **{f"d{k}": g.copy() for k, g in layer.grads.items()})
        err = max(rel_err(got[k], want[k]) for k in want)
        dx_, ddy = to_dev(x), to_dev(dy)

        def fwd(gpu=gpu, dx_=dx_, lens=lens):
            gpu.forward(dx_, lengths=lens)

        def fwd_bwd(gpu=gpu, dx_=dx_, ddy=ddy, lens=lens):
            gpu.forward(dx_, lengths=lens, training=True)
            gpu.backward(ddy)

        row = {"case": f"{name} H={H} N={N} T={T}", "err": err,
               "fwd": median_time(fwd, sync, reps), "fb": median_time(fwd_bwd, sync, reps)}
        if have_torch:
            from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
            m = torch.nn.LSTM(H, H, **kw).cuda()
            m.load_state_dict({k: torch.from_numpy(v) for k, v in gpu.state_dict().items()})
            tx = to_dev(x).requires_grad_(True)
            tlens = None if lens is None else torch.from_numpy(lens)
            torch.backends.cudnn.allow_tf32 = False

            def t_run(m=m, tx=tx, tlens=tlens):
                if tlens is None:
                    return m(tx)[0]
                out, _ = m(pack_padded_sequence(tx, tlens, enforce_sorted=False))
                return pad_packed_sequence(out, total_length=T)[0]

            def t_fwd(t_run=t_run):
                with torch.no_grad():
                    t_run()

            def t_fb(t_run=t_run, ddy=ddy):
                t_run().backward(ddy)

            row["fwd_cudnn_fp32"] = median_time(t_fwd, sync, reps)
            row["fb_cudnn_fp32"] = median_time(t_fb, sync, reps)
            torch.backends.cudnn.allow_tf32 = True
        rows.append(row)
        print(json.dumps({k: (round(v, 7) if isinstance(v, float) else v) for k, v in row.items()}), flush=True)
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="bench/GPU_RESULTS.md", help="markdown results file (JSON beside it)")
    ap.add_argument("--reps", type=int, default=20, help="timed repetitions per point (median)")
    ap.add_argument("--hs", type=int, nargs="+", default=list(HS), help="hidden sizes")
    ap.add_argument("--ns", type=int, nargs="+", default=list(NS), help="batch sizes")
    ap.add_argument("--steps", type=int, default=T, help="sequence length T")
    ap.add_argument("--allow-simulator", action="store_true",
                    help="run under NUMBA_ENABLE_CUDASIM (a smoke test of this script, tiny sizes only)")
    args = ap.parse_args(argv)

    import fastlstm
    if "cuda" not in fastlstm.available_backends():
        print("cuda backend not available:", fastlstm.backends.unavailable_reasons().get("cuda"))
        return 2
    from fastlstm.backends import cuda as cb
    if cb.SIMULATOR and not args.allow_simulator:
        print("NUMBA_ENABLE_CUDASIM is set: this check needs a real GPU")
        return 2
    try:
        import torch
    except ImportError:
        torch = None
    have_torch = torch is not None and torch.cuda.is_available()
    card = cb.device_info()
    print("device:", card, "| torch:", torch.__version__ if torch else "absent", flush=True)

    def to_dev(a):
        return torch.from_numpy(np.ascontiguousarray(a)).cuda() if have_torch else cb.as_device(a)

    def to_host(a):
        return a.cpu().numpy() if hasattr(a, "cpu") else cb.as_device(a).copy_to_host()

    def sync():
        cb.cuda.synchronize()
        if have_torch:
            torch.cuda.synchronize()

    rows, failed = [], False
    t_start = time.time()
    for H in args.hs:
        for N in args.ns:
            w, x, dy = make_case(H, N, args.steps)
            row = {"H": H, "N": N, "T": args.steps, "I": H}
            want = reference(w, x, dy)
            for loop in ("persistent", "steps"):
                os.environ["FASTLSTM_CUDA_LOOP"] = loop
                try:
                    got = ours(w, x, dy, to_dev, to_host)
                except Exception as exc:  # a refused launch is a finding: record it, go on
                    row[f"err_{loop}"] = f"{type(exc).__name__}: {exc}"[:300]
                    row[f"fwd_{loop}"] = row[f"fb_{loop}"] = float("inf")
                    failed = True
                    print(f"H={H} N={N} {loop}: {row[f'err_{loop}']}", flush=True)
                    continue
                err = max(rel_err(got[k], want[k]) for k in want)
                row[f"err_{loop}"] = err
                failed |= not err < REL_TOL
                dw = {k: to_dev(v) for k, v in w.items()}
                dx_, ddy = to_dev(x), to_dev(dy)

                def fwd(dx_=dx_, dw=dw):
                    fastlstm.lstm_forward(dx_, **dw, training=False)

                def fwd_bwd(dx_=dx_, dw=dw, ddy=ddy):
                    _, _, cache = fastlstm.lstm_forward(dx_, **dw)
                    fastlstm.lstm_backward(cache, ddy)

                row[f"fwd_{loop}"] = median_time(fwd, sync, args.reps)
                row[f"fb_{loop}"] = median_time(fwd_bwd, sync, args.reps)
            os.environ.pop("FASTLSTM_CUDA_LOOP", None)
            if have_torch:
                lstm = torch.nn.LSTM(H, H).cuda()
                with torch.no_grad():
                    for k, v in w.items():
                        getattr(lstm, f"{k}_l0").copy_(torch.from_numpy(v))
                tx = to_dev(x).requires_grad_(True)
                tdy = to_dev(dy)
                for tf32 in (False, True):
                    torch.backends.cudnn.allow_tf32 = tf32
                    y_t, _ = lstm(tx)
                    y_t.backward(tdy)
                    if not tf32:
                        row["err_cudnn"] = rel_err(y_t.detach().cpu().numpy(), want["y"])
                    tag = "tf32" if tf32 else "fp32"

                    def t_fwd(lstm=lstm, tx=tx):
                        with torch.no_grad():
                            lstm(tx)

                    def t_fb(lstm=lstm, tx=tx, tdy=tdy):
                        y, _ = lstm(tx)
                        y.backward(tdy)

                    row[f"fwd_cudnn_{tag}"] = median_time(t_fwd, sync, args.reps)
                    row[f"fb_cudnn_{tag}"] = median_time(t_fb, sync, args.reps)
                torch.backends.cudnn.allow_tf32 = True
            best_fb = min(row["fb_persistent"], row["fb_steps"])
            if have_torch:
                row["ratio_fb"] = best_fb / row["fb_cudnn_fp32"]
                row["ratio_fwd"] = min(row["fwd_persistent"], row["fwd_steps"]) / row["fwd_cudnn_fp32"]
            rows.append(row)
            print(json.dumps({k: (round(v, 7) if isinstance(v, float) else v) for k, v in row.items()}),
                  flush=True)
    extra = option_rows(args.hs[min(1, len(args.hs) - 1)], args.ns[min(2, len(args.ns) - 1)], args.steps,
                        args.reps, to_dev, sync, torch, have_torch)
    failed |= any(not r["err"] < REL_TOL for r in extra)
    elapsed = time.time() - t_start
    kernel_notes = persistent_kernel_notes(cb)
    print("\n".join(kernel_notes), flush=True)

    def ms(v):
        return f"{1000 * v:.3f}" if isinstance(v, float) else "-"

    lines = [
        f"# GPU check: fastlstm cuda backend vs PyTorch cuDNN ({datetime.date.today().isoformat()})",
        "",
        f"- Card: {card}",
        f"- fastlstm {fastlstm.__version__}, numba-cuda {package_version('numba-cuda')}, "
        f"NumPy {np.__version__}, "
        f"torch {torch.__version__ if torch else 'absent'}, Python {platform.python_version()}",
        f"- Command: `python bench/gpu_check.py --out {args.out}` ({elapsed:.0f} s)",
        f"- One layer, T={args.steps}, I=H, float32; medians, synchronised inside each timed call; weights "
        "on the device (functional API). Errors: relative 2-norm error of every output and "
        "gradient against the float64 NumPy reference (threshold 1e-5). Ratio = fastlstm's "
        "better loop / cuDNN fp32 (TF32 off).",
        "",
        "| H | N | err persistent | err steps | fwd persistent ms | fwd steps ms | fwd cuDNN fp32 ms "
        "| fwd+bwd persistent ms | fwd+bwd steps ms | fwd+bwd cuDNN fp32 ms | fwd+bwd cuDNN tf32 ms "
        "| ratio fwd | ratio fwd+bwd |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    def err(v):
        return f"{v:.1e}" if isinstance(v, float) else "refused"

    for r in rows:
        lines.append(
            f"| {r['H']} | {r['N']} | {err(r['err_persistent'])} | {err(r['err_steps'])} "
            f"| {ms(r['fwd_persistent'])} | {ms(r['fwd_steps'])} | {ms(r.get('fwd_cudnn_fp32'))} "
            f"| {ms(r['fb_persistent'])} | {ms(r['fb_steps'])} | {ms(r.get('fb_cudnn_fp32'))} "
            f"| {ms(r.get('fb_cudnn_tf32'))} | {r.get('ratio_fwd', float('nan')):.2f} "
            f"| {r.get('ratio_fb', float('nan')):.2f} |")
    lines += ["", "torch.nn.LSTM's options on the cuda backend (fastlstm.LSTM, weights uploaded each call; "
              "cuDNN with TF32 off, packed for lengths uniform in [1, T]):", "",
              "| case | err | fwd ms | fwd cuDNN ms | fwd+bwd ms | fwd+bwd cuDNN ms |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['case']} | {r['err']:.1e} | {ms(r['fwd'])} | {ms(r.get('fwd_cudnn_fp32'))} "
              f"| {ms(r['fb'])} | {ms(r.get('fb_cudnn_fp32'))} |" for r in extra]
    lines += ["", "Persistent kernels as compiled (registers per thread, cooperative blocks "
              "the device allows at the block sizes used):", ""] + kernel_notes
    lines += [f"- H={r['H']} N={r['N']}: {r[f'err_{loop}']}" for r in rows
              for loop in ("persistent", "steps") if isinstance(r[f"err_{loop}"], str)]
    lines.append("")
    lines.append("Correctness: " + ("FAILED (an error above 1e-5)" if failed else "all below 1e-5"))
    with open(args.out, "w") as fh:
        fh.write("\n".join(lines) + "\n")
    with open(os.path.splitext(args.out)[0] + ".json", "w") as fh:
        json.dump({"card": card, "date": datetime.date.today().isoformat(), "rows": rows, "options": extra},
                  fh, indent=1)
    print("\n".join(lines))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
