"""Build cign_fast: the Python package, the C++ CPU extension ``_C`` and, when possible, ``_cuda``.

``CIGN_FAST_CUDA=1`` requires the CUDA extension (the build fails without a toolkit), ``0`` skips
it, unset builds it when a CUDA toolkit and a CUDA build of torch are present. Architectures come
from ``TORCH_CUDA_ARCH_LIST`` (default ``8.0;9.0``: A100 and H100/H200).
"""

import os
from pathlib import Path

import torch
from setuptools import find_packages, setup
from torch.utils import cpp_extension

ROOT = Path(__file__).resolve().parent
INCLUDE = [str(ROOT / "csrc" / "include")]
CXX_FLAGS = ["-O3", "-fopenmp", "-std=c++17"]


def sources(folder: str, *patterns: str) -> list[str]:
    return sorted(str(p.relative_to(ROOT)) for pattern in patterns for p in (ROOT / folder).glob(pattern))


def want_cuda() -> bool:
    switch = os.environ.get("CIGN_FAST_CUDA", "auto")
    have = cpp_extension.CUDA_HOME is not None and torch.version.cuda is not None
    if switch == "1" and not have:
        raise RuntimeError("CIGN_FAST_CUDA=1 but no CUDA toolkit (set CUDA_HOME) or torch is not a CUDA build")
    return switch != "0" and have


def cuda_wheel_includes() -> list[str]:
    """Headers of the CUDA libraries torch's wheel ships (cuSPARSE, cuBLAS, ...): a bare nvcc install may lack them."""
    try:
        import nvidia  # the namespace package of torch's CUDA wheels
    except ImportError:
        return []
    major = (torch.version.cuda or "").split(".")[0]
    return [str(p) for base in nvidia.__path__ for p in Path(base).glob(f"cu{major}/include") if p.is_dir()]


def extensions() -> list:
    modules = [
        cpp_extension.CppExtension(
            "cign_fast._C", sources("csrc/cpu", "*.cpp"), include_dirs=INCLUDE,
            extra_compile_args={"cxx": CXX_FLAGS}, extra_link_args=["-fopenmp"],
        )
    ]
    if want_cuda():
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
        modules.append(
            cpp_extension.CUDAExtension(
                "cign_fast._cuda", sources("csrc/cuda", "*.cpp", "*.cu"), include_dirs=INCLUDE + cuda_wheel_includes(),
                extra_compile_args={"cxx": ["-O3", "-std=c++17"], "nvcc": ["-O3", "--use_fast_math", "-std=c++17", "-lineinfo"]},
            )
        )
    return modules


setup(
    name="cign_fast",
    version="0.1.0",
    description="CIGN (ICCV 2023) continual audio-visual learning with fused Triton, C++ and CUDA kernels",
    python_requires=">=3.10",
    packages=find_packages(include=["cign_fast", "cign_fast.*"]) + ["cign_fast.kernels", "cign_fast.bench"],
    package_dir={"cign_fast": "cign_fast", "cign_fast.kernels": "kernels", "cign_fast.bench": "bench"},
    ext_modules=extensions(),
    cmdclass={"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)},
    entry_points={"console_scripts": ["cign-fast = cign_fast.cli:main"]},
    zip_safe=False,
)
