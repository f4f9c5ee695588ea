"""The ``fastlstm`` command: --help, train then generate, and every bad input: a one-line
error on stderr, exit status 2, nothing overwritten. Mostly in-process (cli.main(argv));
a few runs through ``python -m fastlstm`` check the real process.
"""

import hashlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from test_trainer import make_text

import fastlstm
from fastlstm import _config
from fastlstm.charlm import cli

TINY = ["--hidden-size", "12", "--embed-dim", "6", "--seq-len", "12", "--batch-size", "4",
        "--eval-every", "3", "--sample-length", "10", "--progress", "none"]


def fastlstm_cmd(*args, env=None, timeout=120):
    """Run ``python -m fastlstm ARGS`` on the package under test; returns the CompletedProcess."""
    e = dict(os.environ)
    root = str(Path(fastlstm.__file__).resolve().parents[1])
    e["PYTHONPATH"] = root + (os.pathsep + e["PYTHONPATH"] if e.get("PYTHONPATH") else "")
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "fastlstm", *args], capture_output=True, text=True,
                          env=e, timeout=timeout)


def main(argv):
    """cli.main in-process: the exit status, whether returned or raised (argparse)."""
    try:
        return cli.main([str(a) for a in argv])
    except SystemExit as e:
        return e.code


def assert_one_line_error(capsys, status, *fragments):
    err = capsys.readouterr().err
    assert status == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("fastlstm") and "error" in lines[0], err
    for f in fragments:
        assert f in lines[0], (f, err)
    return lines[0]


