"""Turn a pytest-benchmark JSON of bench/test_bench_lstm.py into bench/RESULTS.md.

Usage: python bench/report.py /tmp/bench.json > bench/RESULTS.md
(or ``--out bench/RESULTS.md``). Ratios are of medians measured in that one run.
"""

import argparse
import json
import sys

COMMAND = ("cd /work/main && env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python3 -m pytest bench/ "
           "--benchmark-only --benchmark-json=/tmp/bench.json -q\n"
           "python3 bench/report.py /tmp/bench.json > bench/RESULTS.md")
ORDER = {"cuda": 0, "c": 1, "numpy": 2, "torch": 3}
ACCEPT_SPEEDUP = 2.0  # C forward+backward must be at least this much faster than NumPy's


def fmt_ms(seconds):
    return f"{seconds * 1e3:.1f}" if seconds >= 0.01 else f"{seconds * 1e3:.2f}"


def fmt_ratio(x):
    return "n/a" if x is None else f"{x:.2f}x"


def load(path):
    with open(path) as fh:
        data = json.load(fh)
    rows = {}
    for b in data["benchmarks"]:
        e = b["extra_info"]
        rows[(e["pass_"], e["N"], e["backend"])] = {
            "group": b["group"], "median": b["stats"]["median"], "min": b["stats"]["min"],
            "iqr": b["stats"]["iqr"], "rounds": b["stats"]["rounds"], "gflops": e["gflops"],
            "gflop": e["gflop"], "shape": {k: e[k] for k in ("T", "N", "I", "H", "L", "dtype")},
        }
    return data, rows


def speedup(rows, pass_, N, slow, fast="c"):
    """t_slow / t_fast: how many times faster ``fast`` is than ``slow`` (None if missing)."""
    a, b = rows.get((pass_, N, slow)), rows.get((pass_, N, fast))
    return None if a is None or b is None else a["median"] / b["median"]


def machine_section(data):
    mi = data.get("machine_info", {})
    fb = mi.get("fastlstm_bench", {})
    cpu = fb.get("lscpu", {})
    ver = fb.get("versions", {})
    out = ["## Machine and versions", ""]
    model = cpu.get("Model name") or mi.get("cpu", {}).get("brand_raw", "?")
    sockets = int(cpu.get("Socket(s)", "1") or 1)
    cores = cpu.get("Core(s) per socket")
    ncores = sockets * int(cores) if cores else "?"
    out.append(f"- CPU: {model}; {cpu.get('CPU(s)', fb.get('cpu_count', '?'))} logical CPUs, "
               f"{ncores} cores, {cpu.get('Thread(s) per core', '?')} thread(s) per core"
               + (f", L2 {cpu['L2 cache']}" if cpu.get("L2 cache") else "")
               + (f", L3 {cpu['L3 cache']}" if cpu.get("L3 cache") else "")
               + (f" (virtualised: {cpu['Hypervisor vendor']})" if cpu.get("Hypervisor vendor") else ""))
    out.append(f"- Platform: {fb.get('platform', mi.get('system', '?'))}")
    out.append(f"- Threads: {fb.get('bench_threads', '?')} for every BLAS/OpenMP pool (threadpoolctl) "
               f"and for torch (torch.get_num_threads() = {fb.get('torch_threads', 'n/a')})")
    env = fb.get("env", {})
    out.append("- Environment: " + ", ".join(f"{k}={'unset' if v is None else v}" for k, v in env.items()))
    out.append("- Versions: " + ", ".join(f"{k} {v}" for k, v in ver.items()
                                          if k != "fastlstm_backends" and v is not None))
    out.append(f"- fastlstm backends: {', '.join(ver.get('fastlstm_backends', []))}")
    cfg = fb.get("fastlstm_config", {})
    c_keys = {k: v for k, v in cfg.items() if k.startswith("c_") and k != "c_extension_sha256"}
    if "c_extension_sha256" in cfg or c_keys:
        out.append(f"- C extension timed: sha256 {cfg.get('c_extension_sha256', '?')}...; "
                   + ", ".join(f"{k}={v}" for k, v in c_keys.items()))
    out.append("- Thread pools (threadpoolctl):")
    for p in fb.get("threadpools", []):
        arch = f", kernel **{p['architecture']}**" if p.get("architecture") else ""
        path = (p.get("filepath") or "").rsplit("/", 1)[-1]
        out.append(f"  - {p.get('internal_api')} {p.get('version')} ({p.get('user_api')}){arch}: {path}")
    load = fb.get("loadavg", {})
    if load:
        fmt = lambda v: "?" if not v else "/".join(f"{x:.2f}" for x in v)  # noqa: E731
        out.append(f"- Load average (1/5/15 min) at start {fmt(load.get('start'))}, at end {fmt(load.get('end'))}"
                   " (other work on the machine inflates and scatters the timings)")
    out.append(f"- Run: {data.get('datetime', '?')}")
    return out


