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
iCaRL, SS-IL, IL2M, BiC, PODNet) then get ``required_memory_per_class``; methods that keep none (joint training)
never get any. ``memory_budget`` instead gives every method that can keep exemplars that many in total
(``memory.budget``, shared by the classes seen: AV-CIL's protocol).

Outputs in ``OUT``: ``compare.json`` and ``compare.md`` (mean +- std over the seeds of the average
incremental accuracy, last accuracy, forgetting and BWT for audio, visual and audio-visual) and
``compare.png`` (accuracy after each step per method, mean +- std band). With two seeds or more and CIGN among
the methods, ``compare.md`` also tests each method against CIGN per metric and modality: a two-sided paired
t-test over the seeds (the p-value, the number of seeds, and a warning that a few seeds give little power).
"""

from __future__ import annotations

import json
import math
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
from cign_fast.train.run_folder import earlier_outputs

SIGNIFICANCE_REFERENCE = "cign"  # every method is tested against it, paired over the seeds
Metric = Literal["avg_incremental_accuracy", "last_accuracy", "forgetting", "bwt"]
METRICS: dict[Metric, str] = {
    "avg_incremental_accuracy": "Average incremental accuracy",
    "last_accuracy": "Last accuracy",
    "forgetting": "Forgetting",
    "bwt": "Backward transfer (BWT)",
}


class ModalityResults(TypedDict):
    """One method's metrics on one modality over the seeds (compare.json ``results[method][modality]``)."""

    avg_incremental_accuracy: MeanStd
    last_accuracy: MeanStd
    forgetting: MeanStd
    bwt: MeanStd
    accuracy_after_step: StepCurve


class PairedTest(TypedDict):
    """A paired t-test over the seeds (compare.json ``significance[method][modality][metric]``)."""

    mean_difference: float  # the method minus the reference, mean over the seeds
    t: float | None  # None for one pair or no spread
    p: float | None  # two-sided; None for one pair
    n: int  # pairs (seeds)


Significance = dict[str, dict[Modality, dict[Metric, PairedTest]]]  # method -> modality -> metric -> test


class _CompareReportOptional(TypedDict, total=False):
    significance: Significance  # with two seeds or more and the reference among the methods


class CompareReport(_CompareReportOptional):
    """compare.json."""

    data: str
    methods: list[str]
    seeds: list[int]
    requested_memory_per_class: int
    memory_per_class: dict[str, int]  # method -> exemplars per class it got
    memory_budget: dict[str, int]  # method -> exemplars in total it got (0: no total budget)
    class_tasks: list[list[str]]
    eval_split: str
    runs: dict[str, list[str]]  # method -> run folders, one per seed
    results: dict[str, dict[Modality, ModalityResults]]  # method -> modality -> metrics


RECIPES_DIR = Path(__file__).resolve().parents[2] / "configs" / "benchmarks"  # in a source checkout
RECIPE_KEYS = ("methods", "seeds", "memory_per_class", "required_memory_per_class", "memory_budget")


def recipe_names() -> list[str]:
    """The benchmark recipes of ``configs/benchmarks/`` (file names without ``.yaml``)."""
    return sorted(path.stem for path in RECIPES_DIR.glob("*.yaml"))


def load_recipe(name: str) -> tuple[dict[str, object], dict[str, object], Path]:
    """``(comparison settings, config sections, file)`` of recipe ``name``: its ``compare`` section (the keys
    of ``RECIPE_KEYS``) and the rest, a config mapping; a relative ``data.class_order`` is taken relative to
    the recipe's folder."""
    path = RECIPES_DIR / f"{name}.yaml"
    if not path.is_file():
        raise ValueError(
            f"--benchmark: expected a data preset or one of the recipes {', '.join(recipe_names())} "
            f"(in {RECIPES_DIR}), got {name!r}"
        )
    values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    settings = values.pop("compare", None) or {}
    unknown = sorted(set(settings) - set(RECIPE_KEYS))
    if unknown:
        raise ValueError(
            f"{path}: compare.{unknown[0]} is unknown; expected one of "
            f"{', '.join(f'compare.{key}' for key in RECIPE_KEYS)}"
        )
    order = (values.get("data") or {}).get("class_order")
    if order is not None and not Path(order).is_absolute():
        values["data"]["class_order"] = str(path.parent / order)
    return settings, values, path


def runnable_methods(methods: Sequence[str], input_mode: str) -> tuple[list[str], list[str]]:
    """``(the methods that run on input_mode, the others)``."""
    runs = [name for name in methods if input_mode in method_class(name).input_modes]
    return runs, [name for name in methods if name not in runs]


@dataclass(frozen=True)
class PlannedRun:
    """One run of a comparison."""

    method: str
    seed: int
    memory_per_class: int
    out: Path
    memory_budget: int = 0  # exemplars in total instead (memory.budget), when the comparison sets one


def memory_of(method: str, memory_per_class: int, required_memory_per_class: int) -> int:
    """Exemplars per class that ``method`` gets in a comparison (module docstring)."""
    use = method_class(method).memory_use
    if use == "none":
        return 0
    if memory_per_class > 0:
        return memory_per_class
    return required_memory_per_class if use == "required" else 0


def run_folder(runs: Path, method: str, seed: int, memory_per_class: int, memory_budget: int = 0) -> Path:
    """``runs/<method>/seed<seed>``, ``runs/<method>-memory<k>/seed<seed>`` with a memory of k per class,
    ``runs/<method>-budget<k>/seed<seed>`` with k exemplars in total."""
    name = (
        f"{method}-budget{memory_budget}"
        if memory_budget
        else f"{method}-memory{memory_per_class}"
        if memory_per_class
        else method
    )
    return runs / name / f"seed{seed}"


def budget_of(method: str, memory_budget: int) -> int:
    """The total memory ``method`` gets when the comparison sets one (none for the methods that keep none)."""
    return 0 if method_class(method).memory_use == "none" else memory_budget


def plan_runs(
    methods: Sequence[str],
    seeds: Sequence[int],
    runs: Path,
    memory_per_class: int,
    required_memory_per_class: int,
    memory_budget: int = 0,
) -> list[PlannedRun]:
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
        raise ValueError(
            f"--memory-per-class, --required-memory-per-class: expected >= 0 and > 0, got "
            f"{memory_per_class} and {required_memory_per_class}"
        )
    if memory_budget < 0 or (memory_budget > 0 and memory_per_class > 0):
        raise ValueError(
            f"--memory-budget: expected >= 0 and not together with --memory-per-class, got "
            f"{memory_budget} and {memory_per_class}"
        )
    runs_of = [
        (
            name,
            seed,
            0 if memory_budget else memory_of(name, memory_per_class, required_memory_per_class),
            budget_of(name, memory_budget),
        )
        for seed in seeds
        for name in methods
    ]
    return [
        PlannedRun(name, seed, memory, run_folder(runs, name, seed, memory, budget), budget)
        for name, seed, memory, budget in runs_of
    ]


def run_config(base: TrainConfig, run: PlannedRun) -> TrainConfig:
    """``base`` with the run's method, seed, memory and folder (checked like a config file)."""
    values = base.to_dict()
    values["method"] = run.method
    values["memory"] = {**values["memory"], "budget": run.memory_budget, "per_class": run.memory_per_class}
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
        raise ValueError(
            f"--out: the finished run in {out} was made with different settings for "
            f"{', '.join(differing)}; compare into another --out folder"
        )
    return summary


def mean_and_std(values: Sequence[float]) -> MeanStd:
    """``{"mean", "std", "values"}``; std is the sample standard deviation (0 for one seed)."""
    values = [float(v) for v in values]
    return MeanStd(
        mean=statistics.fmean(values), std=statistics.stdev(values) if len(values) > 1 else 0.0, values=values
    )


def aggregate(summaries: dict[str, list[RunSummary]]) -> dict[str, dict[Modality, ModalityResults]]:
    """Per method and modality: mean and std over the seeds of each of ``METRICS`` and of the accuracy after
    each step."""
    results = {}
    for method, runs in summaries.items():
        block = {}
        for modality in MODALITIES:
            blocks = [run[modality] for run in runs]
            per_step = [
                mean_and_std(column) for column in zip(*(b["accuracy_after_step"] for b in blocks), strict=True)
            ]
            block[modality] = ModalityResults(
                avg_incremental_accuracy=mean_and_std([b["avg_incremental_accuracy"] for b in blocks]),
                last_accuracy=mean_and_std([b["last_accuracy"] for b in blocks]),
                forgetting=mean_and_std([b["forgetting"] for b in blocks]),
                bwt=mean_and_std([b["bwt"] for b in blocks]),
                accuracy_after_step=StepCurve(mean=[s["mean"] for s in per_step], std=[s["std"] for s in per_step]),
            )
        results[method] = block
    return results


def student_t_p_value(t: float, df: int) -> float:
    """Two-sided p-value ``P(|T| >= |t|)`` of Student's t with an integer ``df`` >= 1 (Abramowitz & Stegun
    26.7.3-4: a finite series in ``theta = atan(|t| / sqrt(df))``)."""
    if df < 1:
        raise ValueError(f"df: expected an int >= 1, got {df}")
    if math.isinf(t):
        return 0.0
    theta = math.atan(abs(t) / math.sqrt(df))
    cos2, term, series = math.cos(theta) ** 2, 1.0, 1.0
    if df % 2:  # odd: A = 2/pi (theta + sin cos (1 + 2/3 cos^2 + 2*4/(3*5) cos^4 + ...)), terms up to cos^(df-2)
        for k in range(1, (df - 1) // 2):
            term *= cos2 * (2 * k) / (2 * k + 1)
            series += term
        inside = 2 / math.pi * (theta + (math.sin(theta) * math.cos(theta) * series if df > 1 else 0.0))
    else:  # even: A = sin (1 + 1/2 cos^2 + 1*3/(2*4) cos^4 + ...), terms up to cos^(df-2)
        for k in range(1, df // 2):
            term *= cos2 * (2 * k - 1) / (2 * k)
            series += term
        inside = math.sin(theta) * series
    return min(1.0, max(0.0, 1.0 - inside))


def paired_t_test(values: Sequence[float], reference: Sequence[float]) -> PairedTest:
    """Two-sided paired t-test of ``values - reference`` (paired by seed): ``{"mean_difference", "t", "p", "n"}``;
    ``t`` and ``p`` are ``None`` for one pair; for identical differences (no spread) ``t`` is ``None`` and
    ``p`` 0 (1 when they are all 0)."""
    differences = [float(a) - float(b) for a, b in zip(values, reference, strict=True)]
    n = len(differences)
    mean = statistics.fmean(differences)
    if n < 2:
        return {"mean_difference": mean, "t": None, "p": None, "n": n}
    spread = statistics.stdev(differences)
    if spread == 0:  # no spread: t is undefined (kept out of compare.json as null), the p-value degenerate
        return {"mean_difference": mean, "t": None, "p": 1.0 if mean == 0 else 0.0, "n": n}
    t = mean / (spread / math.sqrt(n))
    return {"mean_difference": mean, "t": t, "p": student_t_p_value(t, n - 1), "n": n}


def significance(results: dict[str, dict[Modality, ModalityResults]], reference: str) -> Significance:
    """Per method other than ``reference``, modality and metric: the paired t-test against ``reference``."""
    return {
        method: {
            modality: {
                metric: paired_t_test(block[modality][metric]["values"], results[reference][modality][metric]["values"])
                for metric in METRICS
            }
            for modality in MODALITIES
        }
        for method, block in results.items()
        if method != reference
    }


def format_significance(report: CompareReport) -> list[str]:
    """compare.md's significance section: per metric, each method's mean difference to CIGN and the p-value."""
    tests, seeds = report.get("significance"), len(report["seeds"])
    if not tests:
        reason = (
            "a single seed gives no spread to test against"
            if seeds < 2
            else f"{SIGNIFICANCE_REFERENCE} is not among the methods"
        )
        return [f"## Significance against {SIGNIFICANCE_REFERENCE}", "", f"Not computed: {reason}.", ""]
    lines = [
        f"## Significance against {SIGNIFICANCE_REFERENCE}",
        "",
        f"Each cell: the method minus {SIGNIFICANCE_REFERENCE} (percentage points, mean over the seeds, paired by "
        f"seed) and the two-sided p-value of a paired t-test over the n = {seeds} seeds (df = {seeds - 1}). "
        "No correction for the many comparisons is made.",
    ]
    if seeds <= 5:
        lines.append(
            f"Warning: {seeds} seeds give a test little power: a large p does not mean the methods are "
            "equal, and a small one rests on the spread of only a few differences"
            + (" (with 3 seeds, a sign test could never reach p < 0.25)" if seeds == 3 else "")
            + "."
        )
    lines.append("")
    for metric, title in METRICS.items():
        lines += [
            f"### {title}",
            "",
            "| method | " + " | ".join(TITLES[m] for m in MODALITIES) + " |",
            "|---|" + "---|" * len(MODALITIES),
        ]
        for method, block in tests.items():
            cells = []
            for modality in MODALITIES:
                test = block[modality][metric]
                p = "p n/a" if test["p"] is None else "p < 0.001" if test["p"] < 0.001 else f"p = {test['p']:.3f}"
                cells.append(f"{100 * test['mean_difference']:+.1f} ({p})")
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def format_table(report: CompareReport) -> str:
    """compare.md: one table per metric, a row per method, a column per modality (percent, mean +- std)."""
    memory = report["memory_per_class"]
    budget = report["memory_budget"]
    lines = [
        f"# Comparison on {report['data']}",
        "",
        f"{len(report['class_tasks'])} tasks, seeds {', '.join(map(str, report['seeds']))} "
        f"(mean ± sample std over the seeds), evaluated on the {report['eval_split']} split. "
        "A_t is the accuracy over all test clips of tasks 0..t (clip-weighted).",
        "",
    ]
    given = [m for m in report["methods"] if memory[m] and report["requested_memory_per_class"] == 0]
    if given:
        lines += [
            f"Exemplar-free comparison, except for {', '.join(given)}: "
            f"{'it cannot' if len(given) == 1 else 'they cannot'} run without exemplars and "
            f"{'keeps' if len(given) == 1 else 'keep'} {memory[given[0]]} per class.",
            "",
        ]
    for metric, title in METRICS.items():
        lines += [
            f"## {title} (%)",
            "",
            "| method | exemplars / class | " + " | ".join(TITLES[m] for m in MODALITIES) + " |",
            "|---|---|" + "---|" * len(MODALITIES),
        ]
        for method in report["methods"]:
            cells = [
                f"{100 * report['results'][method][m][metric]['mean']:.1f} ± "
                f"{100 * report['results'][method][m][metric]['std']:.1f}"
                for m in MODALITIES
            ]
            kept = f"{budget[method]} in total" if budget.get(method) else memory[method] or "-"
            lines.append(f"| {method} | {kept} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += format_significance(report)
    lines.append("Runs: `" + "`, `".join(path for m in report["methods"] for path in report["runs"][m]) + "`")
    return "\n".join(lines) + "\n"


def write_report(out: Path, report: CompareReport) -> None:
    write_atomically(out / "compare.json", (json.dumps(report, indent=2) + "\n").encode())
    write_atomically(out / "compare.md", format_table(report).encode())
    curves = {
        method: {m: report["results"][method][m]["accuracy_after_step"] for m in MODALITIES}
        for method in report["methods"]
    }
    plot_method_curves(curves, out / "compare.png", f"accuracy after each step ({Path(report['data']).name})")


def run_compare(
    base: TrainConfig,
    methods: Sequence[str],
    seeds: Sequence[int],
    out: str | Path,
    *,
    memory_per_class: int = 0,
    required_memory_per_class: int = 20,
    memory_budget: int = 0,
    log: Callable[[str], None] = print,
    context: DistContext | None = None,
    runs_dir: str | Path | None = None,
) -> CompareReport:
    """Train (or reuse, or resume) every run of the comparison, then write the report; returns compare.json.

    ``runs_dir``: where the run folders go (default ``out``). ``context``: a process group already set up;
    by default one is set up from torchrun's environment and torn down at the end."""
    out = Path(out)
    runs = plan_runs(
        methods,
        seeds,
        out if runs_dir is None else Path(runs_dir),
        memory_per_class,
        required_memory_per_class,
        memory_budget,
    )
    configs = [run_config(base, run) for run in runs]  # every config checked before the first run starts
    own_context = context is None
    context = setup_distributed(base.run.device) if context is None else context
    say = log if context.is_main else (lambda message: None)
    try:
        summaries: dict[str, list[RunSummary]] = {name: [] for name in methods}
        for number, (run, config) in enumerate(zip(runs, configs, strict=True), start=1):
            barrier(context)  # every rank looks at the run folder after rank 0 finished the previous run
            summary = finished_summary(config)
            label = f"[{number}/{len(runs)}] {run.method} seed {run.seed}"
            if summary is None:
                # a run killed before its first checkpoint has outputs but nothing to resume: it starts again
                started = bool(earlier_outputs(run.out))
                resume = bool(list_checkpoints(run.out / "checkpoints"))
                action = "resuming" if resume else "restarting" if started else "training"
                say(f"{label}: {action} in {run.out}")
                summary = train_incremental(
                    config, resume=resume, overwrite=started and not resume, log=say, context=context
                ).summary
            else:
                say(f"{label}: finished earlier, reusing {run.out / 'metrics.json'}")
            summaries[run.method].append(summary)
        report: CompareReport = {
            "data": str(base.data.root),
            "methods": list(methods),
            "seeds": list(seeds),
            "requested_memory_per_class": memory_per_class,
            "memory_per_class": {
                name: 0 if memory_budget else memory_of(name, memory_per_class, required_memory_per_class)
                for name in methods
            },
            "memory_budget": {name: budget_of(name, memory_budget) for name in methods},
            "class_tasks": summaries[methods[0]][0]["class_tasks"],
            "eval_split": base.data.eval_split,
            "runs": {name: [str(run.out) for run in runs if run.method == name] for name in methods},
            "results": aggregate(summaries),
        }
        if SIGNIFICANCE_REFERENCE in methods and len(seeds) > 1:
            report["significance"] = significance(report["results"], SIGNIFICANCE_REFERENCE)
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
