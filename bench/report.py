"""Turn a pytest-benchmark JSON of bench/ into a markdown table of medians and ratios.

Usage: python bench/report.py BENCH.json [--out FILE]
One table row per group (one shape and pass), one column per implementation,
ratios c/torch and c/numpy of medians measured in that same run.
"""

import argparse
import json
import sys

ORDER = ["cuda", "c", "numpy", "torch"]


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


def render(data, groups):
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
    return "\n".join(head + lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json")
    parser.add_argument("--out")
    args = parser.parse_args(argv)
    text = render(*load(args.json))
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(text)
    else:
        sys.stdout.write(text)


if __name__ == "__main__":
    main()
