"""Generation benchmark for issue 15's targets (a script, not a pytest test).

`fastlstm generate` at N=1 with the tutorial model (embedding 64 -> LSTM(300) x 2 ->
Dense), characters per second with start-up excluded (the wall-clock difference between
a long and a short run of the same command), for:

- this checkout, float32 (and ``--weights bf16`` when this checkout has that option);
- the version before issue 15 (commit ``PREVIOUS``), extracted from git into a scratch
  folder and built there (``python setup.py build_ext --inplace``), run with that folder
  first on PYTHONPATH;
- PyTorch's carried-state loop on a model of the same shapes (one character per call:
  embedding, LSTM with the carried state, linear, temperature, a draw);

and ``--num-samples 64`` against PyTorch's batched (N=64) carried-state loop. Each version
trains its own checkpoint of the tutorial's shapes for a few steps first (speed does not
depend on the weights' values). Rounds alternate between the contenders so that a slow
stretch of a shared machine falls on all of them; each figure is the median over rounds.
Appends a section to bench/GENERATE_RESULTS.md with the command, the CPU and the ratios.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/bench_generate.py
    python bench/bench_generate.py --rounds 1 --length 600 --no-write      # a quick look
"""

import argparse
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "GENERATE_RESULTS.md"
sys.path.insert(0, str(ROOT))

#: The last commit before issue 15's generation work (its compiled loop came next).
PREVIOUS = "1a74c3b"
SHORT = 200
TRAIN = ["--max-steps", "2", "--eval-every", "2", "--sample-length", "0", "--progress", "none"]

TORCH_LOOP = textwrap.dedent("""
    import sys, time, numpy as np, torch
    V, E, H, L = 67, 64, 300, 2
    n, K, threads = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    emb, lstm, dense = torch.nn.Embedding(V, E), torch.nn.LSTM(E, H, L), torch.nn.Linear(H, V)
    g = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        x = torch.zeros(1, K, dtype=torch.long)
        state = None
        out = []
        for _ in range(n):
            y, state = lstm(emb(x), state)
            p = torch.softmax(dense(y[0]) / 0.8, dim=-1)
            x = torch.multinomial(p, 1, generator=g).T
            out.append(x)
    sys.stdout.write(str(len(out)))
""")


def run(cmd, env, cwd=ROOT):
    t = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd)
    if r.returncode != 0:
        raise RuntimeError(f"{shlex.join(cmd)} failed: {r.stderr.strip()[-500:]}")
    return time.perf_counter() - t


class Contender:
    """One command line that generates ``n`` characters (per sample) when called."""

    def __init__(self, name, argv_for, env, per_call, cwd=ROOT):
        self.name, self.argv_for, self.env, self.per_call = name, argv_for, env, per_call
        self.cwd = cwd
        self.rates = []

    def round(self, length):
        """One long and one short run: characters per second between them (NaN when the
        difference drowns in start-up noise)."""
        length = max(2 * SHORT, length // (20 if self.per_call > 1 else 1))  # a batch: fewer steps
        short = run(self.argv_for(SHORT), self.env, self.cwd)
        long_ = run(self.argv_for(length), self.env, self.cwd)
        gap = long_ - short
        self.rates.append(self.per_call * (length - SHORT) / gap if gap > 0.05 else float("nan"))


def build_previous(commit, scratch):
    """The commit's tree in ``scratch`` with its extension built in place."""
    scratch.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", commit], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(scratch)], input=archive.stdout, check=True)
    subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--inplace"], cwd=scratch, check=True,
                   capture_output=True)
    return scratch


def fastlstm_env(path, threads):
    """The environment that runs the fastlstm of the tree ``path``, from ``path`` as the working
    directory (``python -m`` puts the working directory first on sys.path, before PYTHONPATH:
    run from this checkout, every tree would import this checkout's fastlstm)."""
    env = dict(os.environ, PYTHONPATH=str(path), FASTLSTM_NUM_THREADS=str(threads))
    env.pop("FASTLSTM_BACKEND", None)
    r = subprocess.run([sys.executable, "-c", "import fastlstm; print(fastlstm.__file__)"], capture_output=True,
                       text=True, env=env, cwd=path, check=True)
    if not Path(r.stdout.strip()).resolve().is_relative_to(Path(path).resolve()):
        raise RuntimeError(f"the tree {path} imports fastlstm from {r.stdout.strip()}")
    return env


def has_option(env, option):
    r = subprocess.run([sys.executable, "-m", "fastlstm", "generate", "--help"], capture_output=True, text=True,
                       env=env, cwd=ROOT)
    return option in r.stdout


def corpus(tmp):
    """--text for the checkpoints: Macbeth where FASTLSTM_DATA has it (its 67 characters make the
    tutorial's dense layer), else a made-up text of as many distinct characters."""
    data = os.environ.get("FASTLSTM_DATA")
    if data and (Path(data) / "macbeth.txt").is_file():
        return str(Path(data) / "macbeth.txt")
    chars = [chr(c) for c in range(32, 99)]
    path = Path(tmp) / "text.txt"
    path.write_text("".join(chars[(i * 7919) % len(chars)] for i in range(20000)))
    return str(path)


