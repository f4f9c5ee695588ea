"""`python -m fastlstm.bench --options` (fastlstm/bench/options.py): end-to-end runs on
tiny cases, with torch when it is installed and with torch hidden, the report's
structure and ratios, and the output check that stops a run before timing.
"""

import json
import math

import numpy as np
import pytest

from fastlstm.bench import grid
from fastlstm.bench import options as opts

TINY = [opts.Case("bi", 2, 6, 4, 3, 5, {"bidirectional": True}),
        opts.Case("len", 1, 6, 7, 4, 5, lengths=True),
        opts.Case("proj", 1, 8, 4, 3, 5, {"proj_size": 3})]

#: The ratio labels per case kind, in report order.
LABELS = {"bidirectional": ["fwd / torch", "fwd+bwd / torch"],
          "lengths": ["fwd, lengths / fastlstm padded", "fwd, lengths / torch packed",
                      "fwd+bwd, lengths / torch packed", "torch fwd, packed / padded",
                      "torch fwd+bwd, packed / padded"],
          "proj": ["fwd / torch", "fwd+bwd / torch"]}


@pytest.fixture
def tiny(monkeypatch):
    monkeypatch.setattr(opts, "CASES", TINY)
    monkeypatch.setattr(opts, "roof_gflops", lambda budget_s: 1.0)  # no 2048² products in tests


def run_main(tmp_path, *extra):
    out = tmp_path / "report"
    grid.main(["--options", "--budget", "0.001", "--backend", "numpy", "--out", str(out), *extra])
    return json.loads((out / "options.json").read_text()), (out / "OPTIONS.md").read_text()


def positive(value):
    return isinstance(value, float) and math.isfinite(value) and value > 0


def check_structure(data, text, threads):
    assert [c["name"] for c in data["cases"]] == [c.name for c in TINY]
    assert data["command"].startswith("python -m fastlstm.bench --options")
    for case in data["cases"]:
        assert case["threads"] == threads and case["roof"] == 1.0 and case["runs_on"] == "numpy"
        assert [q["label"] for q in case["ratios"]] == LABELS[case["kind"]]
        assert positive(case["gflops_fwd"]) and positive(case["gflops_fwd_bwd"])
        for q in case["ratios"]:
            assert q["target"] is None or q["target"] in (0.4, 0.6, 0.8)
            assert q["status"] in ("PASS", "miss", "context", "n/a")
            assert positive(q["ours_ms"]) or q["ours_ms"] is None
            # each ratio line is in the markdown with the case's name and thread count
            assert f"| {case['name']} | {threads} | numpy | {q['label']} |" in text
    lengths = data["cases"][1]
    assert lengths["lengths_sum"] == int(np.random.default_rng(0).integers(1, 8, 4).sum())
    assert positive(lengths["ratios"][0]["ratio"])  # fastlstm against itself: needs no torch
    for key in ("command: `python -m fastlstm.bench --options", "date: ", "cpu: ", f"threads: {threads}",
                "torch: ", "numpy: ", "roof GFLOP/s"):
        assert key in text


def test_end_to_end_with_torch(tmp_path, tiny):
    pytest.importorskip("torch")
    data, text = run_main(tmp_path)
    check_structure(data, text, threads=2)  # --options runs at 2 threads by default
    for case in data["cases"]:
        assert case["torch_threads"] == 2
        assert case["max_abs_diff"] < opts.TOLERANCE
        for q in case["ratios"]:
            assert positive(q["ratio"]) and positive(q["theirs_ms"]) and q["status"] != "n/a"
            assert q["status"] == ("context" if q["target"] is None else "PASS" if q["ratio"] <= q["target"]
                                   else "miss")
    assert "Targets met: " in text
    assert data["machine_load"] is None or data["machine_load"]["wall_s"] >= 0


def test_end_to_end_without_torch(tmp_path, tiny, monkeypatch):
    monkeypatch.setattr(opts, "_torch", lambda: None)
    monkeypatch.setattr(grid, "_torch", lambda: None)
    data, text = run_main(tmp_path, "--threads", "1")
    check_structure(data, text, threads=1)
    assert data["machine"]["torch"]  # a version or "not installed": the header says which
    for case in data["cases"]:
        assert case["torch_threads"] is None and case["max_abs_diff"] is None
        for q in case["ratios"]:
            if q["label"] == "fwd, lengths / fastlstm padded":
                assert positive(q["ratio"]) and q["status"] in ("PASS", "miss")
            else:
                assert q["ratio"] is None and q["status"] == "n/a"
    assert "| n/a | n/a |" in text


def test_a_mismatch_stops_the_run(tiny, monkeypatch):
    pytest.importorskip("torch")
    models = opts.models

    def wrong(case, backend):
        model, lstm = models(case, backend)
        sd = model.state_dict()
        sd["bias_ih_l0"] = sd["bias_ih_l0"] + 0.5
        model.load_state_dict(sd)
        return model, lstm
    monkeypatch.setattr(opts, "models", wrong)
    with pytest.raises(opts.Mismatch, match="outputs differ"):
        opts.run(TINY[:1], [1], 0.001, "numpy", log=lambda line: None)


def test_forward_flop_counts_directions_lengths_and_projection():
    bi = opts.Case("bi", 2, 3, 5, 2, 4, {"bidirectional": True})
    assert opts.forward_flop(bi, None) == 2 * 2 * 10 * 4 * 3 * (4 + 3) + 2 * 2 * 10 * 4 * 3 * (6 + 3)
    assert opts.forward_flop(opts.Case("l", 1, 3, 5, 2, 4, lengths=True), np.array([1, 2])) == 2 * 3 * 4 * 3 * 7
    assert opts.forward_flop(opts.Case("p", 1, 8, 1, 1, 4, {"proj_size": 2}), None) == 2 * (4 * 8 * 6 + 16)


def test_options_and_quick_do_not_mix():
    with pytest.raises(SystemExit):
        grid.main(["--options", "--quick"])


def test_at_roof_is_the_ratio_a_run_at_the_roof_would_give():
    from fastlstm.bench import options

    r = {"ratios": [options.ratio("fwd / torch", 0.5, 2.0, 0.8, flop=10**11),
                    options.ratio("torch packed / padded", 1.0, 1.0, None)]}
    options.set_roof(r, 100.0)  # 1e11 FLOPs at 100 GFLOP/s: 1 s, against torch's 2 s
    assert r["roof"] == 100.0
    assert abs(r["ratios"][0]["at_roof"] - 0.5) < 1e-12
    assert r["ratios"][1]["at_roof"] is None
