"""Build of fastlstm's compiled extension (everything else is in pyproject.toml).

The C backend is optional: FASTLSTM_PUREPYTHON=1, a missing Cython/compiler
or a failed compile installs the package without it (with a warning) and
fastlstm runs on its NumPy backend (which warns once at import). With
FASTLSTM_REQUIRE_C=1 (wheel builds, CI) a failed build is an error instead.
OpenMP is used when the compiler has it. No -march: the wheel targets the
baseline CPU and the C code picks its AVX2/AVX-512 paths at run time.
"""

import os
import shlex
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor

from setuptools import setup
from setuptools.command.build_ext import build_ext

PURE = os.environ.get("FASTLSTM_PUREPYTHON", "") not in ("", "0")
#: A build that must produce the extension (wheels): failures raise instead of warning.
REQUIRE = os.environ.get("FASTLSTM_REQUIRE_C", "") not in ("", "0")


def _give_up(message):
    """Without the extension: an error under FASTLSTM_REQUIRE_C=1, else a warning."""
    if REQUIRE:
        raise SystemExit(f"{message} (FASTLSTM_REQUIRE_C=1: the C backend is required)")
    # print, not warnings.warn: pip's build subprocess hides Python warnings (pip -v shows this)
    print(f"WARNING: {message}; installing the pure-NumPy backend only", file=sys.stderr)


def _openmp_flags(compiler):
    """(compile, link) flags for OpenMP if this compiler has it, else None.

    Tries GCC's and LLVM's ``-fopenmp``, then Apple clang's ``-Xpreprocessor -fopenmp``
    with ``-lomp`` (libomp, e.g. conda-forge's llvm-openmp, found through CFLAGS/LDFLAGS),
    and MSVC's ``/openmp``. Each is compiled and linked into a small program that calls
    the OpenMP runtime, so a flag the compiler accepts but cannot link is rejected.
    """
    if os.environ.get("FASTLSTM_NO_OPENMP", "") not in ("", "0"):
        return None
    if compiler.compiler_type == "msvc":
        variants = [(["/openmp"], [])]
    else:
        variants = [(["-fopenmp"], ["-fopenmp"]),
                    (["-Xpreprocessor", "-fopenmp"], ["-lomp"])]
    # link_executable does not see LDFLAGS (only the shared-object link does); pass them here
    ldflags = shlex.split(os.environ.get("LDFLAGS", "")) if compiler.compiler_type != "msvc" else []
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "probe.c")
        with open(src, "w") as fh:
            fh.write("#include <omp.h>\nint main(void){return omp_get_max_threads() > 0 ? 0 : 1;}\n")
        for cflags, lflags in variants:
            try:
                objs = compiler.compile([src], output_dir=tmp, extra_postargs=cflags)
                compiler.link_executable(objs, os.path.join(tmp, "probe"),
                                         extra_postargs=lflags + ldflags)
            except Exception:
                continue
            return cflags, lflags
    return None


def _compile_in_parallel(compiler):
    """Make compiler.compile run one compiler process per source file at once, on as
    many cores as there are (setuptools' own --parallel only splits extensions, and
    there is one). MAX_JOBS caps it."""
    jobs = int(os.environ.get("MAX_JOBS") or os.cpu_count() or 1)
    serial = compiler.compile

    def compile(sources, *args, **kwargs):
        if jobs < 2 or len(sources) < 2:
            return serial(sources, *args, **kwargs)
        with ThreadPoolExecutor(min(jobs, len(sources))) as pool:
            parts = list(pool.map(lambda src: serial([src], *args, **kwargs), sources))
        return [obj for objs in parts for obj in objs]

    compiler.compile = compile


class OptionalBuildExt(build_ext):
    """build_ext that adds OpenMP when available, compiles the sources in parallel and
    never fails the install (unless FASTLSTM_REQUIRE_C=1)."""

    def build_extensions(self):
        omp = _openmp_flags(self.compiler)
        _compile_in_parallel(self.compiler)
        for ext in self.extensions:
            if omp:
                ext.extra_compile_args += omp[0]
                ext.extra_link_args += omp[1]
                ext.define_macros.append(("FASTLSTM_OPENMP", "1"))
        super().build_extensions()

    def run(self):
        try:
            super().run()
        except Exception as exc:  # a broken toolchain must not break the install
            _give_up(f"fastlstm: compiled extension not built ({exc})")

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as exc:
            _give_up(f"fastlstm: building {ext.name} failed ({exc})")


def _extensions():
    if PURE:
        _give_up("fastlstm: FASTLSTM_PUREPYTHON is set")
        return []
    try:
        import numpy
        from Cython.Build import cythonize
        from setuptools import Extension
    except ImportError as exc:
        _give_up(f"fastlstm: {exc}")
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
        # and the weight gradients' blocks of rows made tiny, so that every test runs many
        chunks = ["-DLSTM_GRADS_CHUNK_FLOATS=1", "-DLSTM_GRADS_CHUNK_MIN_ROWS=5"]
        cflags = [f for f in cflags if not f.startswith("-O")] + ["-O1", "-g"] + san + chunks
        link = san
    ext = Extension(
        "fastlstm.backends._c",
        sources=["fastlstm/backends/_c.pyx", "csrc/lstm_cell.c", "csrc/lstm_blas_loop.c",
                 "csrc/lstm_fused.c", "csrc/lstm_bf16.c", "csrc/lstm_generate.c", "csrc/lstm_amx.c"],
        depends=["csrc/lstm_cell.h", "csrc/lstm_common.h", "csrc/lstm_blas_loop.h",
                 "csrc/lstm_blas_loop_impl.h", "csrc/lstm_fused.h", "csrc/lstm_fused_impl.h",
                 "csrc/lstm_generate.h", "csrc/lstm_bf16.h", "csrc/lstm_bf16_impl.h", "csrc/lstm_vec_impl.h", "csrc/lstm_amx.h"],
        include_dirs=["csrc", numpy.get_include()],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_2_0_API_VERSION")],
        extra_compile_args=cflags,
        extra_link_args=link,
    )
    try:
        exts = cythonize([ext], language_level=3, quiet=True)
    except Exception as exc:
        _give_up(f"fastlstm: cythonize failed ({exc})")
        return []
    for e in exts:  # cythonize() drops optional=True; set it again
        e.optional = True
    return exts


setup(ext_modules=_extensions(), cmdclass={"build_ext": OptionalBuildExt})
