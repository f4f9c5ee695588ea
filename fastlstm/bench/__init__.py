"""fastlstm's benchmark tools: the runner behind `python -m fastlstm.bench` (grid.py),
its --options cases for bidirectional, lengths and projection (options.py, loaded on demand)
and the one timing and machine-information helper (machine.py) that it, the
pytest-benchmark suite in bench/ and the scripts there all use.
"""

from .grid import GRID, QUICK, forward_flop, markdown, rates, run, target_summary
from .machine import machine_info, median_time, paired_medians, round_times

__all__ = ["GRID", "QUICK", "forward_flop", "markdown", "rates", "run", "target_summary",
           "machine_info", "median_time", "paired_medians", "round_times"]
