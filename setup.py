"""The one compiled part of jrnn: the plain LSTM's and GRU's recurrent loops for a CPU
(``jrnn/kernels/native/lstm.cc``, XLA FFI handlers loaded by ``jrnn.kernels.native``).

Everything else is declared in ``pyproject.toml``. The library is built for x86-64 with AVX2 and
FMA (tuned for the building CPU) against the XLA FFI headers that jaxlib ships. It is optional:
without a C++17 compiler, on another architecture, or without jaxlib at build time, the install
goes on without it and ``backward="bptt"`` runs its pure-JAX loops
(``jrnn.kernels.native.available()`` says which).
"""

from __future__ import annotations

import os

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


def _jaxlib_include() -> str | None:
    try:
        import jaxlib
    except ImportError:
        return None
    include = os.path.join(os.path.dirname(jaxlib.__file__), "include")
    return include if os.path.isfile(os.path.join(include, "xla", "ffi", "api", "ffi.h")) else None


LIBRARY = "liblstm_cpu.so.1"
"""The built file's name: a shared library that is not a Python module (no ``PyInit``), so it is
named like one a module finder does not take for an importable module."""


class BuildNative(build_ext):
    """Adds jaxlib's FFI headers; leaves the library out (with a warning) where it cannot build."""

    def get_ext_filename(self, fullname):
        return os.path.join(*fullname.split(".")[:-1], LIBRARY)

    def build_extensions(self):
        include = _jaxlib_include()
        if include is None:
            print("warning: jrnn's native LSTM and GRU loops are not built: jaxlib's XLA FFI headers were not found")
            self.extensions = []
            return
        for ext in self.extensions:
            ext.include_dirs.append(include)
        super().build_extensions()


# AVX2 and FMA only (x86-64-v3's vector units), tuned for the building machine: a wheel built here
# runs on any x86-64 CPU with AVX2 and FMA, which the library checks before its first call.
FLAGS = ["-std=c++17", "-O3", "-mavx2", "-mfma", "-mtune=native", "-pthread", "-Wno-return-type"]

setup(
    ext_modules=[
        Extension(
            "jrnn.kernels.native._lstm_cpu",
            sources=["jrnn/kernels/native/lstm.cc"],
            language="c++",
            extra_compile_args=FLAGS,
            extra_link_args=["-pthread"],
            optional=True,  # a failed compile warns and installs the rest
        )
    ],
    cmdclass={"build_ext": BuildNative},
)
