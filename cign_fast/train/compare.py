"""``cign-fast compare``: several methods x seeds on one dataset and config, then a table and a plot.

Every run is a normal run folder ``RUNS/<method>/seed<seed>``, or ``RUNS/<method>-memory<k>/seed<seed>`` with
k exemplars per class (``cign-fast train --resume`` continues it); ``RUNS`` is ``OUT`` unless told otherwise,
so comparisons that share a runs folder share the runs they have in common.
A run whose ``metrics.json`` already covers every task is reused (after checking that it was made with the
same settings); an unfinished one resumes from its newest intact checkpoint. So a killed compare, started
again with the same arguments, resumes where it stopped. Under torchrun every run is a DDP run of the one
process group; only rank 0 writes.

Memory: ``memory_per_class`` exemplars per class for every method that can keep exemplars (0: the
exemplar-free comparison); methods that cannot run without exemplars (``memory_use == "required"``:
iCaRL, SS-IL) then get ``required_memory_per_class``; methods that keep none (joint training) never get any.

Outputs in ``OUT``: ``compare.json`` and ``compare.md`` (mean +- std over the seeds of the average
incremental accuracy, last accuracy, forgetting and BWT for audio, visual and audio-visual) and
``compare.png`` (accuracy after each step per method, mean +- std band).
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypedDict

import yaml

from cign_fast.methods import method_class, method_names
from cign_fast.metrics import MODALITIES, MeanStd, Modality, StepCurve
from cign_fast.plots import TITLES, plot_method_curves
from cign_fast.train.checkpoint import list_checkpoints, write_atomically
from cign_fast.train.config import TrainConfig, config_from_dict
from cign_fast.train.distributed import DistContext, barrier, setup_distributed, teardown_distributed
from cign_fast.train.fingerprint import settings_differences
from cign_fast.train.loop import train_incremental
from cign_fast.train.outputs import RunSummary

Metric = Literal["avg_incremental_accuracy", "last_accuracy", "forgetting", "bwt"]
METRICS: dict[Metric, str] = {"avg_incremental_accuracy": "Average incremental accuracy",
                              "last_accuracy": "Last accuracy", "forgetting": "Forgetting",
                              "bwt": "Backward transfer (BWT)"}


class ModalityResults(TypedDict):
    """One method's metrics on one modality over the seeds (compare.json ``results[method][modality]``)."""

    avg_incremental_accuracy: MeanStd
    last_accuracy: MeanStd
    forgetting: MeanStd
    bwt: MeanStd
    accuracy_after_step: StepCurve


class CompareReport(TypedDict):
    """compare.json."""

    data: str
    methods: list[str]
    seeds: list[int]
    requested_memory_per_class: int
    memory_per_class: dict[str, int]                        # method -> exemplars per class it got
    class_tasks: list[list[str]]
    eval_split: str
    runs: dict[str, list[str]]                              # method -> run folders, one per seed
    results: dict[str, dict[Modality, ModalityResults]]     # method -> modality -> metrics


@dataclass(frozen=True)
class PlannedRun:
    """One run of a comparison."""

    method: str
    seed: int
    memory_per_class: int
    out: Path


def memory_of(method: str, memory_per_class: int, required_memory_per_class: int) -> int:
    """Exemplars per class that ``method`` gets in a comparison (module docstring)."""
    use = method_class(method).memory_use
    if use == "none":
        return 0
    if memory_per_class > 0:
        return memory_per_class
    return required_memory_per_class if use == "required" else 0


def run_folder(runs: Path, method: str, seed: int, memory_per_class: int) -> Path:
    """``runs/<method>/seed<seed>``, ``runs/<method>-memory<k>/seed<seed>`` with a memory of k per class."""
    return runs / (method if memory_per_class == 0 else f"{method}-memory{memory_per_class}") / f"seed{seed}"


