"""What an install holds and says about itself (issue 6): ``__version__`` matches the installed
metadata, ``py.typed`` ships, ``show_config()`` names the kernel path that runs, importing
without the C extension warns exactly once (and not when a backend is chosen by name), and
the public names of the trainer's modules carry type hints and numpydoc sections.
.ci/dist-check runs these on the built wheel and on a compiler-less sdist install.
"""

import importlib.metadata
import inspect
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import fastlstm
import fastlstm._info
import fastlstm.charlm.data
import fastlstm.charlm.model
import fastlstm.charlm.nn

PKG = Path(fastlstm.__file__).resolve().parent
WARNING_TEXT = "the compiled C backend is not installed"


def test_version_matches_the_installed_metadata():
    assert isinstance(fastlstm.__version__, str) and fastlstm.__version__[0].isdigit()
    try:
        dist = importlib.metadata.distribution("fastlstm")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("fastlstm is imported from a source tree, not installed")
    installed = Path(dist.locate_file("fastlstm/__init__.py")).resolve()
    direct = json.loads(dist.read_text("direct_url.json") or "{}")
    editable_here = (direct.get("dir_info", {}).get("editable")
                     and direct.get("url") == PKG.parent.as_uri())
    if installed != PKG / "__init__.py" and not editable_here:
        pytest.skip(f"the installed fastlstm ({installed}) is not the one imported ({PKG})")
    assert dist.version == fastlstm.__version__


def test_py_typed_ships_with_the_package():
    assert (PKG / "py.typed").is_file()


def test_show_config_names_the_kernel_path_that_runs(capsys, monkeypatch):
    if "c" not in fastlstm.available_backends():
        pytest.skip("the C backend is not built here")
    from fastlstm.backends import _c
    monkeypatch.delenv("FASTLSTM_KERNEL", raising=False)
    fastlstm.show_config()
    out = capsys.readouterr().out
    info = fastlstm.show_config(mode="dicts")
    fastest = next(k for k in ("avx512", "avx2", "portable") if k in info["c_kernels_supported"])
    assert info["c_kernel"] == fastest == _c.kernel_path()
    assert f"c_kernel: {fastest}\n" in out
    monkeypatch.setenv("FASTLSTM_KERNEL", "portable")
    assert fastlstm.show_config(mode="dicts")["c_kernel"] == "portable"
    fastlstm.show_config()
    assert "c_kernel: portable\n" in capsys.readouterr().out


# ----------------------------------------------------------------------------- import warning
_PROBE = """
import json, warnings
with warnings.catch_warnings(record=True) as rec:
    warnings.simplefilter("always")
    import fastlstm
    import fastlstm.backends
    backends = fastlstm.available_backends()
    fastlstm.LSTM(3, 4)
print(json.dumps({"file": fastlstm.__file__, "backends": backends,
                  "warnings": [[w.category.__name__, str(w.message), w.filename] for w in rec]}))
"""


def _probe(path, **env):
    """Import fastlstm from ``path`` in a fresh interpreter; what it saw and warned."""
    clean = {k: v for k, v in os.environ.items()
             if k not in ("FASTLSTM_BACKEND", "FASTLSTM_PUREPYTHON", "PYTHONWARNINGS")}
    clean.update(env)
    clean["PYTHONPATH"] = str(path)
    r = subprocess.run([sys.executable, "-c", _PROBE], check=False, cwd=path, env=clean,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


@pytest.fixture(scope="module")
def without_c(tmp_path_factory):
    """A copy of the imported package without the compiled extension."""
    root = tmp_path_factory.mktemp("pure")
    shutil.copytree(PKG, root / "fastlstm",
                    ignore=shutil.ignore_patterns("_c.*.so", "_c.*.pyd", "_c.so", "_c.pyd", "_c.c", "__pycache__"))
    return root


def test_import_without_the_extension_warns_once(without_c):
    got = _probe(without_c)
    assert Path(got["file"]).resolve().is_relative_to(without_c.resolve())
    assert got["backends"][-1] == "numpy" and "c" not in got["backends"]
    ours = [w for w in got["warnings"] if WARNING_TEXT in w[1]]
    assert len(ours) == 1, got["warnings"]
    category, message, filename = ours[0]
    assert category == "RuntimeWarning"
    assert "FASTLSTM_BACKEND=numpy" in message  # says how to silence it
    assert filename == "<string>"  # points at the importing code, not at fastlstm


@pytest.mark.parametrize("env", [{"FASTLSTM_BACKEND": "numpy"}, {"FASTLSTM_PUREPYTHON": "1"}],
                         ids=lambda e: "-".join(f"{k}={v}" for k, v in e.items()))
def test_no_warning_when_numpy_is_chosen(without_c, env):
    got = _probe(without_c, **env)
    assert not [w for w in got["warnings"] if WARNING_TEXT in w[1]], got["warnings"]


def test_no_warning_with_the_extension():
    if "c" not in fastlstm.available_backends():
        pytest.skip("the C backend is not built here")
    got = _probe(PKG.parent)
    assert Path(got["file"]).resolve() == PKG / "__init__.py"
    assert "c" in got["backends"]
    assert not [w for w in got["warnings"] if WARNING_TEXT in w[1]], got["warnings"]


# ----------------------------------------------------------------------------- hints and docs
def _public_callables():
    yield "fastlstm.show_config", fastlstm.show_config
    yield "fastlstm._info.config", fastlstm._info.config
    for mod in (fastlstm, fastlstm.charlm.nn, fastlstm.charlm.model, fastlstm.charlm.data):
        for name in mod.__all__:
            obj = getattr(mod, name)
            if obj is fastlstm.LSTMCache:  # a record returned by lstm_forward, documented by its attributes
                continue
            if inspect.isfunction(obj):
                yield f"{mod.__name__}.{name}", obj
            elif inspect.isclass(obj) and not issubclass(obj, Exception):
                yield f"{mod.__name__}.{name}", obj
                for attr, f in vars(obj).items():
                    if isinstance(f, classmethod):
                        f = f.__func__
                    if inspect.isfunction(f) and (not attr.startswith("_") or attr == "__init__"):
                        yield f"{mod.__name__}.{name}.{attr}", f


@pytest.mark.parametrize("name,obj", list(_public_callables()), ids=lambda v: v if isinstance(v, str) else "")
def test_public_names_have_hints_and_numpydoc(name, obj):
    if inspect.isclass(obj):
        doc = inspect.getdoc(obj) or ""
        params = [p for p in inspect.signature(obj.__init__).parameters if p != "self"]
        assert doc, f"{name} has no docstring"
        if params:
            assert "Parameters\n----------" in doc, f"{name}: no numpydoc Parameters section"
            for p in params:
                assert p in doc, f"{name}: parameter {p} not documented"
        return
    sig = inspect.signature(obj)
    for p in sig.parameters.values():
        if p.name not in ("self", "cls"):
            assert p.annotation is not inspect.Parameter.empty, f"{name}: {p.name} has no type hint"
    assert sig.return_annotation is not inspect.Signature.empty, f"{name}: no return type hint"
    if obj.__name__ == "__init__":
        return  # documented on the class
    doc = inspect.getdoc(obj) or ""
    assert doc, f"{name} has no docstring"
    params = [p for p in sig.parameters if p not in ("self", "cls")]
    if params:
        assert "Parameters\n----------" in doc, f"{name}: no numpydoc Parameters section"
        for p in params:
            assert p in doc, f"{name}: parameter {p} not documented"
    if sig.return_annotation not in ("None", None):
        assert "Returns\n-------" in doc, f"{name}: no numpydoc Returns section"
