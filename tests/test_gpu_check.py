"""bench/gpu_check.py's pieces without a GPU: the results file rewritten after every row
(and what it says when a run stops half way), the timing helper with and without CUDA
events, ratios, the shared-memory plan column; and, where the cuda backend is available
(a GPU, or NUMBA_ENABLE_CUDASIM=1), a run whose second row fails hard, in process.
The end-to-end smoke run is tests/test_cuda.py::test_gpu_check_script_runs.
"""

import importlib.util
import json
import os
from collections import namedtuple
from pathlib import Path
from types import SimpleNamespace

import pytest

import fastlstm

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "gpu_check.py"


@pytest.fixture(scope="module")
def gc():
    """bench/gpu_check.py as a module."""
    if not SCRIPT.exists():
        pytest.skip("bench/gpu_check.py is not in this tree")
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _meta():
    return {"card": "test card", "date": "2026-01-01", "T": 3, "events": "none (test)",
            "command": "python bench/gpu_check.py", "versions": "versions"}


def _row(H, N, err=1e-7):
    row = {"H": H, "N": N, "T": 3, "I": H, "plan": {"use_smem": True, "smem_bytes": 131072}}
    for loop in ("persistent", "steps"):
        row[f"err_{loop}"] = err
        for kind in ("fwd", "fb"):
            row[f"{kind}_{loop}"], row[f"{kind}_{loop}_ev"] = 0.002, 0.001
    return row


def test_results_file_is_rewritten_after_every_row(gc, tmp_path):
    out = tmp_path / "r.md"
    results = gc.ResultsFile(str(out), _meta(), stream_note="Skipped: no torch.")
    results.write()
    assert "Status: running (incomplete), 0 rows so far" in out.read_text()
    results.add("rows", _row(8, 1))
    text = out.read_text()
    assert "Status: running (incomplete), 1 row so far" in text
    assert "| 8 | 1 | 128 | 1.0e-07 | 1.0e-07 | 2.000 |" in text  # wall table: smem KiB, errors, times
    assert "| 8 | 1 | 1.000 | 1.000 | - |" in text  # event table
    assert "Correctness" not in text
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["status"] == "running" and data["rows_so_far"] == 1 and len(data["rows"]) == 1
    results.add("options", {"case": "lengths H=8 N=2 T=3", "err": 2e-7, "fwd": 0.003, "fwd_ev": None})
    assert "Status: running (incomplete), 2 rows so far" in out.read_text()
    results.finish(["- a kernel note"])
    text = out.read_text()
    assert "Status:" not in text and "- a kernel note" in text and "Skipped: no torch." in text
    assert "| lengths H=8 N=2 T=3 | 2.0e-07 | 3.000 | - |" in text
    assert text.rstrip().endswith("Correctness: all below 1e-5")
    assert json.loads((tmp_path / "r.json").read_text())["status"] == "done"
    assert not list(tmp_path.glob("*.tmp"))


def test_results_file_failures(gc, tmp_path):
    out = tmp_path / "r.md"
    results = gc.ResultsFile(str(out), _meta())
    refused = _row(8, 2, err="RuntimeError: grid does not fit")
    results.add("rows", _row(8, 1))
    results.add("rows", refused)
    assert results.failed
    results.abort(KeyboardInterrupt())
    text = out.read_text()
    assert "Status: aborted by KeyboardInterrupt (incomplete), 2 rows so far" in text
    assert "| 8 | 2 | 128 | refused | refused |" in text
    assert "- H=8 N=2 persistent: RuntimeError: grid does not fit" in text
    results.finish([])
    assert out.read_text().rstrip().endswith("Correctness: FAILED (an error above 1e-5)")

    stream = gc.ResultsFile(str(out), _meta())
    stream.add("stream", {"case": "stream H=8 N=2 T=3", "err": 3e-3, "busy_at_sync": True})
    stream.finish([])
    assert stream.failed and "| stream H=8 N=2 T=3 | 3.0e-03 | yes |" in out.read_text()


class FakeEvents:
    """Events whose elapsed time is the number of calls between them, in seconds."""

    def __init__(self):
        self.calls = 0

    def pair(self):
        return ["start"], ["end"]

    def record(self, event):
        event.append(self.calls)

    def elapsed_s(self, start, end):
        return float(end[-1] - start[-1])