def contenders(tmp, threads, previous_tree):
    """{name: Contender}: checkpoints trained, commands ready."""
    out = {}
    text = corpus(tmp)
    trees = {"previous": previous_tree, "float32": ROOT}
    for name, tree in trees.items():
        env = fastlstm_env(tree, threads)
        ck = str(Path(tmp) / f"ck-{name}")
        run([sys.executable, "-m", "fastlstm", "train", "--text", text, "--out", ck, "--overwrite", *TRAIN], env,
            tree)

        def argv(n, ck=ck, extra=()):
            return [sys.executable, "-m", "fastlstm", "generate", "--checkpoint", ck, "--length", str(n),
                    "--seed", "0", "--prime", "\n", *extra]
        out[name] = Contender(f"fastlstm {name}" if name == "float32" else f"fastlstm before issue 15 "
                              f"({PREVIOUS})", argv, env, 1, tree)
        if name == "float32":
            if has_option(env, "--weights"):
                out["bf16"] = Contender("fastlstm bf16 weights", lambda n, a=argv: a(n, extra=("--weights", "bf16")),
                                        env, 1, tree)
            out["batch64"] = Contender("fastlstm --num-samples 64", lambda n, a=argv: a(
                n, extra=("--num-samples", "64")), env, 64, tree)
    script = Path(tmp) / "torch_loop.py"
    script.write_text(TORCH_LOOP)
    tenv = dict(os.environ, OMP_NUM_THREADS=str(threads))
    out["torch"] = Contender("torch carried-state loop", lambda n: [sys.executable, str(script), str(n), "1",
                                                                    str(threads)], tenv, 1)
    out["torch64"] = Contender("torch carried-state loop, N=64", lambda n: [
        sys.executable, str(script), str(n), "64", str(threads)], tenv, 64)
    return out


def _median(rates):
    """The median of the rounds that measured something (NaN: lost in start-up noise)."""
    kept = [r for r in rates if r == r]
    return statistics.median(kept) if kept else float("nan")


def report(cs, args, command, info):
    med = {k: _median(c.rates) for k, c in cs.items()}
    lines = [f"## {time.strftime('%Y-%m-%d %H:%M')} UTC, {info['cpu']}, {args.threads} threads", "",
             f"Command: `{command}`; {args.rounds} rounds, a {args.length}-character run (N=64: "
             f"{args.length // 20} per sample) minus a {SHORT}-character run (start-up excluded); characters/s "
             "in all samples, medians over rounds (per round: "
             + ", ".join(f"{k} {', '.join(f'{r:,.0f}' for r in c.rates)}" for k, c in cs.items()) + ").", "",
             "| contender | chars/s | vs before issue 15 | vs torch |", "|---|---|---|---|"]
    for k, c in cs.items():
        peer = med["torch64"] if k in ("batch64", "torch64") else med["torch"]
        lines.append(f"| {c.name} | {med[k]:,.0f} | {med[k] / med['previous']:.2f}x | {med[k] / peer:.2f}x |")
    lines += ["", "Targets: float32 >= 1.6x before issue 15 "
              f"({'met' if med['float32'] >= 1.6 * med['previous'] else 'missed'}); "
              + (f"bf16 >= 3.5x ({'met' if med['bf16'] >= 3.5 * med['previous'] else 'missed'}); "
                 if "bf16" in med else "bf16: not in this checkout; ")
              + f"--num-samples 64 >= 1.5x torch's batched loop "
              f"({'met' if med['batch64'] >= 1.5 * med['torch64'] else 'missed'}).", ""]
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--length", type=int, default=20000,
                    help="characters of the long run at N=1 (a 64-sample batch runs a twentieth of it)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-write", action="store_true", help="print the section, do not append it")
    args = ap.parse_args(argv)
    command = "python bench/bench_generate.py " + " ".join(argv if argv is not None else sys.argv[1:])
    from fastlstm.bench.machine import append_section, cpu_name
    with tempfile.TemporaryDirectory() as tmp:
        prev = build_previous(PREVIOUS, Path(tmp) / "previous")
        cs = contenders(tmp, args.threads, prev)
        for r in range(args.rounds):
            order = list(cs.values())
            for c in order if r % 2 == 0 else order[::-1]:
                c.round(args.length)
            print(f"round {r + 1}: " + ", ".join(f"{k} {c.rates[-1]:,.0f}" for k, c in cs.items()), flush=True)
    text = report(cs, args, command, {"cpu": cpu_name()})
    print(text)
    if not args.no_write:
        append_section(RESULTS, "Generation rates (issue 15)", "bench/bench_generate.py", text)


if __name__ == "__main__":
    main()
