"""The pieces of data-parallel training that run in one process: dropout masks of a rank's rows
(``batch_rows``) equal those rows of the whole batch's masks; the rows each rank takes; the
launcher detection and the error without mpi4py; a checkpoint written in the middle of a step
(as the save-on-signal thread does) resumes exactly; a SIGTERM under ``StopRequests(mpi=True)``
with ``SaveOnSignal`` writes the checkpoint at once from the thread. The runs under mpiexec are
in test_mpi.py.
"""

import os
import signal
import sys
import time

import numpy as np
import pytest
from test_trainer import TINY, make_text

import fastlstm
from fastlstm._dropout import batch_rows, keep_mask
from fastlstm.charlm import parallel
from fastlstm.charlm.checkpoints import load_checkpoint
from fastlstm.charlm.model import CharModel
from fastlstm.charlm.parallel import Group, connect, launcher_size
from fastlstm.charlm.run import prepare_run, run_training
from fastlstm.charlm.signals import SaveOnSignal, StopRequests


@pytest.mark.parametrize("shape", [(7, 10, 5), (10, 3)])
@pytest.mark.parametrize("rows", [(0, 4), (4, 10), (3, 3), (0, 10)])
def test_mask_of_some_rows_is_those_rows_of_the_whole_mask(shape, rows):
    start, stop = rows
    n = shape[-2]
    whole = keep_mask(np.random.default_rng(5), shape, 0.3)
    rng = np.random.default_rng(5)
    with batch_rows(start, stop, n):
        part = keep_mask(rng, shape[:-2] + (stop - start, shape[-1]), 0.3)
    np.testing.assert_array_equal(part, whole[..., start:stop, :])
    # the generator moved on exactly as the whole batch's draw moves it
    after = np.random.default_rng(5)
    keep_mask(after, shape, 0.3)
    assert rng.bit_generator.state == after.bit_generator.state


def test_batch_rows_checks_its_arguments_and_the_mask_shape():
    with pytest.raises(ValueError, match="start <= stop <= total"):
        with batch_rows(3, 2, 5):
            pass
    with batch_rows(0, 2, 5), pytest.raises(ValueError, match="should have 2 rows"):
        keep_mask(np.random.default_rng(0), (4, 3, 6), 0.5)


def test_lstm_dropout_of_a_share_matches_the_whole_batch():
    """fastlstm.LSTM's masks between layers, drawn for rows 2:5 of 6, are those rows of the
    whole batch's: the outputs of those rows agree."""
    x = np.random.default_rng(1).standard_normal((5, 6, 3)).astype(np.float32)
    whole = fastlstm.LSTM(3, 8, 3, dropout=0.5, seed=4)
    part = fastlstm.LSTM(3, 8, 3, dropout=0.5, seed=4)
    y, _ = whole.forward(x, training=True)
    with batch_rows(2, 5, 6):
        yp, _ = part.forward(x[:, 2:5], training=True)
    np.testing.assert_allclose(yp, y[:, 2:5], rtol=1e-5, atol=1e-6)


class _FakeComm:
    def __init__(self, rank, size):
        self.rank, self.size = rank, size

    def Get_rank(self):
        return self.rank

    def Get_size(self):
        return self.size


@pytest.mark.parametrize("n, size", [(64, 2), (30, 3), (3, 4), (10, 4)])
def test_rows_tile_the_batch(n, size):
    shares = [Group(_FakeComm(r, size), None).rows(n) for r in range(size)]
    assert shares[0][0] == 0 and shares[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(shares, shares[1:], strict=False))
    sizes = [b - a for a, b in shares]
    assert max(sizes) - min(sizes) <= 1


def test_launcher_size_reads_the_launchers_variables():
    assert launcher_size({}) == 1
    assert launcher_size({"OMPI_COMM_WORLD_SIZE": "4"}) == 4
    assert launcher_size({"PMI_SIZE": "3"}) == 3
    assert launcher_size({"OMPI_COMM_WORLD_SIZE": "x"}) == 1
    assert parallel.launcher_rank({}) == 0
    assert parallel.launcher_rank({"OMPI_COMM_WORLD_RANK": "3"}) == 3
    assert parallel.launcher_rank({"PMI_RANK": "1"}) == 1