def test_timed_with_and_without_events(gc):
    events, synced = FakeEvents(), []

    def fn():
        events.calls += 1

    wall, ev = gc.timed(fn, lambda: synced.append(1), reps=5, events=events)
    assert wall >= 0 and ev == 1.0
    assert events.calls == 6 and len(synced) == 6  # one warm-up call, then reps
    wall, ev = gc.timed(fn, lambda: None, reps=2)
    assert wall >= 0 and ev is None


def test_ratios_by_wall_and_event_time(gc):
    row = _row(8, 1)
    row["fwd_steps_ev"] = None  # a loop without event times: the other one counts
    row.update(fwd_cudnn_fp32=0.001, fwd_cudnn_fp32_ev=0.0005, fb_cudnn_fp32=0.004, fb_cudnn_fp32_ev=None)
    gc.add_ratios(row)
    assert row["ratio_fwd"] == pytest.approx(2.0) and row["ratio_fwd_ev"] == pytest.approx(2.0)
    assert row["ratio_fb"] == pytest.approx(0.5) and "ratio_fb_ev" not in row
    bare = _row(8, 1)
    gc.add_ratios(bare)  # no torch: no ratios
    assert not any(k.startswith("ratio") for k in bare)


def test_shared_memory_plan_column(gc):
    Plan = namedtuple("Plan", "blocks units threads use_smem smem_bytes")

    def plan_of(result):
        return gc.persistent_plan(SimpleNamespace(persistent_plan=lambda N, H, itemsize: result), 64, 512, 4)

    assert gc.persistent_plan(SimpleNamespace(), 64, 512, 4) == "absent"
    on = plan_of(Plan(132, 4, 256, True, 32768))
    assert on == {"blocks": 132, "units": 4, "threads": 256, "use_smem": True, "smem_bytes": 32768}
    assert gc.fmt_smem(on) == "32"
    assert gc.fmt_smem(plan_of(Plan(132, 8, 512, False, 0))) == "off"
    assert gc.fmt_smem(plan_of(None)) == "none"
    assert gc.fmt_smem("absent") == "-"

    def broken(N, H, itemsize):
        raise TypeError("changed signature")

    assert gc.fmt_smem(gc.persistent_plan(SimpleNamespace(persistent_plan=broken), 64, 512, 4)) == "?"
    seen = []
    gc.persistent_plan(SimpleNamespace(persistent_plan=lambda *a: seen.append(os.environ["FASTLSTM_CUDA_LOOP"])),
                       1, 8, 4)
    assert seen == ["persistent"]  # the plan of the persistent loop, whatever the environment says


def test_a_run_that_fails_half_way_keeps_its_rows(gc, tmp_path, monkeypatch):
    """The second main row raises: the file on disk keeps the first and says the run is incomplete."""
    if "cuda" not in fastlstm.available_backends():
        pytest.skip("cuda backend not available (no numba-cuda, or no GPU and NUMBA_ENABLE_CUDASIM unset)")
    monkeypatch.delenv("FASTLSTM_CUDA_LOOP", raising=False)
    real, calls = gc.make_case, []

    def make_case(*args, **kw):
        calls.append(args)
        if len(calls) == 2:
            raise RuntimeError("the card fell over")
        return real(*args, **kw)

    monkeypatch.setattr(gc, "make_case", make_case)
    out = tmp_path / "gpu.md"
    with pytest.raises(RuntimeError, match="the card fell over"):
        gc.main(["--allow-simulator", "--hs", "8", "--ns", "1", "2", "--steps", "3", "--reps", "1",
                 "--out", str(out)])
    text = out.read_text()
    assert "Status: aborted by RuntimeError: the card fell over (incomplete), 1 row so far" in text
    assert "| 8 | 1 |" in text and "| 8 | 2 |" not in text and "Correctness" not in text
    data = json.loads((tmp_path / "gpu.json").read_text())
    assert data["status"].startswith("aborted") and [(r["H"], r["N"]) for r in data["rows"]] == [(8, 1)]
    assert "FASTLSTM_CUDA_LOOP" not in os.environ  # the loop switch is restored


def test_late_inputs_are_exactly_the_host_values(gc):
    """The stream check's inputs: a chain of matmuls times 0 added changes no bit (on the CPU here)."""
    torch = pytest.importorskip("torch")
    w, x, dy = gc.make_case(8, 2, 3)
    late = gc.late_on_stream(torch, {"x": x, "dy": dy, **w}, size=64, rounds=3, device="cpu")
    for name, want in {"x": x, "dy": dy, **w}.items():
        got = late[name].numpy()
        assert got.dtype == want.dtype and got.shape == want.shape and got.tobytes() == want.tobytes(), name
