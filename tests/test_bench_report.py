"""`python -m fastlstm.bench`: the rates and ratio-at-roof figures of its report,
the targets summary, and one end-to-end run on a tiny grid (with torch when it
is installed, without it otherwise).
"""

import json

import pytest

from fastlstm.bench import grid as bench


def row(name, fwd, torch_fwd, fwd_bwd, torch_fwd_bwd, roof=100.0, flop=1e9, threads=1):
    r = {"name": name, "threads": threads, "roof": roof, "fwd": fwd, "torch_fwd": torch_fwd,
         "fwd_bwd": fwd_bwd, "torch_fwd_bwd": torch_fwd_bwd}
    r.update(bench.rates(flop, r))
    return r


def test_rates_count_three_forwards_and_the_roof():
    r = row("a", fwd=0.02, torch_fwd=0.0125, fwd_bwd=0.05, torch_fwd_bwd=0.04)
    assert r["gflops_fwd"] == pytest.approx(50.0)
    assert r["gflops_fwd_bwd"] == pytest.approx(60.0)
    assert r["torch_gflops_fwd"] == pytest.approx(80.0)
    assert r["torch_gflops_fwd_bwd"] == pytest.approx(75.0)
    # at the roof (100 GFLOP/s) fastlstm would take 0.01 s and 0.03 s
    assert r["ratio_at_roof_fwd"] == pytest.approx(0.01 / 0.0125)
    assert r["ratio_at_roof_fwd_bwd"] == pytest.approx(0.03 / 0.04)


def test_rates_without_torch_are_none():
    r = row("a", fwd=0.02, torch_fwd=None, fwd_bwd=0.05, torch_fwd_bwd=None)
    assert r["torch_gflops_fwd"] is None and r["ratio_at_roof_fwd_bwd"] is None
    assert r["gflops_fwd"] == pytest.approx(50.0)


def test_target_summary_names_points_beyond_the_roof():
    rows = [
        # meets both targets
        row("fast", fwd=0.01, torch_fwd=0.02, fwd_bwd=0.03, torch_fwd_bwd=0.06),
        # misses fwd+bwd, torch at 50% of the roof: reachable in principle
        row("slow", fwd=0.01, torch_fwd=0.02, fwd_bwd=0.06, torch_fwd_bwd=0.06),
        # misses fwd+bwd, torch at 90% of the roof: 0.75 would need 120% of it
        row("peak", fwd=0.012, torch_fwd=0.011, fwd_bwd=0.034, torch_fwd_bwd=0.03 / 0.9, threads=2),
    ]
    fwd, fwd_bwd = bench.target_summary(rows)
    assert fwd.startswith("- forward ratio <= 1: 2 of 3 points")
    assert "more than the roof" not in fwd  # "peak" misses, but torch is below the roof there
    assert fwd_bwd.startswith("- forward+backward ratio <= 0.75: 1 of 3 points")
    assert "at 1 of the others" in fwd_bwd
    assert "peak at 2 threads (ratio at the roof 0.90)" in fwd_bwd and "slow" not in fwd_bwd


def test_markdown_without_torch_says_na():
    rows = [row("a", fwd=0.02, torch_fwd=None, fwd_bwd=0.05, torch_fwd_bwd=None)]
    text = bench.markdown(rows, {"cpu": "test"}, "python -m fastlstm.bench")
    line = next(li for li in text.splitlines() if li.startswith("| a |"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[3] == cells[4] == "n/a" and cells[-1] == "n/a / n/a"
    assert "Targets" not in text


def test_end_to_end_on_a_tiny_grid(tmp_path, monkeypatch):
    monkeypatch.setattr(bench, "QUICK", [("tiny", 1, 8, 3, 2, 4)])
    monkeypatch.setattr(bench, "roof_gflops", lambda budget_s: 1.0)  # no 2048² products in tests
    out = tmp_path / "report"
    bench.main(["--quick", "--threads", "1", "--budget", "0.001", "--backend", "numpy", "--out", str(out)])
    data = json.loads((out / "results.json").read_text())
    (r,) = data["rows"]
    assert r["name"] == "tiny" and r["threads"] == 1 and r["roof"] == 1.0
    assert r["fwd"] > 0 and r["fwd_bwd"] > 0
    assert r["gflops_fwd"] == pytest.approx(bench.forward_flop(1, 8, 3, 2, 4) / r["fwd"] / 1e9)
    text = (out / "RESULTS.md").read_text()
    assert "| tiny | 1 |" in text and "--backend numpy" in text
    if bench._torch() is not None:
        assert r["torch_fwd"] > 0 and r["ratio_at_roof_fwd_bwd"] > 0
        assert "Targets" in text
    else:
        assert r["torch_fwd"] is None


def test_one_roof_per_thread_count_the_best_of_the_run(monkeypatch):
    roofs = iter([2.0, 5.0, 3.0])  # before the first point, after each of the two
    monkeypatch.setattr(bench, "roof_gflops", lambda budget_s: next(roofs))
    grid = [("a", 1, 8, 3, 2, 4), ("b", 1, 4, 2, 1, 3)]
    rows = bench.run(grid, [1], 0.001, "numpy", log=lambda text: None)
    assert [r["name"] for r in rows] == ["a", "b"]
    for r in rows:
        assert r["roof"] == 5.0
        flop = bench.forward_flop(r["L"], r["H"], r["T"], r["N"], r["I"])
        if r["torch_fwd_bwd"] is not None:
            assert r["ratio_at_roof_fwd_bwd"] == pytest.approx(3 * flop / 5e9 / r["torch_fwd_bwd"])


def test_printed_rows_line_up_under_the_headings():
    r = row("tutorial N30 I64", fwd=0.02, torch_fwd=0.0125, fwd_bwd=0.05, torch_fwd_bwd=0.04)
    head, line = bench.header_line(), bench.format_row(r)
    assert len(head) == len(line)
    for heading, _ in bench.COLUMNS:
        assert heading in head
    # each value ends where its heading ends (right-aligned numbers)
    assert line.rstrip().endswith("1.25") and head.rstrip().endswith("ratio fwd+bwd")
    assert "n/a" in bench.format_row(row("b", fwd=0.02, torch_fwd=None, fwd_bwd=0.05, torch_fwd_bwd=None))


def test_machine_info_is_the_same_from_run_to_run():
    """pytest-benchmark compares machine_info between runs: nothing per run goes in."""
    from fastlstm.bench import machine
    a, b = machine.machine_info(), machine.machine_info()
    assert a == b
    assert a["cpu"] and a["versions"]["fastlstm"] and "OPENBLAS_CORETYPE" in a["env"]
