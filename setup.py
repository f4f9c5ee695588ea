"""Build of fastlstm's compiled extension (everything else is in pyproject.toml).

The C backend is optional: FASTLSTM_PUREPYTHON=1, a missing Cython/compiler
or a failed compile installs the package without it (with a warning) and
fastlstm runs on its NumPy backend. OpenMP is used when the compiler has it.
"""

import os
import sys
import tempfile
import warnings

from setuptools import setup
from setuptools.command.build_ext import build_ext

PURE = os.environ.get("FASTLSTM_PUREPYTHON", "") not in ("", "0")


def _openmp_flags(compiler):
    """Compile and link flags for OpenMP if this compiler supports it, else []."""
    if os.environ.get("FASTLSTM_NO_OPENMP", "") not in ("", "0"):
        return []
    flag = "/openmp" if compiler.compiler_type == "msvc" else "-fopenmp"
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "probe.c")
        with open(src, "w") as fh:
            fh.write("#include <omp.h>\nint main(void){return omp_get_max_threads() > 0 ? 0 : 1;}\n")
        try:
            objs = compiler.compile([src], output_dir=tmp, extra_postargs=[flag])
            compiler.link_executable(objs, os.path.join(tmp, "probe"), extra_postargs=[flag])
        except Exception:
            return []
    return [flag]


class OptionalBuildExt(build_ext):
    """build_ext that adds OpenMP when available and never fails the install."""

    def build_extensions(self):
        omp = _openmp_flags(self.compiler)
        for ext in self.extensions:
            if omp:
                ext.extra_compile_args += omp + ["-DFASTLSTM_OPENMP=1"]
                ext.extra_link_args += omp
        super().build_extensions()

    def run(self):
        try:
            super().run()
        except Exception as exc:  # a broken toolchain must not break the install
            warnings.warn(f"fastlstm: compiled extension not built ({exc}); "
                          "installing the pure-NumPy backend only")

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as exc:
            warnings.warn(f"fastlstm: building {ext.name} failed ({exc}); "
                          "installing the pure-NumPy backend only")


def _extensions():
    if PURE:
        warnings.warn("fastlstm: FASTLSTM_PUREPYTHON is set; installing without the C backend")
        return []
    try:
        import numpy
        from Cython.Build import cythonize
        from setuptools import Extension
    except ImportError as exc:
        warnings.warn(f"fastlstm: {exc}; installing without the C backend")
        return []
    if sys.platform == "win32":
        cflags = ["/O2"]
    else:
        # gnu11 (not c11): ISO mode would forbid contracting a*b+c into FMAs.
        cflags = ["-O3", "-fno-math-errno", "-std=gnu11"]
    link = []
    if os.environ.get("FASTLSTM_SANITIZE", "") not in ("", "0"):
        # AddressSanitizer + UndefinedBehaviorSanitizer build (README, development section)
        san = ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-fno-sanitize-recover=undefined"]
        cflags = [f for f in cflags if not f.startswith("-O")] + ["-O1", "-g"] + san
        link = san
    ext = Extension(
        "fastlstm.backends._c",
        sources=["fastlstm/backends/_c.pyx", "csrc/lstm_cell.c", "csrc/lstm_fused.c"],
        depends=["csrc/lstm_cell.h", "csrc/lstm_fused.h", "csrc/lstm_fused_impl.h"],
        include_dirs=["csrc", numpy.get_include()],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_2_0_API_VERSION")],
        extra_compile_args=cflags,
        extra_link_args=link,
    )
    try:
        exts = cythonize([ext], language_level=3, quiet=True)
    except Exception as exc:
        warnings.warn(f"fastlstm: cythonize failed ({exc}); installing without the C backend")
        return []
    for e in exts:  # cythonize() drops optional=True; set it again
        e.optional = True
    return exts


setup(ext_modules=_extensions(), cmdclass={"build_ext": OptionalBuildExt})
