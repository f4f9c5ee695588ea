"""Setting up the cuda backend, without a GPU: the ``cuda`` extra brings numba-cuda's
CUDA compiler libraries (``numba-cuda[cu12]``); a missing driver, GPU or NVVM/libdevice
is reported by name with its fix (``unavailable_reasons()``, ``show_config()``); and a
torch tensor that requires grad, on the GPU or the CPU, is a TypeError saying to pass
``.detach()`` instead of torch's own error.
"""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import fastlstm
from fastlstm.backends import is_device_array

ROOT = Path(__file__).resolve().parents[1]
GRAD_MESSAGE = ("Can't get __cuda_array_interface__ on Variable that requires grad. If gradients "
                "aren't required, use var.detach() to get Variable that doesn't require grad.")


# -- the extra ------------------------------------------------------------------
def test_cuda_extra_brings_the_cuda_12_toolkit_wheels():
    tomllib = pytest.importorskip("tomllib")
    from packaging.requirements import Requirement
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    reqs = [Requirement(r) for r in extras["cuda"]]
    numba_cuda = [r for r in reqs if r.name == "numba-cuda"]
    assert len(numba_cuda) == 1, extras["cuda"]
    assert "cu12" in numba_cuda[0].extras  # NVVM, libdevice and NVRTC as wheels
    assert numba_cuda[0].specifier.contains("0.30.4") and not numba_cuda[0].specifier.contains("0.29")


# -- a missing driver, GPU or NVVM, reported ---------------------------------------------
# Runs in a fresh process with numba-cuda's real (not simulated) driver layer, its checks
# patched to each failure; prints what unavailable_reasons() and show_config() say.
SCENARIOS = r'''
import contextlib, io, json, sys
import numba.cuda
from numba.cuda.cudadrv import driver as drv, libs, nvvm
import fastlstm
from fastlstm import backends

class Driver:
    def __init__(self, error):
        self.initialization_error = error
    @property
    def is_available(self):
        return self.initialization_error is None

def no_nvvm():
    raise nvvm.NvvmSupportError("libNVVM is not available")

class NVVM:
    pass

SCENARIOS = {
    "nvvm": dict(gpu=True, nvvm_ok=False),
    "libdevice": dict(gpu=True, libdevice=None),
    "driver_without_nvvm": dict(gpu=False, driver=None, loads=False),
    "no_device": dict(gpu=False, driver="Call to cuInit results in CUDA_ERROR_NO_DEVICE (CUDA_ERROR_NO_DEVICE)"),
    "no_driver": dict(gpu=False, driver="CUDA driver library cannot be found."),
}
saved = (numba.cuda.is_available, drv.driver, nvvm.is_available, nvvm.NVVM, libs.get_libdevice)
out = {}
for name, s in SCENARIOS.items():
    numba.cuda.is_available = lambda s=s: s["gpu"]
    drv.driver = Driver(s.get("driver"))
    nvvm.is_available = lambda s=s: s.get("loads", True)
    nvvm.NVVM = NVVM if s.get("nvvm_ok", True) else no_nvvm
    libs.get_libdevice = lambda s=s: s.get("libdevice", "/cuda/nvvm/libdevice/libdevice.10.bc")
    sys.modules.pop("fastlstm.backends.cuda", None)
    backends._loaded.pop("cuda", None)
    backends._reasons.pop("cuda", None)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        fastlstm.show_config()
    out[name] = dict(available=fastlstm.available_backends(),
                     reason=backends.unavailable_reasons().get("cuda", ""),
                     config=fastlstm.show_config(mode="dicts")["unavailable"].get("cuda", ""),
                     printed=printed.getvalue())
    (numba.cuda.is_available, drv.driver, nvvm.is_available, nvvm.NVVM, libs.get_libdevice) = saved
print(json.dumps(out))
'''