def snapshot(folder):
    """{name: sha256} of every file in a folder (to prove nothing was overwritten)."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in Path(folder).iterdir()}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    p = tmp_path_factory.mktemp("corpus") / "words.txt"
    p.write_text(make_text(3000), encoding="utf-8")
    return p


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, corpus):
    """A tiny trained run (6 steps), shared by the generate tests."""
    out = tmp_path_factory.mktemp("run") / "words"
    assert cli.main(["train", "--text", str(corpus), "--out", str(out), "--max-steps", "6", *TINY]) == 0
    return out


# ----------------------------------------------------------------------------- happy paths
def test_help_explains_every_option():
    r = fastlstm_cmd("--help")
    assert r.returncode == 0 and "train" in r.stdout and "generate" in r.stdout
    parser = cli.build_parser()
    subs = parser._subparsers._group_actions[0].choices
    for name in ("train", "generate"):
        r = fastlstm_cmd(name, "--help")
        assert r.returncode == 0, r.stderr
        for action in subs[name]._actions:
            assert action.help, f"{name} {action.option_strings} has no help"
            for opt in action.option_strings:
                assert opt in r.stdout, opt


def test_train_then_generate_streams_reproducibly(run_dir, capsys):
    for f in ("checkpoint.json", "checkpoint.npz", "metrics.jsonl"):
        assert (run_dir / f).is_file()
    capsys.readouterr()
    args = ["generate", "--checkpoint", run_dir, "--prime", "the ", "--length", 40, "--seed", 3]
    assert main(args) == 0
    first = capsys.readouterr().out
    assert main(args) == 0
    assert capsys.readouterr().out == first
    assert first.startswith("the ") and len(first) == 4 + 40 + 1
    assert main(["generate", "--checkpoint", run_dir / "checkpoint.npz", "--greedy", "--length", 5,
                 "--timing"]) == 0
    out = capsys.readouterr()
    assert "chars/s" in out.err and len(out.out) == 6


def test_generate_and_export_run_on_rank_0_only_under_mpiexec(run_dir, tmp_path, capsys, monkeypatch):
    # as `mpiexec -n 2` starts them (the launcher's variables): rank 1 leaves quietly, rank 0 works
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "2")
    monkeypatch.setenv("OMPI_COMM_WORLD_RANK", "1")
    onnx_path = tmp_path / "m.onnx"
    assert main(["generate", "--checkpoint", str(run_dir), "--length", "20", "--seed", "1"]) == 0
    assert main(["export", "--checkpoint", str(run_dir), "--onnx", str(onnx_path)]) == 0
    assert capsys.readouterr().out == "" and not onnx_path.exists()
    monkeypatch.setenv("OMPI_COMM_WORLD_RANK", "0")
    assert main(["generate", "--checkpoint", str(run_dir), "--length", "20", "--seed", "1"]) == 0
    assert len(capsys.readouterr().out) > 20


def test_generate_num_samples_prints_each_sample_under_a_header(run_dir, capsys):
    capsys.readouterr()
    base = ["generate", "--checkpoint", run_dir, "--prime", "the ", "--length", 30]
    assert main([*base, "--seed", 5, "--num-samples", 3]) == 0
    out = capsys.readouterr().out
    headers = [f"--- sample {k} of 3 (seed {4 + k}) ---\n" for k in (1, 2, 3)]
    assert out.startswith(headers[0]) and all(h in out for h in headers)
    texts = [out.split(h, 1)[1] for h in headers]
    texts = [t.split(nxt, 1)[0] for t, nxt in zip(texts, headers[1:])] + texts[-1:]
    for k in range(3):  # each sample is the single run of its seed
        assert main([*base, "--seed", 5 + k]) == 0
        assert capsys.readouterr().out == texts[k]


def test_generate_with_bf16_weights(run_dir, tmp_path, corpus, capsys):
    capsys.readouterr()
    args = ["generate", "--checkpoint", run_dir, "--prime", "the ", "--length", 40, "--seed", 3,
            "--weights", "bf16", "--timing"]
    assert main(args) == 0
    out = capsys.readouterr()
    assert out.out.startswith("the ") and len(out.out) == 4 + 40 + 1
    assert "bf16 weights" in out.err
    assert main([*args, "--num-samples", 2]) == 0
    assert capsys.readouterr().out.count("--- sample") == 2
    # a float64 model has no bf16 inference: a one-line error naming the option
    d = tmp_path / "f64"
    assert main(["train", "--text", corpus, "--out", d, "--max-steps", 2, "--dtype", "float64", *TINY]) == 0
    capsys.readouterr()
    assert_one_line_error(capsys, main(["generate", "--checkpoint", d, "--weights", "bf16"]),
                          "--weights", "float32")


def test_generate_in_a_real_process(run_dir):
    r = fastlstm_cmd("generate", "--checkpoint", str(run_dir), "--prime", "king ", "--length", "30",
                     "--seed", "1", "--top-k", "3", "--temperature", "0.5")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("king ") and len(r.stdout) == 5 + 30 + 1


def test_resume_continues_the_run(tmp_path, corpus):
    out = tmp_path / "r"
    assert main(["train", "--text", corpus, "--out", out, "--max-steps", 3, *TINY]) == 0
    assert main(["train", "--resume", "--out", out, "--max-steps", 5, "--progress", "none"]) == 0
    meta = json.loads((out / "checkpoint.json").read_text())
    assert meta["step"] == 5 and meta["options"]["hidden_size"] == 12


# In a fresh process: which modules the timed part of `generate --timing` imports (none may: the
# first LSTM call's lazy imports, such as SciPy's BLAS for the C backend, are start-up).
TIMED_IMPORTS = """
import json, sys
from fastlstm.charlm import cli, model
real = model.CharModel.generate
seen = {}

def generate(self, *args, **kwargs):
    seen["before"] = set(sys.modules)
    ids = real(self, *args, **kwargs)
    seen["during"] = sorted(set(sys.modules) - seen["before"])
    return ids

model.CharModel.generate = generate
status = cli.main(["generate", "--checkpoint", sys.argv[1], "--length", "1", "--timing"])
with open(sys.argv[2], "w") as f:
    json.dump({"status": status, "during": seen["during"]}, f)
