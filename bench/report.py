"""Turn a pytest-benchmark JSON of bench/ into a markdown table of medians and ratios.

Usage: python bench/report.py BENCH.json [--out FILE]  (bench/RESULTS.md is this output)
A header (command, machine, versions, OpenBLAS kernels, how busy the machine was,
the acceptance ratio), then one table row per group (one shape and pass), one
column per implementation, ratios c/torch and c/numpy of medians measured in that same run.
"""

import argparse
import json
import sys

ORDER = ["cuda", "c", "c-padded", "numpy", "torch"]
#: The project's goal on the tutorial's model: C forward+backward this many times faster than NumPy's.
GOAL_SPEEDUP = 2.0
GOAL_GROUPS = ("forward+backward tutorial N30 I64", "forward+backward tutorial N128 I64")


def load(path):
    with open(path) as fh:
        data = json.load(fh)
    groups = {}
    for b in data["benchmarks"]:
        e = b["extra_info"]
        rate = e.get("gflops") or e.get("chars_per_s")
        groups.setdefault(b["group"], {})[e["backend"]] = dict(
            median=b["stats"]["median"], rate=rate, unit="GFLOP/s" if "gflops" in e else "chars/s",
            threads=e.get("threads"))
    return data, groups


def ratio(group, a, b):
    if a in group and b in group:
        return group[a]["median"] / group[b]["median"]
    return None


def render(data, groups, report_args="BENCH.json --out bench/RESULTS.md"):
    impls = [i for i in ORDER if any(i in g for g in groups.values())]
    mi = data.get("machine_info", {})
    lines = ["| group | " + " | ".join(f"{i} ms (rate)" for i in impls) + " | c/torch | c/numpy |",
             "| --- | " + " | ".join("---" for _ in impls) + " | --- | --- |"]
    for name, g in groups.items():
        cells = []
        for i in impls:
            if i in g:
                r = g[i]
                rate = f"{r['rate']:,.0f} {r['unit']}" if r["rate"] else ""
                cells.append(f"{r['median'] * 1e3:.2f} ({rate})")
            else:
                cells.append("")
        rt, rn = ratio(g, "c", "torch"), ratio(g, "c", "numpy")
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {'' if rt is None else f'{rt:.2f}'} | "
                     f"{'' if rn is None else f'{rn:.2f}'} |")
    head = ["Medians of one pytest-benchmark run; ratio = c time / other time (below 1: c is faster).",
            "", f"- machine: {mi.get('cpu', {}).get('brand_raw', mi.get('processor', '?'))}, "
            f"python {mi.get('python_version', '?')}", ""]
    if "fastlstm_bench" in mi:  # recorded by bench/conftest.py
        head = context(data, groups, report_args)
    return "\n".join(head + lines + GRID_POINTER) + "\n"


#: Where the 1- and 2-thread grid against the matmul roof lives (another command).
GRID_POINTER = [
    "", "## The whole CPU grid (1 and 2 threads, against the matmul roof)", "",
    "`bench/grid/RESULTS.md` (with `results.json` and the chart `bench/grid/ratios.png`) holds the",
    "comparison over the CPU-speed issue's grid, fastlstm and torch timed in alternating rounds, made by:",
    "", "```", "env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python3 -m fastlstm.bench --out bench/grid --budget 0.5",
    "```",
]


def context(data, groups, report_args="BENCH.json --out bench/RESULTS.md"):
    """Command, machine, versions, BLAS kernels, disturbance and the acceptance ratio."""
    fb = data["machine_info"]["fastlstm_bench"]
    run = data.get("fastlstm_run", {})
    cpu, ver, c_cfg = fb.get("lscpu", {}), fb.get("versions", {}), fb.get("c_backend", {})
    cores = cpu.get("Core(s) per socket")
    if cores:
        cores = int(cores) * int(cpu.get("Socket(s)", "1") or 1)
    out = ["# fastlstm benchmark results", "",
           "Written by `bench/report.py` from one run of the pytest-benchmark suite in `bench/`; "
           "rerun the command below rather than editing by hand.", "",
           "## Command", "", "```", run.get("command", "python -m pytest bench/ --benchmark-only ..."),
           f"python bench/report.py {report_args}", "```", "",
           "## Machine and versions", "",
           f"- CPU: {cpu.get('Model name', '?')}, {cpu.get('CPU(s)', fb.get('cpu_count', '?'))} logical CPUs, "
           f"{cores or '?'} cores, {cpu.get('Thread(s) per core', '?')} thread(s) per core"
           + (f", L2 {cpu['L2 cache']}" if cpu.get("L2 cache") else "")
           + (f", virtualised ({cpu['Hypervisor vendor']})" if cpu.get("Hypervisor vendor") else ""),
           f"- {fb.get('platform', '?')}",
           "- Versions: " + ", ".join(f"{k} {v}" for k, v in ver.items() if v),
           f"- Threads: {fb.get('bench_threads', '?')} for every BLAS/OpenMP pool and for torch "
           f"(torch.get_num_threads() = {fb.get('torch_threads', 'n/a')})",
           "- Environment: " + ", ".join(f"{k}={'unset' if v is None else v}" for k, v in fb.get("env", {}).items())]
    if c_cfg:
        out.append("- fastlstm C backend: " + ", ".join(f"{k}={v}" for k, v in c_cfg.items()))
    for p in fb.get("blas", []):
        if p.get("internal_api") == "openblas":
            out.append(f"- OpenBLAS {p.get('version')} kernel (threadpoolctl architecture): "
                       f"**{p.get('architecture')}**")
    fc = run.get("machine_load") or {}
    if fc.get("foreign_share") is not None:
        busy = fc["foreign_share"] >= 0.02
        out.append(f"- Other processes used {fc['foreign_cpu_s']} CPU-s during the {fc['wall_s']} s run "
                   f"({100 * fc['foreign_share']:.1f}% of the machine): "
                   + ("**the machine was shared; timings are disturbed, most at 2 threads on 2 cores**"
                      if busy else "quiet machine"))
    out.append(f"- Date: {data.get('datetime', '?')}")
    out += ["", "## The tutorial's model", "",
            "C forward+backward against NumPy's and PyTorch's on the tutorial's model (2 layers, H=300, "
            f"T=50, I=64, float32); the project aims at C {GOAL_SPEEDUP:g}x or more faster than NumPy.", "",
            "| group | c ms | numpy ms | torch ms | numpy / c | goal reached | torch / c |",
            "| --- | --- | --- | --- | --- | --- | --- |"]
    for prefix in GOAL_GROUPS:
        for name, g in groups.items():
            if not name.startswith(prefix + ":"):
                continue
            ms = [f"{g[i]['median'] * 1e3:.1f}" if i in g else "n/a" for i in ("c", "numpy", "torch")]
            sn, st = ratio(g, "numpy", "c"), ratio(g, "torch", "c")
            verdict = "n/a" if sn is None else ("yes" if sn >= GOAL_SPEEDUP else "not yet")
            out.append(f"| {name} | {' | '.join(ms)} | {'n/a' if sn is None else f'{sn:.2f}x'} | {verdict} "
                       f"| {'n/a' if st is None else f'{st:.2f}x'} |")
    out += ["", "## All groups", "",
            "Medians of one pytest-benchmark run; ratio = c time / other time (below 1: c is faster).", ""]
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json")
    parser.add_argument("--out")
    args = parser.parse_args(argv)
    text = render(*load(args.json), report_args=" ".join(argv if argv is not None else sys.argv[1:]))
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(text)
    else:
        sys.stdout.write(text)


if __name__ == "__main__":
    main()
