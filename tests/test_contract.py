"""The mode ids and Gumbel noise constants agree in every language they are written in.

Python (``cign_fast/contract.py``) is the definition; the Triton kernels bind it as constexprs; the
C++ and CUDA sources share ``csrc/include/contract.h``, which this test parses. No other source may
spell the constants (or define mode ids) on its own, so there is nothing else to drift.
"""

from __future__ import annotations

import re
import struct
from pathlib import Path

import pytest

from cign_fast import contract

REPO = Path(__file__).resolve().parents[1]
CONTRACT_HEADER = REPO / "csrc" / "include" / "contract.h"
MODE_NAMES = {"kModeSoft": "MODE_SOFT", "kModeHard": "MODE_HARD", "kModeGumbel": "MODE_GUMBEL"}
MIX_NAMES = {"kMixMul1": "MIX_MUL_1", "kMixMul2": "MIX_MUL_2"}
UNIFORM_NAMES = {"kUniformStep": "UNIFORM_STEP", "kUniformOffset": "UNIFORM_OFFSET"}


def header_constants() -> dict[str, str]:
    """``name -> literal`` of every ``constexpr`` in contract.h."""
    text = CONTRACT_HEADER.read_text()
    return dict(re.findall(r"constexpr\s+\w+\s+(k\w+)\s*=\s*([^;]+);", text))


def c_integer(literal: str) -> int:
    return int(literal.rstrip("uU"), 0)


def c_float(literal: str) -> float:
    """A C float literal as the float32 value the compiler makes of it."""
    return struct.unpack("f", struct.pack("f", float(literal.rstrip("fF"))))[0]


def test_python_modes_follow_their_names():
    assert [contract.MODES.index(name) for name in ("soft", "hard", "gumbel")] == [
        contract.MODE_SOFT,
        contract.MODE_HARD,
        contract.MODE_GUMBEL,
    ]


def test_cpp_and_cuda_header_agrees_with_python():
    constants = header_constants()
    assert set(constants) == {*MODE_NAMES, *MIX_NAMES, *UNIFORM_NAMES}
    for name, python in MODE_NAMES.items():
        assert int(constants[name]) == getattr(contract, python), name
    for name, python in MIX_NAMES.items():
        assert c_integer(constants[name]) == getattr(contract, python), name
    for name, python in UNIFORM_NAMES.items():
        assert c_float(constants[name]) == getattr(contract, python), name


@pytest.mark.parametrize(
    "source",
    sorted(
        str(p.relative_to(REPO))
        for p in (REPO / "csrc").rglob("*")
        if p.suffix in (".h", ".cpp", ".cu") and p != CONTRACT_HEADER
    ),
)
def test_no_cpp_or_cuda_source_spells_the_constants_itself(source):
    text = (REPO / source).read_text()
    assert not re.search(r"constexpr\s+int\s+kMode", text), f"{source} defines its own mode ids"
    for value in (contract.MIX_MUL_1, contract.MIX_MUL_2):
        assert f"{value:X}" not in text.upper(), f"{source} spells the noise multiplier {value:#x}"
    assert "1.1920928955078125e-07" not in text and "5.9604644775390625e-08" not in text, source


def test_cpp_and_cuda_kernels_include_the_contract():
    includes = {path.name: path.read_text() for path in (REPO / "csrc").rglob("*") if path.is_file()}
    assert '#include "contract.h"' in includes["kernels.h"]  # CPU kernels
    assert '#include "contract.h"' in includes["gumbel_noise.h"]  # CPU and CUDA noise
    assert '#include "contract.h"' in includes["tensor_checks.h"]  # CPU and CUDA argument checks
    assert '#include "gumbel_noise.h"' in includes["assign_attention.cu"]


def test_triton_kernels_bind_the_python_constants():
    kernels_dir = REPO / "kernels"
    import cign_fast.kernels.assign_attention as triton_assign

    bound = {
        "SOFT": "MODE_SOFT",
        "HARD": "MODE_HARD",
        "GUMBEL": "MODE_GUMBEL",
        "MIX_1": "MIX_MUL_1",
        "MIX_2": "MIX_MUL_2",
        "STEP": "UNIFORM_STEP",
        "OFFSET": "UNIFORM_OFFSET",
    }
    for name, python in bound.items():
        assert getattr(triton_assign, name).value == getattr(contract, python), name
    source = (kernels_dir / "assign_attention.py").read_text()
    assert re.search(r"x \* MIX_1\b", source) and re.search(r"x \* MIX_2\b", source)
    assert re.search(r"\* STEP \+ OFFSET", source)
    for path in kernels_dir.glob("*.py"):
        text = path.read_text().upper()
        assert f"{contract.MIX_MUL_1:X}" not in text and f"{contract.MIX_MUL_2:X}" not in text, path.name


def test_kernels_import_only_the_contract_of_the_package():
    """No hidden cycle: cign_fast.ops loads the kernels by name, the kernels import cign_fast.contract only."""
    for path in (REPO / "kernels").glob("*.py"):
        imports = re.findall(r"^\s*(?:from|import)\s+(cign_fast[\w.]*)", path.read_text(), flags=re.MULTILINE)
        assert set(imports) <= {"cign_fast.contract"}, (path.name, imports)


def test_triton_interpret_is_read_in_one_place():
    readers = {
        path.resolve().relative_to(REPO).as_posix()
        for root in ("cign_fast", "kernels")
        for path in (REPO / root).rglob("*.py")
        if '"TRITON_INTERPRET"' in path.read_text()
    }
    assert readers == {"cign_fast/contract.py"}
