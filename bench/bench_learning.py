"""Learning benchmark: full class-incremental runs of CIGN on the demo data and the FSDD digits, several seeds.

For every dataset, setting and seed it trains one run (the real raw-mode loop, the demo's small model) and
collects the accuracy matrices a[t][i] for audio, visual and audio-visual. The results file gives, per
setting, mean +- std over the seeds of the average incremental accuracy, the last accuracy, the forgetting
and the mean within-task accuracy a[t][t], the mean matrices, and checks the targets below.

Settings: ``distill`` (the default CIGN loss), ``no_distill`` (the same without the teacher), ``memory``
(``distill`` plus a small exemplar memory: 5 clips per class on the demo, 20 on FSDD), ``bce`` and
``bce_memory`` (``distill`` and ``memory`` with the authors' per-class BCE instead of the cross-entropy, the
default before), ``authors`` (the authors' recipe: L2-only tokens, per-class BCE, softmax KL, old classes
negative on new clips), ``separated`` / ``separated_no_distill`` (``no_replay`` and ``no_replay_no_distill`` with a
new clip's cross-entropy over the new classes only, ``distill.old_class_negatives=false``; see docs/model.md),
``replay`` / ``replay_no_distill`` (token replay with encoders that keep training,
``distill.freeze_encoders=false``), ``no_replay`` / ``no_replay_no_distill`` (neither token replay nor frozen
encoders: the default before them), and ``replay_kd`` / ``replay3_no_distill`` (token replay at weight 3 with the
teacher's heads also distilled on the replayed tokens, ``distill.replay_kd``; and the same replay without KD).

``--datasets demo_features``: the demo's classes as pre-extracted token maps (``write_synthetic_features``, the
same confusable pairs across tasks) trained in features mode with D = 16: seconds per run instead of minutes,
for probing what a loss does over whole incremental runs. It has no targets.

``--datasets fsdd``: FSDD spoken digits paired with handwritten digit images (5 tasks of 2 digits, 100
training and 30 test clips per digit), raw mode. ``--datasets fsdd_features``: the same clips as fixed signal
features (pooled spectrogram and frame patches, ``cign_fast.data.signal_features``) in features mode with
D = 16: encoders that cannot drift, like the paper's pre-extracted features; it is checked against FSDD's
targets. Both need the FSDD recordings (``--fsdd DIR``, default ``../shared/data/fsdd/recordings`` next to the
repository); without them they are skipped. Finished runs are reused, so a killed benchmark resumes.

    python -m cign_fast.bench.bench_learning --out bench-results --jobs 2
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import multiprocessing
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from cign_fast.bench.common import environment, load_average, write_results
from cign_fast.metrics import MODALITIES

REPO = Path(__file__).resolve().parents[1]
DEFAULT_FSDD = REPO.parent / "shared" / "data" / "fsdd" / "recordings"
SETTINGS = (
    "distill",
    "no_distill",
    "memory",
    "bce",
    "bce_memory",
    "authors",
    "separated",
    "separated_no_distill",
    "replay",
    "replay_no_distill",
    "no_replay",
    "no_replay_no_distill",
    "replay_kd",
    "replay3_no_distill",
)
Overrides = dict[str, dict[str, object]]
BCE: Overrides = {
    "distill": {"classification": "bce"}
}  # the per-class sigmoid BCE of the authors' code (the old default)
SETTING_OVERRIDES: dict[str, Overrides] = {
    "distill": {},
    "no_distill": {"distill": {"enabled": False}},
    "memory": {},
    "bce": BCE,
    "bce_memory": BCE,
    "separated": {"distill": {"old_class_negatives": False, "token_replay": 0.0, "freeze_encoders": False}},
    "separated_no_distill": {
        "distill": {"old_class_negatives": False, "token_replay": 0.0, "freeze_encoders": False, "enabled": False}
    },
    "replay": {"distill": {"freeze_encoders": False}},
    "replay_no_distill": {"distill": {"freeze_encoders": False, "enabled": False}},
    "authors": {
        "model": {"token_norm": "l2"},
        "distill": {
            "form": "softmax",
            "classification": "bce",
            "old_class_negatives": True,
            "token_replay": 0.0,
            "freeze_encoders": False,
        },
    },
    "no_replay": {"distill": {"token_replay": 0.0, "freeze_encoders": False}},
    "no_replay_no_distill": {"distill": {"token_replay": 0.0, "freeze_encoders": False, "enabled": False}},
    "replay_kd": {"distill": {"token_replay": 3.0, "replay_kd": True}},
    "replay3_no_distill": {"distill": {"token_replay": 3.0, "enabled": False}},
}
WITH_MEMORY = ("memory", "bce_memory")
DATASETS = {
    "demo": {"tasks": 4, "classes": 8, "memory_per_class": 5},
    "demo_features": {"tasks": 4, "classes": 8, "memory_per_class": 5},
    "fsdd": {"tasks": 5, "classes": 10, "memory_per_class": 20, "train_per_class": 100, "test_per_class": 30},
    "fsdd_features": {"tasks": 5, "classes": 10, "memory_per_class": 20},
}
FEATURES_MODE = ("demo_features", "fsdd_features")  # trained in features mode (features_overrides)
NEEDS_FSDD = ("fsdd", "fsdd_features")
TARGETS = {  # (description, dataset -> threshold)
    "plasticity": "mean AV within-task accuracy a[t][t] (distill) >= {demo: 0.90, fsdd: 0.80}",
    "stability_forgetting": "AV forgetting (distill) <= 0.75 x forgetting (no_distill)",
    "stability_accuracy": "AV average incremental accuracy (distill) >= no_distill + 0.05",
    "fusion": "AV last accuracy (distill) >= max(audio, visual) last accuracy",
    "memory": "AV last accuracy (memory) >= {demo: 0.60, fsdd: 0.50}",
}
PLASTICITY = {"demo": 0.90, "fsdd": 0.80, "fsdd_features": 0.80}
MEMORY_LAST = {"demo": 0.60, "fsdd": 0.50, "fsdd_features": 0.50}


@dataclass(frozen=True)
class Job:
    dataset: str
    setting: str
    seed: int
    data_root: str
    run_dir: str
    threads: int


def data_folder(dataset: str, seed: int) -> str:
    """The folder name of a dataset's seed; FSDD's names its clip counts, so a folder written with others is
    not reused."""
    spec = DATASETS[dataset]
    if dataset == "fsdd":
        return f"fsdd-{spec['train_per_class']}train-{spec['test_per_class']}test-seed{seed}"
    return f"{dataset}-seed{seed}"


def write_dataset(dataset: str, seed: int, root: Path, fsdd: Path) -> Path:
    """The dataset of one seed (written once, reused when it exists)."""
    from cign_fast.data.fsdd import write_fsdd_digits_dataset
    from cign_fast.train.demo import DemoOptions, prepare_synthetic_data

    if dataset == "demo":
        return prepare_synthetic_data(DemoOptions(out=root, data_dir=root, seed=seed), log=lambda message: None)
    if dataset == "demo_features":
        from cign_fast.data.synthetic import write_synthetic_features

        return root if (root / "labels.csv").is_file() else write_synthetic_features(root, seed=seed)
    if dataset == "fsdd_features":
        from cign_fast.data.signal_features import signal_features_stamp, write_signal_features

        clips = write_dataset("fsdd", seed, root.parent / data_folder("fsdd", seed), fsdd)
        return root if signal_features_stamp(root) is not None else write_signal_features(clips, root)
    if not (root / "labels.csv").is_file():
        spec = DATASETS["fsdd"]
        write_fsdd_digits_dataset(
            fsdd, root, train_per_class=spec["train_per_class"], test_per_class=spec["test_per_class"], seed=seed
        )
    return root


def job_config(job: Job):
    """The run's TrainConfig: the demo's settings (raw mode, small model), the dataset and the setting."""
    from cign_fast.train.config import build_config
    from cign_fast.train.demo import DemoOptions, demo_overrides

    spec = DATASETS[job.dataset]
    memory = spec["memory_per_class"] * spec["classes"] if job.setting in WITH_MEMORY else 0
    options = DemoOptions(
        out=Path(job.run_dir),
        tasks=spec["tasks"],
        classes=spec["classes"],
        memory_budget=memory,
        seed=job.seed,
        progress=False,
    )
    base = demo_overrides(options, Path(job.data_root))
    if job.dataset in FEATURES_MODE:
        base = features_overrides(base)
    for section, values in SETTING_OVERRIDES[job.setting].items():
        base[section] = {**base.get(section, {}), **values}
    return build_config(base=base)


def features_overrides(base: Overrides) -> Overrides:
    """The demo's recipe on pre-extracted tokens: features mode, D = 16, 2 heads, Adam 3e-3 (seconds per run)."""
    return {
        **base,
        "data": {**base["data"], "input_mode": "features"},
        "model": {**base["model"], "dim": 16, "num_heads": 2},
        "optim": {**base["optim"], "lr": 3e-3},
    }


