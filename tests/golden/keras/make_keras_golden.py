"""Write the Keras golden fixtures (tests/test_keras.py reads them without Keras): Keras 3
layers with random weights run by Keras itself (KERAS_BACKEND=torch), their weights as
get_weights() gives them, the input and Keras's outputs (return_sequences, return_state).

    KERAS_BACKEND=torch python tests/golden/keras/make_keras_golden.py
"""

import os

os.environ.setdefault("KERAS_BACKEND", "torch")

import keras  # noqa: E402
import numpy as np  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def randomize(layer, rng):
    layer.set_weights([(0.4 * rng.standard_normal(w.shape)).astype(np.float32) for w in layer.get_weights()])


def write(name, make, N=3, T=6, I=4, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, T, I)).astype(np.float32)
    layer = make()
    out = layer(x)  # builds it
    randomize(layer, rng)
    out = [np.asarray(keras.ops.convert_to_numpy(o)) for o in layer(x)]
    weights = layer.get_weights()
    np.savez(os.path.join(HERE, f"{name}.npz"), x=x, y=out[0], states=np.stack(out[1:]),
             **{f"w{k}": w for k, w in enumerate(weights)})


if __name__ == "__main__":
    write("lstm", lambda: keras.layers.LSTM(5, return_sequences=True, return_state=True), seed=0)
    write("bidirectional", lambda: keras.layers.Bidirectional(
        keras.layers.LSTM(5, return_sequences=True, return_state=True)), seed=1)
    print("wrote lstm, bidirectional")
