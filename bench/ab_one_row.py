"""The one-row loop's projection ahead, on against off (FASTLSTM_ONE_ROW_AHEAD), for one
layer's forward of one sequence (T=100, N=1): each setting in its own processes, 3
alternating rounds, the best of each (a script, not a test).

    python bench/ab_one_row.py H I THREADS
"""

import os
import statistics
import subprocess
import sys
import time

import numpy as np

H, I, thr = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
if len(sys.argv) > 4:  # one setting, in this process: the median of 7 rounds of 20 calls
    import fastlstm
    m = fastlstm.LSTM(I, H, seed=0)
    x = np.random.default_rng(0).standard_normal((100, 1, I)).astype(np.float32)
    m.forward(x)
    ts = []
    for _ in range(7):
        t0 = time.perf_counter()
        for _ in range(20):
            m.forward(x)
        ts.append((time.perf_counter() - t0) / 20 * 1e3)
    print(statistics.median(ts))
    sys.exit()
res: dict[str, list[float]] = {"on": [], "off": []}
for _ in range(3):
    for mode, times in res.items():
        env = dict(os.environ, FASTLSTM_ONE_ROW_AHEAD=mode, FASTLSTM_NUM_THREADS=thr)
        out = subprocess.run([sys.executable, __file__, str(H), str(I), thr, "one"], env=env,
                             capture_output=True, text=True, check=True)
        times.append(float(out.stdout))
on, off = min(res["on"]), min(res["off"])
print(f"H={H} I={I} threads={thr}: on {on:.3f} ms, off {off:.3f} ms, off/on {off / on:.3f}")
