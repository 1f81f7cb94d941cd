"""Builds ferret_kernels._C.

The C++ CPU kernels are always built (OpenMP; one object per instruction set, chosen at run
time). The CUDA kernels are added when torch is a CUDA build and CUDA_HOME is set; this
never probes for a GPU. Environment flags:

  FERRET_BUILD_CUDA=0   never build the CUDA kernels
  FERRET_BUILD_CUDA=1   require them (fails if torch or nvcc cannot build them)
  FERRET_CUDA_ARCH      TORCH_CUDA_ARCH_LIST to use when not set (default "8.0;9.0")
"""

import glob
import os

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _want_cuda():
    flag = os.environ.get("FERRET_BUILD_CUDA", "auto").lower()
    if flag in ("0", "no", "off", "false"):
        return False
    import torch
    from torch.utils.cpp_extension import CUDA_HOME

    possible = torch.version.cuda is not None and CUDA_HOME is not None
    if flag in ("1", "yes", "on", "true") and not possible:
        raise RuntimeError(
            "FERRET_BUILD_CUDA=1 but the CUDA kernels cannot be built: "
            f"torch.version.cuda={torch.version.cuda}, CUDA_HOME={CUDA_HOME}"
        )
    return possible


def _nvidia_wheel_includes():
    """Headers of the CUDA libraries that pip-installed CUDA torch builds bring (nvidia-* wheels),
    for toolkits that lack some of them (cusparse.h, ...)."""
    try:
        import nvidia
    except ImportError:
        return []
    dirs = []
    for base in getattr(nvidia, "__path__", []):
        dirs += sorted(glob.glob(os.path.join(base, "*", "include")))
    return dirs


def _extensions():
    from torch.utils.cpp_extension import CppExtension, CUDAExtension

    rel = lambda pattern: sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))
    sources = rel("csrc/module.cpp") + rel("csrc/ops_schema.cpp") + rel("csrc/cpu/*.cpp")
    # the C++ standard is left to torch's BuildExtension (C++17 for older torch, C++20 for 2.14+)
    cxx = ["-O3", "-fopenmp", "-fno-math-errno", "-Wall", "-Wno-unknown-pragmas"]
    # the headers every object includes: a change to one rebuilds (without `depends`, setuptools
    # compares sources only, and an edited binding_common.h left a stale _C.so in place)
    depends = rel("csrc/*.h") + rel("csrc/*/*.h") + rel("csrc/*/*.cuh")
    kwargs = dict(include_dirs=[os.path.join(ROOT, "csrc")], extra_link_args=["-fopenmp"], depends=depends)
    if _want_cuda():
        kwargs["include_dirs"] += _nvidia_wheel_includes()
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", os.environ.get("FERRET_CUDA_ARCH", "8.0;9.0"))
        nvcc = ["-O3", "--expt-relaxed-constexpr", "-lineinfo"]
        return [
            CUDAExtension(
                "ferret_kernels._C",
                sources + rel("csrc/cuda/ops.cpp") + rel("csrc/cuda/launch.cu"),
                extra_compile_args={"cxx": cxx + ["-DFERRET_WITH_CUDA"], "nvcc": nvcc + ["-DFERRET_WITH_CUDA"]},
                **kwargs,
            )
        ]
    return [CppExtension("ferret_kernels._C", sources, extra_compile_args={"cxx": cxx}, **kwargs)]


def _cmdclass():
    from torch.utils.cpp_extension import BuildExtension

    return {"build_ext": BuildExtension.with_options(use_ninja=os.environ.get("FERRET_USE_NINJA", "0") == "1")}


setup(ext_modules=_extensions(), cmdclass=_cmdclass())
