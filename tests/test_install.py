"""Install-facing behaviour: a light `--help`, the build backend's choice of torch, the build record, results paths.

The install paths themselves (editable, no-isolation, legacy develop, wheel) run in `make install-check`.
"""

from __future__ import annotations

import ast
import importlib
import json
import os
import re
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest
import torch

from cign_fast.build_info import cuda_build_line, read_build_info
from cign_fast.cli import SUBCOMMANDS, build_parser, main

ROOT = Path(__file__).resolve().parent.parent
BACKEND_DIR = ROOT / "build_support"
HELP_COMMANDS = [[], *([name] for name in SUBCOMMANDS), ["bench", "ops"]]
# what --help must not load: torch and everything built on it, the benchmarks, Triton, plotting
HEAVY = (
    "torch",
    "triton",
    "matplotlib",
    "torchvision",
    "torchaudio",
    "sklearn",
    "h5py",
    "cign_fast.bench.common",
    "cign_fast.bench.bench_assign_attention",
    "cign_fast.bench.bench_step",
    "cign_fast.kernels",
    "cign_fast.ops",
    "cign_fast.model",
    "cign_fast.train.loop",
)
HELP_PROBE = """
import json, sys
from cign_fast.cli import main
for argv in json.loads(sys.argv[1]):
    try:
        main(argv + ["--help"])
    except SystemExit:
        pass
print(json.dumps(sorted(sys.modules)), file=sys.stderr)
"""


def test_help_of_every_subcommand_imports_nothing_heavy():
    probe = subprocess.run(
        [sys.executable, "-c", HELP_PROBE, json.dumps(HELP_COMMANDS)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    loaded = set(json.loads(probe.stderr.strip().splitlines()[-1]))
    assert "cign_fast.cli.bench" in loaded and "cign_fast.cli.demo" in loaded  # the probe did reach them
    assert sorted(name for name in HEAVY if name in loaded) == []
    for name in SUBCOMMANDS:
        assert f"usage: cign-fast {name}" in probe.stdout


def test_bench_results_default_to_the_working_directory():
    args = build_parser("bench").parse_args(["bench", "ops"])
    assert args.out == Path("bench-results") and not args.out.is_absolute()


def test_no_benchmark_writes_into_its_own_folder_by_default():
    """Every results or work folder a benchmark defaults to is relative to the working directory."""
    found = [
        f"{path.name}:{number}"
        for path in sorted((ROOT / "bench").glob("*.py"))
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if re.search(r"default=(REPO|ROOT|Path\(__file__)", line)
    ]
    assert found == []


def test_bench_ops_names_a_wrong_shape(capsys):
    assert main(["bench", "ops", "--shapes", "cign-n36", "no-such-shape"]) == 2
    error = capsys.readouterr().err
    assert "--shapes" in error and "no-such-shape" in error and "cign-n36" in error


def test_no_tracker_words_in_the_product():
    pattern = re.compile(r"issue[ -]?\d|issue tracker|the ticket", re.IGNORECASE)
    found = [
        f"{path.relative_to(ROOT)}:{number}"
        for folder in ("cign_fast", "kernels", "bench", "csrc", "build_support")
        for path in sorted((ROOT / folder).rglob("*"))
        if path.suffix in (".py", ".md", ".cpp", ".cu", ".h")
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert found == []


@pytest.mark.parametrize("package", ["cign_fast", "cign_fast.data", "cign_fast.train"])
def test_lazy_exports_are_also_imported_for_type_checkers(package):
    """A lazily exported name is imported under ``if TYPE_CHECKING:`` too, from the same module."""
    tree = ast.parse((ROOT / package.replace(".", "/") / "__init__.py").read_text())
    checked = [
        node for node in tree.body if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING"
    ]
    imported = {
        (node.module, alias.name)
        for block in checked
        for node in block.body
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
    }
    exports = importlib.import_module(package).EXPORTS
    assert imported == {(module, name) for module, names in exports.items() for name in names}


def test_build_record_matches_the_running_torch():
    record = read_build_info()
    assert record is not None, "build the extensions with setup.py first"
    assert record["torch"] == torch.__version__
    assert record["cuda_extension"] == (record["cuda_skipped"] is None)
    line = cuda_build_line(record)
    assert (record["cuda_archs"] in line) if record["cuda_extension"] else (record["cuda_skipped"] in line)


def test_build_line_names_the_archs_or_the_reason():
    built = {
        "cuda_extension": True,
        "cuda_archs": "8.0;9.0+PTX",
        "torch": "2.11.0",
        "torch_cuda": "13.0",
        "cuda_skipped": None,
    }
    skipped = {**built, "cuda_extension": False, "cuda_archs": None, "cuda_skipped": "CIGN_FAST_CUDA=0"}
    assert "8.0;9.0+PTX" in cuda_build_line(built)
    assert cuda_build_line(skipped) == "CUDA extension skipped: CIGN_FAST_CUDA=0"
    assert cuda_build_line(None).startswith("no build record")


def setuptools_only(tmp_path: Path) -> Path:
    """A folder that holds links to setuptools (and nothing else of this environment)."""
    site = Path(sysconfig.get_path("purelib"))
    view = tmp_path / "setuptools-only"
    view.mkdir()
    for name in ("setuptools", "pkg_resources", "_distutils_hack"):
        if (site / name).exists():
            (view / name).symlink_to(site / name)
    return view


def backend_requirements(python: str | Path, pythonpath: list[Path]) -> dict:
    """Import the backend the way pip does (its folder and the build's packages on PYTHONPATH) and ask it."""
    code = (
        "import json, importlib.util, torch_aware_backend as b; "
        "print(json.dumps({'requires': b.get_requires_for_build_wheel(), "
        "'torch': importlib.util.find_spec('torch') is not None}))"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(map(str, [BACKEND_DIR, *pythonpath])), "PYTHONNOUSERSITE": "1"}
    done = subprocess.run([str(python), "-c", code], env=env, capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_backend_uses_the_installed_torch_under_isolation(tmp_path):
    """pip's isolation hides this environment's site-packages; the backend finds its torch anyway, downloads none."""
    hide = tmp_path / "isolation"
    hide.mkdir()
    (hide / "sitecustomize.py").write_text(  # what pip's build environment does
        "import sys, site\nhidden = set(site.getsitepackages())\n"
        "sys.path[:] = [p for p in sys.path if p not in hidden]\n"
    )
    answer = backend_requirements(sys.executable, [hide, setuptools_only(tmp_path)])
    assert answer["torch"] is True
    assert not any(requirement.startswith("torch") for requirement in answer["requires"])


def test_backend_pins_torch_where_there_is_none(tmp_path):
    bare = tmp_path / "bare"
    venv.create(bare, with_pip=False)
    answer = backend_requirements(bare / "bin" / "python", [setuptools_only(tmp_path)])
    pinned = next(
        line.strip() for line in (ROOT / "requirements.txt").read_text().splitlines() if line.startswith("torch==")
    )
    assert answer == {"requires": [pinned], "torch": False}


@pytest.mark.parametrize("entry", ["cign_fast.kernels", "cign_fast.bench"])
def test_kernels_and_benchmarks_resolve_inside_the_package_folder(entry):
    """cign_fast/kernels and cign_fast/bench link to the top-level folders, so every install mode finds them."""
    module = __import__(entry, fromlist=["_"])
    assert Path(module.__file__).parent.parent == ROOT / "cign_fast"


def test_cli_method_names_are_the_registered_methods() -> None:
    from cign_fast.cli.train import METHOD_NAMES
    from cign_fast.methods import method_names

    assert METHOD_NAMES == method_names()