def acceptance_section(rows, Ns):
    out = ["## Acceptance", "",
           f"Criterion: on the tutorial's model (T=50, I=64, H=300, L=2, float32) the C backend's "
           f"forward+backward is at least {ACCEPT_SPEEDUP:g}x faster than the NumPy backend's "
           "(ratio of medians, same run). The ratio to torch.nn.LSTM is recorded, not required.", "",
           "| N | C fwd+bwd (ms) | NumPy fwd+bwd (ms) | NumPy/C | verdict | torch fwd+bwd (ms) | torch/C |",
           "|---|---:|---:|---:|---|---:|---:|"]
    for N in Ns:
        c, np_, th = (rows.get(("forward+backward", N, k)) for k in ("c", "numpy", "torch"))
        s = speedup(rows, "forward+backward", N, "numpy")
        verdict = "n/a" if s is None else ("PASS" if s >= ACCEPT_SPEEDUP else "FAIL")
        out.append(f"| {N} | {fmt_ms(c['median']) if c else 'n/a'} | {fmt_ms(np_['median']) if np_ else 'n/a'} "
                   f"| {fmt_ratio(s)} | **{verdict}** | {fmt_ms(th['median']) if th else 'n/a'} "
                   f"| {fmt_ratio(speedup(rows, 'forward+backward', N, 'torch'))} |")
    out += ["", "NumPy/C and torch/C are time ratios t_other / t_C: above 1 the C backend is faster."]
    return out


def ratio_section(rows, Ns):
    out = ["## Ratios (t_other / t_C, medians; above 1 = C faster)", "",
           "| pass | N | NumPy/C | torch/C |", "|---|---|---:|---:|"]
    for pass_ in ("forward", "forward+backward"):
        for N in Ns:
            out.append(f"| {pass_} | {N} | {fmt_ratio(speedup(rows, pass_, N, 'numpy'))} "
                       f"| {fmt_ratio(speedup(rows, pass_, N, 'torch'))} |")
    return out


def group_sections(rows, Ns):
    out = ["## Per group", ""]
    for pass_ in ("forward", "forward+backward"):
        for N in Ns:
            impls = sorted((k[2] for k in rows if k[0] == pass_ and k[1] == N), key=lambda n: ORDER.get(n, 9))
            if not impls:
                continue
            first = rows[(pass_, N, impls[0])]
            out.append(f"### {first['group']} ({first['gflop']:.2f} GFLOP per call)")
            out.append("")
            out.append("| implementation | median (ms) | min (ms) | IQR (ms) | rounds | GFLOP/s | time / C time |")
            out.append("|---|---:|---:|---:|---:|---:|---:|")
            c = rows.get((pass_, N, "c"))
            for impl in impls:
                r = rows[(pass_, N, impl)]
                rel = f"{r['median'] / c['median']:.2f}" if c else "n/a"
                name = "torch.nn.LSTM" if impl == "torch" else f"fastlstm {impl}"
                out.append(f"| {name} | {fmt_ms(r['median'])} | {fmt_ms(r['min'])} | {fmt_ms(r['iqr'])} "
                           f"| {r['rounds']} | {r['gflops']:.1f} | {rel} |")
            out.append("")
    return out


def render(data, rows):
    Ns = sorted({k[1] for k in rows})
    out = ["# fastlstm benchmark results", "",
           "Generated by `bench/report.py` from one pytest-benchmark run of `bench/test_bench_lstm.py` "
           "(do not edit by hand; rerun the command). Model: the tutorial's 2-layer LSTM, "
           "T=50, I=64, H=300, float32, batch N=30 and N=128. GFLOP per forward = sum over layers of "
           "2·T·N·4H·(I_k+H); backward counted as twice that (forward+backward = 3x forward). "
           "torch forward runs under `torch.no_grad()` in eval mode; torch forward+backward calls "
           "`y.backward(dy)` with x requiring grad (dx is computed, as in fastlstm).", "",
           "## Command", "", "```", COMMAND, "```", ""]
    out += machine_section(data) + [""]
    out += acceptance_section(rows, Ns) + [""]
    out += ratio_section(rows, Ns) + [""]
    out += group_sections(rows, Ns)
    return "\n".join(out).rstrip() + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("json", help="file written by pytest --benchmark-json")
    ap.add_argument("--out", help="write here instead of stdout")
    args = ap.parse_args(argv)
    data, rows = load(args.json)
    text = render(data, rows)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(text)
    else:
        sys.stdout.write(text)


if __name__ == "__main__":
    main()