def finished_summary(job: Job) -> dict | None:
    """The metrics.json of a finished run (every task evaluated), or None."""
    metrics = Path(job.run_dir) / "metrics.json"
    if metrics.is_file():
        summary = json.loads(metrics.read_text())
        if len(summary["audio_visual"]["matrix"]) == DATASETS[job.dataset]["tasks"]:
            return summary
    return None


def run_job(job: Job) -> dict:
    """Train one run (or reuse a finished one); returns its metrics.json content."""
    summary = finished_summary(job)
    if summary is not None:
        return summary
    metrics = Path(job.run_dir) / "metrics.json"
    torch.set_num_threads(job.threads)
    from cign_fast.train.loop import train_incremental

    start = time.perf_counter()
    resume = Path(job.run_dir).exists()  # a run killed part-way continues from its newest checkpoint
    summary = dict(train_incremental(job_config(job), resume=resume, log=lambda message: None).summary)
    summary["seconds"] = time.perf_counter() - start
    metrics.write_text(json.dumps(summary))
    return summary


def mean_std(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}


def aggregate(summaries: list[dict]) -> dict:
    """Per modality: mean +- std over seeds of the scalar metrics, and the mean matrix."""
    result = {}
    for modality in MODALITIES:
        blocks = [summary[modality] for summary in summaries]
        matrices = [block["matrix"] for block in blocks]
        tasks = len(matrices[0])
        within = [statistics.fmean(matrix[t][t] for t in range(tasks)) for matrix in matrices]
        mean_matrix = [
            [statistics.fmean(matrix[t][i] for matrix in matrices) if i <= t else None for i in range(tasks)]
            for t in range(tasks)
        ]
        result[modality] = {
            "avg_incremental_accuracy": mean_std([block["avg_incremental_accuracy"] for block in blocks]),
            "last_accuracy": mean_std([block["last_accuracy"] for block in blocks]),
            "forgetting": mean_std([block["forgetting"] for block in blocks]),
            "within_task_accuracy": mean_std(within),
            "mean_matrix": mean_matrix,
            "matrices": matrices,
        }
    return result


