"""Build cign_fast: the Python package, the C++ CPU extension ``_C`` and, when possible, ``_cuda``.

``CIGN_FAST_CUDA=1`` requires the CUDA extension (the build fails without a toolkit or when it does
not compile), ``0`` skips it, unset builds it when a CUDA toolkit and a CUDA build of torch are
present and, if it then fails to build, goes on with the CPU extension alone. Every skip prints one
line saying why. Architectures come from ``TORCH_CUDA_ARCH_LIST`` (default ``8.0;9.0+PTX``: A100,
H100/H200, and PTX that newer GPUs compile at load time). ``CIGN_FAST_BUILD_TEMP=DIR`` keeps the
object files in DIR across builds (pip's editable builds otherwise compile in a new temporary folder).

The build writes ``cign_fast/build_info.json`` next to the extensions (the torch it compiled
against, the CUDA architectures or why CUDA was skipped): ``cign-fast info`` prints it.
Project metadata lives in ``pyproject.toml``; the runtime dependencies are set here because the
extension pins the torch it was compiled against.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
from setuptools import find_packages, setup
from setuptools.errors import CompileError, LinkError
from torch.utils import cpp_extension

ROOT = Path(__file__).resolve().parent
INCLUDE = [str(ROOT / "csrc" / "include")]
CXX_FLAGS = ["-O3", "-fopenmp", "-std=c++17"]
# No --use_fast_math: every backend must make the same hard (argmax) choices for a seed, and fast-math
# approximations of exp/log can move a near-tie.
NVCC_FLAGS = ["-O3", "-std=c++17", "-lineinfo"]
DEFAULT_CUDA_ARCHS = "8.0;9.0+PTX"
CUDA_EXTENSION = "cign_fast._cuda"
BUILD_INFO = "build_info.json"
TORCH_VERSION = torch.__version__.split("+")[0]  # the extensions only import under this torch
RUNTIME_REQUIREMENTS = [
    f"torch=={TORCH_VERSION}",
    "torchvision",
    "torchaudio",
    "numpy<2.4",
    "pyyaml",
    "tqdm",
    "matplotlib",
    "pillow",
    "soundfile",
    "scikit-learn",
    "h5py",
    "tensorboard",
]


def sources(folder: str, *patterns: str) -> list[str]:
    return sorted(str(p.relative_to(ROOT)) for pattern in patterns for p in (ROOT / folder).glob(pattern))


def cuda_skip_reason() -> str | None:
    """Why the CUDA extension will not be built, or ``None`` if it will be tried."""
    switch = os.environ.get("CIGN_FAST_CUDA", "auto")
    if switch not in ("0", "1", "auto"):
        raise RuntimeError(f"CIGN_FAST_CUDA: expected 0, 1 or unset, got {switch!r}")
    if switch == "0":
        return "CIGN_FAST_CUDA=0"
    if torch.version.cuda is None:
        reason = f"torch {torch.__version__} is a CPU-only build"
    elif cpp_extension.CUDA_HOME is None:
        reason = "no CUDA toolkit found (set CUDA_HOME or put nvcc on PATH)"
    else:
        return None
    if switch == "1":
        raise RuntimeError(f"CIGN_FAST_CUDA=1 but {reason}")
    return reason


def cuda_wheel_dirs(kind: str) -> list[Path]:
    """``include`` or ``lib`` folders of the CUDA libraries torch's wheel ships (cuBLAS, the runtime, ...)."""
    try:
        import nvidia  # the namespace package of torch's CUDA wheels
    except ImportError:
        return []
    major = (torch.version.cuda or "").split(".")[0]
    return [p for base in nvidia.__path__ for p in Path(base).glob(f"cu{major}/{kind}") if p.is_dir()]