"""


def test_generate_timing_reports_start_up_apart(run_dir, tmp_path):
    report = tmp_path / "report.json"
    e = dict(os.environ)
    e["PYTHONPATH"] = str(Path(fastlstm.__file__).resolve().parents[1]) + (
        os.pathsep + e["PYTHONPATH"] if e.get("PYTHONPATH") else "")
    r = subprocess.run([sys.executable, "-c", TIMED_IMPORTS, str(run_dir), str(report)], capture_output=True,
                       text=True, env=e, timeout=120)
    assert r.returncode == 0, r.stderr
    got = json.loads(report.read_text())
    assert got["status"] == 0 and got["during"] == [], got
    line = r.stderr.strip().splitlines()[-1]
    assert line.startswith("start-up ") and line.count("chars/s") == 1, line
    assert line.index("start-up") < line.index("generated 1 characters") < line.index("chars/s"), line


# ----------------------------------------------------------------------------- bad input: train
@pytest.mark.parametrize("content,fragment", [
    (None, "does not exist"),
    (b"", "empty"),
    (b"\x7fELF\x02\x01\x01\x00\x00\x00binary", "binary"),
    ("na\xefve caf\xe9 text " * 20, "--encoding"),
    ("short text", "too short"),
], ids=["missing", "empty", "binary", "invalid-utf8", "shorter-than-a-window"])
def test_train_bad_text(tmp_path, capsys, content, fragment):
    p = tmp_path / "input.txt"
    if isinstance(content, str):
        p.write_bytes(content.encode("latin-1"))
    elif content is not None:
        p.write_bytes(content)
    out = tmp_path / "out"
    status = main(["train", "--text", p, "--out", out, "--max-steps", 2, *TINY])
    assert_one_line_error(capsys, status, fragment)
    assert not out.exists()


def test_train_encoding_option_reads_latin1(tmp_path, capsys):
    p = tmp_path / "latin.txt"
    p.write_bytes(("na\xefve caf\xe9 text " * 20).encode("latin-1"))
    assert main(["train", "--text", p, "--encoding", "latin-1", "--out", tmp_path / "o", "--max-steps", 1,
                 *TINY]) == 0


def test_train_offline_without_corpus(tmp_path, capsys, monkeypatch):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    monkeypatch.setenv(_config.DATA_ENV, str(tmp_path / "empty"))
    monkeypatch.setenv(_config.MACBETH_URL_ENV, f"http://127.0.0.1:{port}/macbeth.txt")
    status = main(["train", "--out", tmp_path / "o", "--max-steps", 1, *TINY])
    assert_one_line_error(capsys, status, "--text")


@pytest.mark.parametrize("args,fragment", [
    (["--dropout", "1.5"], "--dropout"),
    (["--seq-len", "0"], "--seq-len"),
    (["--batch-size", "x"], "invalid int"),
    (["--preset", "nope"], "invalid choice"),
    (["--no-such-option"], "unrecognized"),
    (["--resume", "--overwrite"], "contradict"),
])
def test_train_bad_options(tmp_path, capsys, corpus, args, fragment):
    status = main(["train", "--text", corpus, "--out", tmp_path / "o", *TINY, *args])
    assert_one_line_error(capsys, status, fragment)
    assert not (tmp_path / "o").exists()


def test_train_refuses_to_overwrite_a_run(tmp_path, capsys, corpus):
    out = tmp_path / "r"
    assert main(["train", "--text", corpus, "--out", out, "--max-steps", 2, *TINY]) == 0
    before = snapshot(out)
    capsys.readouterr()
    assert_one_line_error(capsys, main(["train", "--text", corpus, "--out", out, *TINY]), "--resume")
    assert snapshot(out) == before


def test_resume_mismatches_are_refused_and_nothing_overwritten(tmp_path, capsys, corpus):
    out = tmp_path / "r"
    assert main(["train", "--text", corpus, "--out", out, "--max-steps", 2, *TINY]) == 0
    before = snapshot(out)
    capsys.readouterr()
    other = tmp_path / "other.txt"
    other.write_text("QWERTY uiop " * 100)
    cases = [
        (["--text", other], "vocabulary"),
        (["--hidden-size", "20"], "--hidden-size"),
        (["--layers", "3"], "--layers"),
        (["--input", "scaled"], "--input"),
        (["--lowercase"], "--lowercase"),
        (["--preset", "tutorial"], "--preset"),
    ]
    for args, fragment in cases:
        status = main(["train", "--resume", "--out", out, "--max-steps", 4, "--progress", "none", *args])
        assert_one_line_error(capsys, status, fragment)
        assert snapshot(out) == before, args
    status = main(["train", "--resume", "--out", tmp_path / "nothing", "--max-steps", 4])
    assert_one_line_error(capsys, status, "nothing to resume")


def corrupt_variants(run_dir, tmp_path):
    """Copies of a run folder broken in different ways: name -> folder."""
    def copy(name):
        d = tmp_path / name
        d.mkdir()
        for f in ("checkpoint.json", "checkpoint.npz"):
            (d / f).write_bytes((run_dir / f).read_bytes())
        return d

    out = {}
    d = copy("garbage-json")
    (d / "checkpoint.json").write_text("{not json")
    out["garbage-json"] = d
    d = copy("truncated-npz")
    raw = (d / "checkpoint.npz").read_bytes()
    (d / "checkpoint.npz").write_bytes(raw[:len(raw) // 2])
    out["truncated-npz"] = d
    d = copy("truncated-npz-matching-checksum")  # the checksum alone would not catch it
    (d / "checkpoint.npz").write_bytes(raw[:len(raw) // 2])
    meta = json.loads((d / "checkpoint.json").read_text())
    meta["npz_sha256"] = hashlib.sha256(raw[:len(raw) // 2]).hexdigest()
    (d / "checkpoint.json").write_text(json.dumps(meta))
    out["truncated-npz-matching-checksum"] = d
    d = copy("missing-npz")
    (d / "checkpoint.npz").unlink()
    out["missing-npz"] = d
    d = copy("not-a-checkpoint")
    (d / "checkpoint.json").write_text(json.dumps({"hello": 1}))
    out["not-a-checkpoint"] = d
    d = copy("truncated-json")
    j = (d / "checkpoint.json").read_bytes()
    (d / "checkpoint.json").write_bytes(j[:len(j) // 2])
    out["truncated-json"] = d
    return out


def test_corrupt_checkpoints(run_dir, tmp_path, capsys):
    for name, d in corrupt_variants(run_dir, tmp_path).items():
        before = snapshot(d)
        status = main(["generate", "--checkpoint", d, "--length", 5])
        assert_one_line_error(capsys, status, "checkpoint")
        status = main(["train", "--resume", "--out", d, "--max-steps", 9, "--progress", "none"])
        assert_one_line_error(capsys, status)
        assert snapshot(d) == before, name


# ----------------------------------------------------------------------------- bad input: generate
def test_generate_bad_input(run_dir, tmp_path, capsys):
    cases = [
        (["--checkpoint", tmp_path / "nowhere"], "does not exist"),
        (["--checkpoint", tmp_path], "no checkpoint"),
        (["--checkpoint", run_dir, "--prime", "Zebra\u00e9"], "never saw"),
        (["--checkpoint", run_dir, "--prime", ""], "empty"),
        (["--checkpoint", run_dir, "--length", "-1"], "--length"),
        (["--checkpoint", run_dir, "--top-k", "-2"], "--top-k"),
        (["--checkpoint", run_dir, "--temperature", "-1"], "--temperature"),
        (["--checkpoint", run_dir, "--num-samples", "0"], "--num-samples"),
        (["--checkpoint", run_dir, "--num-samples", "two"], "invalid int"),
        (["--checkpoint", run_dir, "--length", "ten"], "invalid int"),
        (["--checkpoint", run_dir, "--weights", "fp8"], "--weights"),
    ]
    if "cuda" not in fastlstm.available_backends():
        cases.append((["--checkpoint", run_dir, "--backend", "cuda"], "not available"))
    for args, fragment in cases:
        assert_one_line_error(capsys, main(["generate", *args]), fragment)


def test_bad_input_in_a_real_process(tmp_path, run_dir):
    p = tmp_path / "bin.dat"
    p.write_bytes(b"\x00\x01\x02" * 100)
    quiet = {"PYTHONWARNINGS": "ignore::RuntimeWarning"}  # a pure-NumPy install warns at import
    r = fastlstm_cmd("train", "--text", str(p), "--out", str(tmp_path / "o"), env=quiet)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "binary" in r.stderr
    r = fastlstm_cmd("generate", "--checkpoint", str(run_dir), "--prime", "#", env=quiet)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "never saw" in r.stderr
    assert r.stdout == ""