def target_checks(dataset: str, results: dict[str, dict]) -> list[dict]:
    """The targets of this benchmark that the settings run allow to check; each met or missed, with the numbers."""
    checks = []

    def add(name: str, value: float, threshold: float, met: bool) -> None:
        checks.append(
            {
                "dataset": dataset,
                "target": name,
                "rule": TARGETS[name],
                "value": round(value, 4),
                "threshold": round(threshold, 4),
                "met": bool(met),
            }
        )

    def av(setting: str, metric: str) -> float:
        return results[setting]["audio_visual"][metric]["mean"]

    if "distill" in results:
        add(
            "plasticity",
            av("distill", "within_task_accuracy"),
            PLASTICITY[dataset],
            av("distill", "within_task_accuracy") >= PLASTICITY[dataset],
        )
        best_single = max(results["distill"][m]["last_accuracy"]["mean"] for m in ("audio", "visual"))
        add("fusion", av("distill", "last_accuracy"), best_single, av("distill", "last_accuracy") >= best_single)
    if "distill" in results and "no_distill" in results:
        bound = 0.75 * av("no_distill", "forgetting")
        add("stability_forgetting", av("distill", "forgetting"), bound, av("distill", "forgetting") <= bound)
        floor = av("no_distill", "avg_incremental_accuracy") + 0.05
        add(
            "stability_accuracy",
            av("distill", "avg_incremental_accuracy"),
            floor,
            av("distill", "avg_incremental_accuracy") >= floor,
        )
    if "memory" in results:
        add(
            "memory",
            av("memory", "last_accuracy"),
            MEMORY_LAST[dataset],
            av("memory", "last_accuracy") >= MEMORY_LAST[dataset],
        )
    return checks


def percent(stat: dict[str, float]) -> str:
    return f"{100 * stat['mean']:.1f} ± {100 * stat['std']:.1f}"