def plan_runs(methods: Sequence[str], seeds: Sequence[int], runs: Path, memory_per_class: int,
              required_memory_per_class: int) -> list[PlannedRun]:
    """The runs seed by seed (a partial comparison then has every method), each with its folder and memory."""
    if not methods:
        raise ValueError(f"--methods: expected at least one of {', '.join(method_names())}")
    for name in methods:
        method_class(name)
    duplicates = sorted({name for name in methods if list(methods).count(name) > 1})
    if duplicates:
        raise ValueError(f"--methods: each method once, got {', '.join(duplicates)} more than once")
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds: expected distinct seeds, got {list(seeds)}")
    if memory_per_class < 0 or required_memory_per_class <= 0:
        raise ValueError(f"--memory-per-class, --required-memory-per-class: expected >= 0 and > 0, got "
                         f"{memory_per_class} and {required_memory_per_class}")
    runs_of = [(name, seed, memory_of(name, memory_per_class, required_memory_per_class))
               for seed in seeds for name in methods]
    return [PlannedRun(name, seed, memory, run_folder(runs, name, seed, memory)) for name, seed, memory in runs_of]


def run_config(base: TrainConfig, run: PlannedRun) -> TrainConfig:
    """``base`` with the run's method, seed, memory and folder (checked like a config file)."""
    values = base.to_dict()
    values["method"] = run.method
    values["memory"] = {**values["memory"], "budget": 0, "per_class": run.memory_per_class}
    values["run"] = {**values["run"], "seed": run.seed, "out": str(run.out)}
    return config_from_dict(values)


def finished_summary(config: TrainConfig) -> RunSummary | None:
    """The metrics of a finished run in ``config.run.out`` (made with ``config``'s settings), else ``None``."""
    out = config.run.out_path()
    metrics, saved = out / "metrics.json", out / "config.yaml"
    if not metrics.is_file() or not saved.is_file():
        return None
    summary: RunSummary = json.loads(metrics.read_text())
    if len(summary["audio"]["matrix"]) < len(summary["class_tasks"]):
        return None
    differing = settings_differences(yaml.safe_load(saved.read_text()), config.to_dict())
    if differing:
        raise ValueError(f"--out: the finished run in {out} was made with different settings for "
                         f"{', '.join(differing)}; compare into another --out folder")
    return summary


def mean_and_std(values: Sequence[float]) -> MeanStd:
    """``{"mean", "std", "values"}``; std is the sample standard deviation (0 for one seed)."""
    values = [float(v) for v in values]
    return MeanStd(mean=statistics.fmean(values), std=statistics.stdev(values) if len(values) > 1 else 0.0,
                   values=values)


def aggregate(summaries: dict[str, list[RunSummary]]) -> dict[str, dict[Modality, ModalityResults]]:
    """Per method and modality: mean and std over the seeds of each of ``METRICS`` and of the accuracy after
    each step."""
    results = {}
    for method, runs in summaries.items():
        block = {}
        for modality in MODALITIES:
            blocks = [run[modality] for run in runs]
            per_step = [mean_and_std(column) for column in zip(*(b["accuracy_after_step"] for b in blocks), strict=True)]
            block[modality] = ModalityResults(
                avg_incremental_accuracy=mean_and_std([b["avg_incremental_accuracy"] for b in blocks]),
                last_accuracy=mean_and_std([b["last_accuracy"] for b in blocks]),
                forgetting=mean_and_std([b["forgetting"] for b in blocks]),
                bwt=mean_and_std([b["bwt"] for b in blocks]),
                accuracy_after_step=StepCurve(mean=[s["mean"] for s in per_step], std=[s["std"] for s in per_step]))
        results[method] = block
    return results