def link_wheel_cudart(extension: cpp_extension.CUDAExtension) -> None:
    """Link the CUDA runtime of torch's wheel when the toolkit has none (e.g. a bare nvcc, CUDA_HOME unset).

    The wheel ships only ``libcudart.so.<major>``, which ``-lcudart`` does not find: link it by file name."""
    toolkit = Path(cpp_extension.CUDA_HOME or "")
    if any((toolkit / lib / "libcudart.so").exists() for lib in ("lib64", "lib")):
        return
    major = (torch.version.cuda or "").split(".")[0]
    for folder in cuda_wheel_dirs("lib"):
        if (folder / f"libcudart.so.{major}").exists():
            extension.library_dirs.append(str(folder))
            extension.libraries = [f":libcudart.so.{major}" if lib == "cudart" else lib for lib in extension.libraries]
            return


def extensions() -> list:
    modules = [
        cpp_extension.CppExtension(
            "cign_fast._C",
            sources("csrc/cpu", "*.cpp"),
            include_dirs=INCLUDE,
            extra_compile_args={"cxx": CXX_FLAGS},
            extra_link_args=["-fopenmp"],
        )
    ]
    if CUDA_SKIPPED is None:
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_CUDA_ARCHS)
        cuda = cpp_extension.CUDAExtension(
            CUDA_EXTENSION,
            sources("csrc/cuda", "*.cpp", "*.cu"),
            include_dirs=INCLUDE + [str(p) for p in cuda_wheel_dirs("include")],
            extra_compile_args={"cxx": ["-O3", "-std=c++17"], "nvcc": NVCC_FLAGS},
            optional=os.environ.get("CIGN_FAST_CUDA") != "1",  # setuptools then copies it only if it was built
        )
        link_wheel_cudart(cuda)
        modules.append(cuda)
    return modules


class BuildExtensions(cpp_extension.BuildExtension):
    """torch's builder (ninja), plus: a CUDA extension whose failure is not fatal, and the build-info record."""

    def finalize_options(self) -> None:
        super().finalize_options()
        self.cuda_skipped = CUDA_SKIPPED
        if os.environ.get("CIGN_FAST_BUILD_TEMP"):  # keep the objects: ninja then recompiles only what changed
            self.build_temp = os.environ["CIGN_FAST_BUILD_TEMP"]

    def build_extension(self, ext) -> None:
        try:
            super().build_extension(ext)
        except (CompileError, LinkError, RuntimeError, OSError) as err:
            if not ext.optional:
                raise
            last_line = (str(err).strip().splitlines() or [""])[-1]
            self.cuda_skipped = f"it did not build ({type(err).__name__}: {last_line})"

    def run(self) -> None:
        super().run()
        if self.cuda_skipped is not None:
            print(
                f"cign_fast: CUDA extension skipped: {self.cuda_skipped}; built the CPU extension only", file=sys.stderr
            )
            # a CUDA extension left by an earlier build would contradict this record (and go into a wheel)
            for folder in (Path(self.build_lib), *([ROOT] if self.inplace else [])):
                (folder / self.get_ext_filename(CUDA_EXTENSION)).unlink(missing_ok=True)
        record = {
            "torch": torch.__version__,
            "torch_cuda": torch.version.cuda,
            "cuda_extension": self.cuda_skipped is None,
            "cuda_archs": os.environ.get("TORCH_CUDA_ARCH_LIST") if self.cuda_skipped is None else None,
            "cuda_skipped": self.cuda_skipped,
        }
        record_path = Path(self.get_ext_fullpath("cign_fast._C")).with_name(BUILD_INFO)
        record_path.parent.mkdir(parents=True, exist_ok=True)
        record_path.write_text(json.dumps(record, indent=2) + "\n")


CUDA_SKIPPED = cuda_skip_reason()
setup(
    packages=find_packages(include=["cign_fast", "cign_fast.*"]),  # kernels/ and bench/ via symlinks in cign_fast/
    install_requires=RUNTIME_REQUIREMENTS,
    ext_modules=extensions(),
    cmdclass={"build_ext": BuildExtensions.with_options(use_ninja=True)},
    zip_safe=False,
)