def markdown(report: dict) -> str:
    from cign_fast.bench.common import environment_markdown

    lines = [
        "# Learning benchmark: CIGN class-incremental runs",
        "",
        "Command: `python -m cign_fast.bench.bench_learning " + " ".join(report["argv"]) + "`",
        "",
    ]
    lines += environment_markdown(report["environment"])
    lines += [
        f"- seeds asked for: {report['seeds']} (each row names the seeds it averages); "
        f"wall time {report['seconds']:.0f} s"
        + (
            " (this report was assembled from finished runs, `--finished-only`: the load average above is at "
            f"assembly; the runs themselves took {report['run_seconds']:.0f} s in all, on a shared machine)"
            if report.get("finished_only")
            else ""
        ),
        "",
        "Accuracy in %, mean ± std over the seeds. a[t][t]: within-task accuracy (newest task, scored among "
        "all classes seen). Forgetting: Chaudhry et al.",
        "",
    ]
    for dataset, results in report["datasets"].items():
        lines += [
            f"## {dataset}",
            "",
            "| setting | modality | avg incremental | last | forgetting | mean a[t][t] |",
            "|---|---|---|---|---|---|",
        ]
        for setting, blocks in results.items():
            for modality in MODALITIES:
                block = blocks[modality]
                lines.append(
                    f"| {setting} (seeds {', '.join(map(str, blocks['seeds']))}) | {modality} | "
                    f"{percent(block['avg_incremental_accuracy'])} | "
                    f"{percent(block['last_accuracy'])} | {percent(block['forgetting'])} | "
                    f"{percent(block['within_task_accuracy'])} |"
                )
        lines += ["", "Mean audio-visual accuracy matrices (%, row t = after task t):", ""]
        for setting, blocks in results.items():
            rows = [
                "[" + ", ".join(f"{100 * value:.0f}" for value in row if value is not None) + "]"
                for row in blocks["audio_visual"]["mean_matrix"]
            ]
            lines.append(f"- {setting}: " + " ".join(rows))
        lines.append("")
    lines += ["## Targets", "", "| dataset | target | rule | value | threshold | met |", "|---|---|---|---|---|---|"]
    for check in report["targets"]:
        lines.append(
            f"| {check['dataset']} | {check['target']} | {check['rule']} | {check['value']:.3f} | "
            f"{check['threshold']:.3f} | {'met' if check['met'] else '**missed**'} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench-results"), help="results folder (default %(default)s)")
    parser.add_argument("--datasets", nargs="+", choices=tuple(DATASETS), default=["demo", "fsdd"])
    parser.add_argument("--settings", nargs="+", choices=SETTINGS, default=["distill", "no_distill", "memory"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--fsdd", type=Path, default=DEFAULT_FSDD, help="folder of FSDD recordings")
    parser.add_argument("--jobs", type=int, default=1, help="runs in parallel (each with threads = cores / jobs)")
    parser.add_argument(
        "--finished-only",
        action="store_true",
        help="train nothing: report the runs already finished in OUT (each row names its seeds)",
    )
    args = parser.parse_args(argv)
    datasets = [d for d in args.datasets if d not in NEEDS_FSDD or args.fsdd.is_dir()]
    for skipped in sorted(set(args.datasets) - set(datasets)):
        print(f"skipping {skipped}: no FSDD recordings in {args.fsdd}")
    env = environment(torch.device("cpu"))
    threads = max(1, torch.get_num_threads() // args.jobs)
    jobs = []
    for dataset in datasets:
        for seed in args.seeds:
            root = write_dataset(dataset, seed, args.out / "data" / data_folder(dataset, seed), args.fsdd)
            jobs += [
                Job(
                    dataset,
                    setting,
                    seed,
                    str(root),
                    str(args.out / "runs" / f"{data_folder(dataset, seed)}-{setting}"),
                    threads,
                )
                for setting in args.settings
            ]
    start = time.perf_counter()
    if args.finished_only:
        summaries = {job: summary for job in jobs if (summary := finished_summary(job)) is not None}
    else:
        context = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(args.jobs, mp_context=context) as pool:
            summaries = dict(zip(jobs, pool.map(run_job, jobs), strict=True))
    report = {
        "argv": argv if argv is not None else sys.argv[1:],
        "environment": env,
        "seeds": args.seeds,
        "datasets": {},
        "targets": [],
        "seconds": time.perf_counter() - start,
        "finished_only": args.finished_only,
        "run_seconds": sum(float(summary.get("seconds", 0.0)) for summary in summaries.values()),
    }
    for dataset in datasets:
        done = {
            setting: [job for job in jobs if job.dataset == dataset and job.setting == setting and job in summaries]
            for setting in args.settings
        }
        results = {
            setting: {**aggregate([summaries[job] for job in runs]), "seeds": [job.seed for job in runs]}
            for setting, runs in done.items()
            if runs
        }
        report["datasets"][dataset] = results
        if dataset in PLASTICITY:  # the targets are the demo's and FSDD's; demo_features is a quick probe
            report["targets"] += target_checks(dataset, results)
    report["environment"]["load_average_end"] = load_average()
    json_path, md_path = write_results("learning", report, markdown(report), args.out)
    print(markdown(report))
    print(f"wrote {json_path} and {md_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
