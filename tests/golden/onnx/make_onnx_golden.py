"""Write the ONNX golden fixtures (tests/test_onnx.py reads them without onnx installed):
one ONNX LSTM node per file, written by hand with onnx.helper (not by fastlstm.to_onnx),
run by onnxruntime: its weights W, R, B in ONNX's layout and gate order, the inputs and
onnxruntime's outputs Y, Y_h, Y_c.

    python tests/golden/onnx/make_onnx_golden.py      # needs onnx and onnxruntime
"""

import os

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

HERE = os.path.dirname(os.path.abspath(__file__))
CASES = {  # name: (T, N, I, H, direction, with B, with initial states, with sequence_lens)
    "forward_bias_state": (5, 3, 4, 6, "forward", True, True, False),
    "bidirectional_nobias_lengths": (6, 4, 3, 5, "bidirectional", False, True, True),
}


def write(name, T, N, I, H, direction, with_b, with_state, with_lens, seed):
    rng = np.random.default_rng(seed)
    D = 2 if direction == "bidirectional" else 1
    f32 = np.float32
    W = (0.4 * rng.standard_normal((D, 4 * H, I))).astype(f32)
    R = (0.4 * rng.standard_normal((D, 4 * H, H))).astype(f32)
    B = (0.3 * rng.standard_normal((D, 8 * H))).astype(f32)
    X = rng.standard_normal((T, N, I)).astype(f32)
    h0 = (0.5 * rng.standard_normal((D, N, H))).astype(f32)
    c0 = (0.5 * rng.standard_normal((D, N, H))).astype(f32)
    lens = rng.integers(1, T + 1, N).astype(np.int32)
    inits = [numpy_helper.from_array(W, "W"), numpy_helper.from_array(R, "R")]
    if with_b:
        inits.append(numpy_helper.from_array(B, "B"))
    ins = ["X", "W", "R", "B" if with_b else "", "sequence_lens" if with_lens else "",
           "initial_h" if with_state else "", "initial_c" if with_state else ""]
    node = helper.make_node("LSTM", ins, ["Y", "Y_h", "Y_c"], hidden_size=H, direction=direction)
    inputs = [helper.make_tensor_value_info("X", TensorProto.FLOAT, [T, N, I])]
    feed = {"X": X}
    if with_lens:
        inputs.append(helper.make_tensor_value_info("sequence_lens", TensorProto.INT32, [N]))
        feed["sequence_lens"] = lens
    if with_state:
        inputs += [helper.make_tensor_value_info(n, TensorProto.FLOAT, [D, N, H]) for n in ("initial_h", "initial_c")]
        feed.update(initial_h=h0, initial_c=c0)
    outputs = [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [T, D, N, H]),
               helper.make_tensor_value_info("Y_h", TensorProto.FLOAT, [D, N, H]),
               helper.make_tensor_value_info("Y_c", TensorProto.FLOAT, [D, N, H])]
    model = helper.make_model(helper.make_graph([node], name, inputs, outputs, inits),
                              opset_imports=[helper.make_opsetid("", 14)])
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    Y, Y_h, Y_c = sess.run(None, feed)
    arrays = dict(W=W, R=R, X=X, Y=Y, Y_h=Y_h, Y_c=Y_c, model=np.frombuffer(model.SerializeToString(), np.uint8))
    if with_b:
        arrays["B"] = B
    if with_state:
        arrays.update(h0=h0, c0=c0)
    if with_lens:
        arrays["lengths"] = lens
    np.savez(os.path.join(HERE, f"{name}.npz"), **arrays)


if __name__ == "__main__":
    for seed, (name, case) in enumerate(CASES.items()):
        write(name, *case, seed=seed)
        print("wrote", name)
