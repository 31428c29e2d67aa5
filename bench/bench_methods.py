"""Methods benchmark: ``cign-fast compare`` of every method on the demo's synthetic clips and, when the recordings
are present, on FSDD spoken digits paired with handwritten digit images; exemplar-free and with ``--memory``
exemplars per class; ``--seeds`` seeds (default 3).

Every run uses the demo's recipe (raw clips, 64 px frames, 8 kHz audio, D = 128, depth 1, 4 epochs per task,
Adam 1e-3, batch 8; see ``cign_fast/train/demo.py``): the demo data as 4 tasks of 2 classes, the digits as 5
tasks of 2 (100 training and 30 test clips per digit). ``fsdd_features``: the same digits as fixed signal
features (``cign_fast.data.signal_features``) in features mode with bench_learning's features recipe (D = 16, 2
heads, Adam 3e-3): seconds per run, and the features-only methods (L2P, AV-CIL) run too; ``demo_features`` is
the demo's classes as pre-extracted token maps (``write_synthetic_features``) with the same recipe. In the exemplar-free
setting the methods that cannot run without exemplars (iCaRL, SS-IL) get ``--memory`` per class; the results
file says so. The comparison folders stay in ``--work`` (resumable: run the same command again after a crash).

Writes ``NAME.json`` and ``NAME.md`` (``--name``, default ``methods``) into ``--out`` (default
``./bench-results``). A benchmark, not a test.

    PYTHONPATH=. python bench/bench_methods.py [--seeds 0 1 2] [--methods cign,ewc] [--datasets demo fsdd fsdd_features]
    PYTHONPATH=. torchrun --nproc_per_node=8 bench/bench_methods.py ...
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cign_fast.bench import common
from cign_fast.bench.bench_learning import (
    DATASETS,
    DEFAULT_FSDD,
    FEATURES_MODE,
    NEEDS_FSDD,
    data_folder,
    features_overrides,
    write_dataset,
)
from cign_fast.cli.compare import method_list
from cign_fast.methods import method_names
from cign_fast.train.compare import format_table, run_compare, runnable_methods
from cign_fast.train.config import build_config
from cign_fast.train.demo import DemoOptions, demo_overrides
from cign_fast.train.distributed import broadcast_from_main, setup_distributed, teardown_distributed

SETTINGS = ("exemplar-free", "memory")


def prepare_datasets(names: list[str], work: Path, fsdd: Path) -> dict[str, tuple[Path, int]]:
    """``{dataset: (root, tasks)}``, seed 0 of each, written as the learning benchmark writes them
    (``bench_learning.write_dataset``); the FSDD ones only when ``fsdd`` exists."""
    if set(NEEDS_FSDD) & set(names) and not fsdd.is_dir():
        print(f"FSDD recordings not found at {fsdd}: skipping the digits", file=sys.stderr)
        names = [name for name in names if name not in NEEDS_FSDD]
    return {
        name: (write_dataset(name, 0, work / "data" / data_folder(name, 0), fsdd), DATASETS[name]["tasks"])
        for name in names
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", type=method_list, default=list(method_names()), metavar="NAME,NAME,...")
    parser.add_argument(
        "--datasets",
        nargs="+",
        choices=("demo", "demo_features", "fsdd", "fsdd_features"),
        default=["demo", "fsdd", "fsdd_features"],
    )
    parser.add_argument("--memory", type=int, default=20, help="exemplars per class of the memory setting")
    parser.add_argument(
        "--settings",
        nargs="+",
        choices=SETTINGS,
        default=list(SETTINGS),
        help="exemplar-free and/or with --memory exemplars per class (default: both)",
    )
    parser.add_argument("--epochs", type=int, default=DemoOptions.epochs, help="epochs per task (default: the demo's)")
    parser.add_argument("--fsdd", type=Path, default=DEFAULT_FSDD, help="FSDD recordings folder")
    parser.add_argument(
        "--work",
        type=Path,
        default=Path("runs", "bench-methods"),
        help="comparison folders (default: ./runs/bench-methods)",
    )
    parser.add_argument(
        "--out", type=Path, default=common.RESULTS, help=f"results folder (default: ./{common.RESULTS})"
    )
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument(
        "--name", default="methods", help="results file name, NAME.md and NAME.json (default: %(default)s)"
    )
    args = parser.parse_args(argv)

    options = DemoOptions(out=args.work, epochs=args.epochs, device=args.device, progress=False)
    context = setup_distributed(args.device)
    try:
        env = common.environment(context.device)
        datasets = prepare_datasets(args.datasets, args.work, args.fsdd) if context.is_main else {}
        datasets = broadcast_from_main(datasets, context)  # the other ranks wait until the data is written
        sections, reports = [], {}
        for dataset, (root, tasks) in datasets.items():
            overrides = demo_overrides(DemoOptions(**{**vars(options), "tasks": tasks}), root)
            if dataset in FEATURES_MODE:
                overrides = features_overrides(overrides)
            if dataset == "demo_features":  # 3 visual tokens: AV-CIL reads them as one frame
                overrides["avcil"] = {"frames": 1}
            base = build_config(base=overrides)
            methods, skipped = runnable_methods(args.methods, base.data.input_mode)
            if skipped:
                print(
                    f"{dataset}: skipping {', '.join(skipped)} (not for {base.data.input_mode} mode)", file=sys.stderr
                )
            for memory in [0 if name == "exemplar-free" else args.memory for name in args.settings]:
                setting = "exemplar-free" if memory == 0 else f"{memory} exemplars per class"
                # one runs folder for both settings: the runs they share (joint; iCaRL and SS-IL) train once
                report = run_compare(
                    base,
                    methods,
                    args.seeds,
                    args.work / dataset / f"memory{memory}",
                    memory_per_class=memory,
                    required_memory_per_class=args.memory,
                    context=context,
                    runs_dir=args.work / dataset / "runs",
                )
                reports[f"{dataset}, {setting}"] = report
                body = format_table(report).split("\n", 1)[1].replace("\n## ", "\n### ")
                sections.append(f"## {dataset}, {setting}\n{body}")
    finally:
        teardown_distributed(context)
    if not context.is_main:
        return 0
    env["load_average_end"] = common.load_average()
    header = [
        "# Methods compared (`cign-fast compare`)",
        "",
        *common.environment_markdown(env),
        "",
        f"Recipe: the demo's (raw clips, D = 128, depth 1, {args.epochs} epoch(s) per task, Adam 1e-3, batch 8); "
        "fsdd_features: fixed signal features in features mode, D = 16, 2 heads, Adam 3e-3; "
        f"seed(s) {' '.join(map(str, args.seeds))}.",
        "",
    ]
    json_path, md_path = common.write_results(
        args.name,
        {"environment": env, "comparisons": reports},
        "\n".join(header) + "\n" + "\n".join(sections),
        args.out,
    )
    print(f"wrote {json_path} and {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