@pytest.fixture(scope="module")
def reported():
    """What each failure makes unavailable_reasons() and show_config() say."""
    if importlib.util.find_spec("numba_cuda") is None:
        pytest.skip("numba-cuda is not installed")
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    env["PYTHONPATH"] = str(Path(fastlstm.__file__).resolve().parents[1]) + os.pathsep + env.get("PYTHONPATH", "")
    run = subprocess.run([sys.executable, "-c", SCENARIOS], capture_output=True, text=True,
                         timeout=300, env=env)
    assert run.returncode == 0, run.stdout + run.stderr
    return json.loads(run.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("scenario, says", [
    ("nvvm", ["NVVM", "NvvmSupportError", "pip install 'fastlstm[cuda]'", "numba-cuda[cu12]"]),
    ("libdevice", ["NVVM/libdevice", "libdevice.10.bc not found", "pip install 'fastlstm[cuda]'"]),
    ("driver_without_nvvm", ["NVVM", "libNVVM could not be loaded", "pip install 'fastlstm[cuda]'"]),
    ("no_device", ["sees no GPU", "CUDA_ERROR_NO_DEVICE", "NUMBA_ENABLE_CUDASIM=1"]),
    ("no_driver", ["no usable CUDA GPU or driver", "driver library cannot be found", "NUMBA_ENABLE_CUDASIM=1"]),
])
def test_missing_piece_is_named_in_reasons_and_show_config(reported, scenario, says):
    got = reported[scenario]
    assert "cuda" not in got["available"]
    for text in (got["reason"], got["config"], got["printed"]):
        for piece in says:
            assert piece in text, (scenario, piece, text)
    if scenario in ("no_device", "no_driver"):
        assert "NVVM" not in got["reason"]  # a driver problem is not blamed on the toolkit


@pytest.fixture
def cb():
    """The cuda backend module (the simulator here); its check functions, called with fakes."""
    if "cuda" not in fastlstm.available_backends():
        pytest.skip("cuda backend not available (no numba-cuda, or no GPU and NUMBA_ENABLE_CUDASIM unset)")
    from fastlstm.backends import cuda
    return cuda


class FakeNvvm:
    class NvvmSupportError(Exception):
        pass

    def __init__(self, loads=True, ok=True):
        self.loads, self.ok = loads, ok

    def is_available(self):
        return self.loads

    def NVVM(self):
        if not self.ok:
            raise self.NvvmSupportError("libNVVM is not available")


class FakeLibs:
    def __init__(self, path="/x/libdevice.10.bc", error=None):
        self.path, self.error = path, error

    def get_libdevice(self):
        if self.error:
            raise self.error
        return self.path


class FakeDriver:
    def __init__(self, error):
        self.initialization_error = error

    @property
    def is_available(self):
        if self.initialization_error:
            raise RuntimeError(self.initialization_error)
        return True


def test_nvvm_check_with_fakes(cb):
    assert cb._nvvm_problem(FakeNvvm(), FakeLibs()) is None
    for nvvm, libs, detail in [
            (FakeNvvm(loads=False), FakeLibs(), "libNVVM could not be loaded"),
            (FakeNvvm(ok=False), FakeLibs(), "NvvmSupportError: libNVVM is not available"),
            (FakeNvvm(), FakeLibs(path=None), "libdevice.10.bc not found"),
            (FakeNvvm(), FakeLibs(error=OSError('Failure finding "libnvrtc.so.12"')), "libnvrtc"),
    ]:
        message = cb._nvvm_problem(nvvm, libs)
        assert "NVVM" in message and detail in message
        assert "pip install 'fastlstm[cuda]'" in message and "numba-cuda[cu12]" in message


def test_driver_check_with_fakes(cb, monkeypatch):
    assert "no usable CUDA GPU or driver" in cb._gpu_problem(FakeDriver("CUDA driver library cannot be found."))
    assert "sees no GPU" in cb._gpu_problem(FakeDriver("Call to cuInit results in CUDA_ERROR_NO_DEVICE"))
    monkeypatch.setattr(cb, "_nvvm_problem", lambda: "no NVVM here")
    assert cb._gpu_problem(FakeDriver(None)) == "no NVVM here"  # the driver works: the toolkit is missing


# -- tensors that require grad --------------------------------------------------------
class FakeCudaTensor:
    """Mimics a torch CUDA tensor: ``__cuda_array_interface__`` is a property that raises
    RuntimeError while ``requires_grad`` (torch's message), and counts its reads."""

    is_cuda = True

    def __init__(self, host, requires_grad=True):
        self.host = np.ascontiguousarray(host, np.float32)
        self.shape = self.host.shape
        self.requires_grad = requires_grad
        self.reads = 0

    @property
    def __cuda_array_interface__(self):
        self.reads += 1
        if self.requires_grad:
            raise RuntimeError(GRAD_MESSAGE)
        return {"shape": self.shape, "typestr": self.host.dtype.str,
                "data": (self.host.ctypes.data, False), "version": 2, "strides": None}


class RefusingInterface:
    """A device array type without torch's flags whose interface refuses the same way."""

    shape = (2, 3)

    @property
    def __cuda_array_interface__(self):
        raise RuntimeError(GRAD_MESSAGE)


def test_device_rule_refuses_grad_tensors_without_reading_the_interface():
    t = FakeCudaTensor(np.ones((2, 3)))
    with pytest.raises(TypeError, match=r"^an input of shape \(2, 3\) is a CUDA tensor that requires grad: "
                                        r"pass tensor\.detach\(\)"):
        is_device_array(t)
    with pytest.raises(TypeError, match=r"^weight_ih is a CUDA tensor .* pass weight_ih\.detach\(\) "
                                        r"\(fastlstm computes its own gradients"):
        is_device_array(t, "weight_ih")
    assert t.reads == 0
    with pytest.raises(TypeError, match=r"x is a CUDA tensor that requires grad: pass x\.detach\(\)"):
        is_device_array(RefusingInterface(), "x")  # found from the property's RuntimeError instead
    assert is_device_array(FakeCudaTensor(np.ones(3), requires_grad=False)) is True
    assert is_device_array(np.ones(3)) is False and is_device_array([1.0, 2.0]) is False


def _inputs():
    x = np.ones((3, 2, 4), np.float32)
    return x, np.zeros((8, 4), np.float32), np.zeros((8, 2), np.float32)


@pytest.mark.parametrize("where", ["x", "weight_ih", "weight_hh", "h0"])
def test_functional_api_says_detach_for_a_cuda_tensor_that_requires_grad(where):
    x, W_ih, W_hh = _inputs()
    args = {"x": x, "weight_ih": W_ih, "weight_hh": W_hh}
    state = None
    if where == "h0":
        state = (FakeCudaTensor(np.zeros((2, 2))), np.zeros((2, 2), np.float32))
    else:
        args[where] = FakeCudaTensor(args[where])
    with pytest.raises(TypeError, match=r"is a CUDA tensor that requires grad: pass .*\.detach\(\)"):
        fastlstm.lstm_forward(args["x"], args["weight_ih"], args["weight_hh"], state=state)


@pytest.mark.parametrize("where", ["x", "h0"])
def test_layer_says_detach_for_a_cuda_tensor_that_requires_grad(where):
    x = np.ones((3, 2, 4), np.float32)
    h0 = np.zeros((1, 2, 2), np.float32)
    layer = fastlstm.LSTM(4, 2)
    with pytest.raises(TypeError, match=r"is a CUDA tensor that requires grad: pass .*\.detach\(\)"):
        if where == "x":
            layer.forward(FakeCudaTensor(x))
        else:
            layer.forward(x, (FakeCudaTensor(h0), h0))


def test_cpu_torch_tensor_that_requires_grad_says_detach():
    torch = pytest.importorskip("torch")
    x, W_ih, W_hh = _inputs()
    param = torch.nn.Parameter(torch.from_numpy(x.copy()))
    assert is_device_array(param) is False  # a CPU tensor: not a device array, no error here
    with pytest.raises(TypeError, match=r"^x is a torch tensor that requires grad: pass x\.detach\(\)"):
        fastlstm.lstm_forward(param, W_ih, W_hh)
    layer = fastlstm.LSTM(4, 2, seed=0)
    with pytest.raises(TypeError, match=r"^x is a torch tensor that requires grad: pass x\.detach\(\)"):
        layer.forward(param)
    with pytest.raises(TypeError, match=r"requires grad: pass .*\.detach\(\)"):
        layer.forward(x, (torch.zeros(1, 2, 2, requires_grad=True), np.zeros((1, 2, 2), np.float32)))
    # detached (or never requiring grad), a CPU tensor is data like any array
    want, _ = layer.forward(x)
    for t in (param.detach(), torch.from_numpy(x.copy())):
        got, _ = layer.forward(t)
        np.testing.assert_array_equal(got, want)