def test_one_process_does_not_import_mpi4py(monkeypatch):
    for name in parallel.SIZE_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setitem(sys.modules, "mpi4py", None)  # an import would raise
    assert connect() is None


def test_several_ranks_without_mpi4py_say_what_to_install(monkeypatch):
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "2")
    monkeypatch.setitem(sys.modules, "mpi4py", None)
    with pytest.raises(RuntimeError, match=r"fastlstm\[mpi\]"):
        connect()


def test_show_config_says_whether_mpi4py_is_there():
    info = fastlstm.show_config("dicts")
    assert "mpi4py" in info


@pytest.fixture
def text_file(tmp_path):
    p = tmp_path / "corpus.txt"
    p.write_text(make_text(), encoding="utf-8")
    return p


def _losses(out):
    from fastlstm.charlm.metrics import read_metrics
    return [r["loss"] for _, r in read_metrics(os.path.join(out, "metrics.jsonl")) if "loss" in r]


def test_checkpoint_written_in_the_middle_of_a_step_resumes_exactly(text_file, tmp_path, monkeypatch):
    """What the save-on-signal thread writes while a step runs is the state before that step
    (parameters not yet updated, generators as before its draws): a run resumed from it takes
    the same steps as one that never stopped."""
    given = dict(TINY, text=str(text_file), eval_every=100)
    full = prepare_run(dict(given, max_steps=12), tmp_path / "full")
    run_training(full, progress="none", write_plot=False)

    half = prepare_run(dict(given, max_steps=12), tmp_path / "half")
    real = half.model.loss_and_backward

    def save_during_step_7(*a, **k):
        loss = real(*a, **k)  # the draws of this step are made, the update not yet
        if half.steps_done == 6:
            half.save()
            raise KeyboardInterrupt  # and the process is gone before the update
        return loss

    monkeypatch.setattr(half.model, "loss_and_backward", save_during_step_7)
    with pytest.raises(KeyboardInterrupt):
        for _ in range(12):
            half.train_step()
    meta, _ = load_checkpoint(tmp_path / "half")
    assert meta["step"] == 6
    resumed = prepare_run(dict(given, max_steps=12), tmp_path / "half", resume=True)
    losses = run_training(resumed, progress="none", write_plot=False)["losses"]
    np.testing.assert_allclose(losses, _losses(tmp_path / "full")[6:], rtol=1e-6)


@pytest.mark.skipif(not hasattr(signal, "SIGTERM") or sys.platform == "win32", reason="POSIX signals")
def test_sigterm_under_mpi_rules_saves_from_the_thread(text_file, tmp_path):
    trainer = prepare_run(dict(TINY, text=str(text_file), max_steps=3), tmp_path / "run")
    said = []
    with StopRequests(mpi=True) as requests, SaveOnSignal(trainer, said.append) as saver:
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(200):  # the thread writes it; the main thread may be busy meanwhile
            if saver.saved_step is not None:
                break
            time.sleep(0.01)
        assert requests.requested and requests.signal_name == "SIGTERM"
        os.kill(os.getpid(), signal.SIGTERM)  # a second signal changes nothing under MPI
    assert saver.saved_step == 0
    assert "checkpoint of step 0 saved" in said[0]
    meta, arrays = load_checkpoint(tmp_path / "run")
    np.testing.assert_array_equal(arrays["model.dense.weight"], trainer.model.params["dense.weight"])


def test_empty_share_adds_nothing():
    """A rank with no rows of a short last batch: loss 0, gradients 0, no warning."""
    m = CharModel(10, 8, 2, 0.2, 4, "embedding", seed=0)
    with np.errstate(all="raise"):
        loss = m.loss_and_backward(np.zeros((5, 0), np.int64), np.zeros((5, 0), np.int64))
    assert loss == 0.0 and not np.any(m.flat_grads)
