"""PEP 517/660 build backend: setuptools', compiling against the torch of the environment installed into.

An extension must be compiled against the torch it will be imported with (same version, C++ ABI and
CUDA). pip's build isolation gives a build its own environment, so a build requirement ``torch``
would download a second torch from the index (several GB, not necessarily the installed version or
CUDA variant). Instead, each hook finds torch in this order:

1. torch is importable in the build's environment (``--no-build-isolation``, or installed there by 2.'s
   fallback): it is used.
2. The interpreter running the build, i.e. the environment pip installs into, has torch: that
   environment's ``sys.path`` is appended to the build's (after the build's own setuptools), and its
   torch is used. Nothing is downloaded.
3. Neither (a fresh environment): ``torch`` becomes a build requirement pinned to the version in
   ``requirements.txt``, the tested stack.

setup.py then pins the package's runtime dependency to the torch it compiled against.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

from setuptools import build_meta
from setuptools.build_meta import *  # noqa: F403  (every hook not redefined below, PEP 660's included)

REQUIREMENTS = Path(__file__).resolve().parent.parent / "requirements.txt"
# The interpreter's own environment, without pip's isolation: where its torch is, and its sys.path.
PROBE = (
    "import importlib.util, json, sys; "
    "print(json.dumps({'torch': importlib.util.find_spec('torch') is not None, 'path': sys.path}))"
)
ISOLATION_VARIABLES = ("PYTHONPATH", "PYTHONNOUSERSITE")  # what pip sets to hide the environment


def pinned_torch() -> str:
    """The ``torch==X`` line of requirements.txt."""
    for line in REQUIREMENTS.read_text().splitlines():
        if re.match(r"torch\s*==", line):
            return line.split("#", 1)[0].strip()
    raise RuntimeError(f"{REQUIREMENTS} has no 'torch==VERSION' line to build against")


def use_target_torch() -> bool:
    """Make torch importable here (steps 1 and 2 of the module docstring); ``False`` if there is none."""
    if importlib.util.find_spec("torch") is not None:
        return True
    env = {name: value for name, value in os.environ.items() if name not in ISOLATION_VARIABLES}
    probe = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        return False
    target = json.loads(probe.stdout)
    if not target["torch"]:
        return False
    sys.path.extend(entry for entry in target["path"] if entry and entry not in sys.path)
    importlib.invalidate_caches()
    return importlib.util.find_spec("torch") is not None


def build_requirements(setuptools_hook, config_settings) -> list[str]:
    """setuptools' answer once torch is found (the hook runs setup.py, which imports torch), else the pinned torch."""
    return setuptools_hook(config_settings) if TORCH_FOUND else [pinned_torch()]


def get_requires_for_build_wheel(config_settings=None) -> list[str]:
    return build_requirements(build_meta.get_requires_for_build_wheel, config_settings)


def get_requires_for_build_editable(config_settings=None) -> list[str]:
    return build_requirements(build_meta.get_requires_for_build_editable, config_settings)


def get_requires_for_build_sdist(config_settings=None) -> list[str]:
    return build_requirements(build_meta.get_requires_for_build_sdist, config_settings)


TORCH_FOUND = use_target_torch()