def format_table(report: CompareReport) -> str:
    """compare.md: one table per metric, a row per method, a column per modality (percent, mean +- std)."""
    memory = report["memory_per_class"]
    lines = [f"# Comparison on {report['data']}", "",
             f"{len(report['class_tasks'])} tasks, seeds {', '.join(map(str, report['seeds']))} "
             f"(mean ± sample std over the seeds), evaluated on the {report['eval_split']} split. "
             "A_t is the accuracy over all test clips of tasks 0..t (clip-weighted).", ""]
    given = [m for m in report["methods"] if memory[m] and report["requested_memory_per_class"] == 0]
    if given:
        lines += [f"Exemplar-free comparison, except for {', '.join(given)}: "
                  f"{'it cannot' if len(given) == 1 else 'they cannot'} run without exemplars and "
                  f"{'keeps' if len(given) == 1 else 'keep'} {memory[given[0]]} per class.", ""]
    for metric, title in METRICS.items():
        lines += [f"## {title} (%)", "", "| method | exemplars / class | " + " | ".join(TITLES[m] for m in MODALITIES)
                  + " |", "|---|---|" + "---|" * len(MODALITIES)]
        for method in report["methods"]:
            cells = [f"{100 * report['results'][method][m][metric]['mean']:.1f} ± "
                     f"{100 * report['results'][method][m][metric]['std']:.1f}" for m in MODALITIES]
            lines.append(f"| {method} | {memory[method] or '-'} | " + " | ".join(cells) + " |")
        lines.append("")
    lines.append("Runs: `" + "`, `".join(path for m in report["methods"] for path in report["runs"][m]) + "`")
    return "\n".join(lines) + "\n"


def write_report(out: Path, report: CompareReport) -> None:
    write_atomically(out / "compare.json", (json.dumps(report, indent=2) + "\n").encode())
    write_atomically(out / "compare.md", format_table(report).encode())
    curves = {method: {m: report["results"][method][m]["accuracy_after_step"] for m in MODALITIES}
              for method in report["methods"]}
    plot_method_curves(curves, out / "compare.png", f"accuracy after each step ({Path(report['data']).name})")


def run_compare(base: TrainConfig, methods: Sequence[str], seeds: Sequence[int], out: str | Path, *,
                memory_per_class: int = 0, required_memory_per_class: int = 20,
                log: Callable[[str], None] = print, context: DistContext | None = None,
                runs_dir: str | Path | None = None) -> CompareReport:
    """Train (or reuse, or resume) every run of the comparison, then write the report; returns compare.json.

    ``runs_dir``: where the run folders go (default ``out``). ``context``: a process group already set up;
    by default one is set up from torchrun's environment and torn down at the end."""
    out = Path(out)
    runs = plan_runs(methods, seeds, out if runs_dir is None else Path(runs_dir), memory_per_class,
                     required_memory_per_class)
    configs = [run_config(base, run) for run in runs]   # every config checked before the first run starts
    own_context = context is None
    context = setup_distributed(base.run.device) if context is None else context
    say = log if context.is_main else (lambda message: None)
    try:
        summaries: dict[str, list[RunSummary]] = {name: [] for name in methods}
        for number, (run, config) in enumerate(zip(runs, configs, strict=True), start=1):
            barrier(context)   # every rank looks at the run folder after rank 0 finished the previous run
            summary = finished_summary(config)
            label = f"[{number}/{len(runs)}] {run.method} seed {run.seed}"
            if summary is None:
                resume = bool(list_checkpoints(run.out / "checkpoints"))
                say(f"{label}: {'resuming' if resume else 'training'} in {run.out}")
                summary = train_incremental(config, resume=resume, log=say, context=context).summary
            else:
                say(f"{label}: finished earlier, reusing {run.out / 'metrics.json'}")
            summaries[run.method].append(summary)
        report: CompareReport = {
            "data": str(base.data.root), "methods": list(methods), "seeds": list(seeds),
            "requested_memory_per_class": memory_per_class,
            "memory_per_class": {name: memory_of(name, memory_per_class, required_memory_per_class) for name in methods},
            "class_tasks": summaries[methods[0]][0]["class_tasks"], "eval_split": base.data.eval_split,
            "runs": {name: [str(run.out) for run in runs if run.method == name] for name in methods},
            "results": aggregate(summaries),
        }
        if context.is_main:
            out.mkdir(parents=True, exist_ok=True)
            write_report(out, report)
            say(format_table(report))
            say(f"wrote {out / 'compare.md'}, {out / 'compare.json'} and {out / 'compare.png'}")
        barrier(context)
        return report
    finally:
        if own_context:
            teardown_distributed(context)
