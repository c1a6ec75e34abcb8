"""Builds goloop: the Go core as libgoloop.so (go build -buildmode=c-shared)
and the C extension goloop._core, which loads that library on first use."""
import os
import shutil
import subprocess

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HERE = os.path.dirname(os.path.abspath(__file__))
CORE = os.path.join("python", "goloop", "_core")


class BuildWithGo(build_ext):
    def run(self):
        super().run()
        self.build_go()

    def build_go(self):
        go = shutil.which("go") or "/usr/local/go/bin/go"
        if self.inplace:
            out_dir = os.path.join(HERE, "python", "goloop")
        else:
            out_dir = os.path.join(os.path.abspath(self.build_lib), "goloop")
        os.makedirs(out_dir, exist_ok=True)
        out = os.path.join(out_dir, "libgoloop.so")
        env = dict(os.environ, CGO_ENABLED="1")
        subprocess.check_call(
            [go, "build", "-buildmode=c-shared", "-trimpath", "-o", out, "./pybind"],
            cwd=HERE, env=env)
        header = os.path.splitext(out)[0] + ".h"
        if os.path.exists(header):
            os.remove(header)  # the ABI header is pybind/goloop.h, not cgo's


setup(
    ext_modules=[
        Extension(
            "goloop._core",
            sources=[os.path.join(CORE, f) for f in
                     ("module.c", "go.c", "owners.c", "loop.c", "handle.c", "transport.c",
                      "watch.c", "calls.c", "connect.c", "dgram.c", "flow.c", "sockops.c",
                      "tls.c", "ktls.c", "recvlend.c", "sockobj.c")],
            include_dirs=["pybind", CORE],
            depends=[os.path.join(CORE, "core.h"), "pybind/goloop.h"],
            extra_compile_args=["-O2", "-Wall", "-Wno-unused-function",
                                "-Wno-missing-field-initializers"],
            libraries=["dl"],
        )
    ],
    cmdclass={"build_ext": BuildWithGo},
)
