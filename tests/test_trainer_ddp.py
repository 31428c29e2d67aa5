"""DDP: two gloo processes under torchrun (``cign-fast compare``) train like one process with the same global
batch, for CIGN, EWC and iCaRL.

Tolerance: both runs see the same clips in every global step (DistributedSampler's permutation
depends only on seed and epoch; rank r takes positions r, r+2, ... of it, so the two half batches
together are the single run's batch) and average the same per-clip gradients. What differs is only
float32 summation order (two partial means averaged by all-reduce versus one mean), about 1e-7
relative per step; over these ~40 Adam steps that stays far below 1e-4 in the epoch losses, and an
accuracy could change only for a clip whose two best logits are that close. So the losses must agree
to 1e-4 relative and each accuracy to within one clip (EWC's Fisher, summed over the ranks' shards, differs
in the same way). CIGN's assignment runs in gumbel mode (the default): every rank draws the same seeds
(same torch seed, same draws) and each clip's noise is indexed by its position in the global batch (the
trainer passes rank and world size, the layout of DistributedSampler, to ``CIGN.set_noise_batch``), so a
rank's clips get the noise of the single run.
"""

import csv
import socket
import subprocess
import sys

import pytest

from cign_fast.cli import main

from helpers import (
    COMPARE_RUNNER,
    REPO,
    one_thread,
    read_run_results,
    subprocess_env,
    tiny_train_args,
    write_feature_dataset,
)

# CIGN and two methods with extra state: EWC (Fisher summed over the ranks' shards), iCaRL (memory, class means)
METHODS = ("cign", "ewc", "icarl")
EXTRA = ("--set", "model.assign_mode=gumbel", "--memory-per-class", "6", "--methods", ",".join(METHODS))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_two_gloo_processes_match_one_process(tmp_path):
    """``cign-fast compare`` under torchrun: every method's DDP run matches its single-process run."""
    data = write_feature_dataset(tmp_path / "data")
    with one_thread():  # the single-process runs, in this process
        assert main(["compare", *tiny_train_args(data, tmp_path / "single", *EXTRA)]) == 0

    runner = tmp_path / "runner.py"
    runner.write_text(COMPARE_RUNNER.replace("; ", "\n"))
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes=1",
        "--nproc_per_node=2",
        f"--master_port={free_port()}",
        str(runner),
        *tiny_train_args(data, tmp_path / "ddp", *EXTRA),
    ]
    ddp = subprocess.run(command, env=subprocess_env(), cwd=REPO, capture_output=True, text=True, timeout=900)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    assert ddp.stdout.count("after task 3/3") == len(METHODS)  # only rank 0 prints
    assert (tmp_path / "ddp" / "compare.md").is_file()

    for method in METHODS:
        single_metrics, single_losses = read_run_results(tmp_path / "single" / f"{method}-memory6" / "seed0")
        ddp_metrics, ddp_losses = read_run_results(tmp_path / "ddp" / f"{method}-memory6" / "seed0")
        assert ddp_losses == pytest.approx(single_losses, rel=1e-4), method
        sizes = single_metrics["task_test_sizes"]
        assert ddp_metrics["task_test_sizes"] == sizes
        for modality in ("audio", "visual", "audio_visual"):
            for single_row, ddp_row in zip(
                single_metrics[modality]["matrix"], ddp_metrics[modality]["matrix"], strict=True
            ):
                for task, (a, b) in enumerate(zip(single_row, ddp_row, strict=True)):
                    assert (a is None) == (b is None)
                    if a is not None:
                        assert abs(a - b) <= 1 / sizes[task] + 1e-9, (method, modality, single_row, ddp_row)
        # the memory was chosen once (rank 0) and used by both ranks: same epoch sizes as the single run
        with (tmp_path / "ddp" / f"{method}-memory6" / "seed0" / "epochs.csv").open() as handle:
            ddp_samples = [float(row["samples"]) for row in csv.DictReader(handle)]
        with (tmp_path / "single" / f"{method}-memory6" / "seed0" / "epochs.csv").open() as handle:
            assert ddp_samples == [float(row["samples"]) for row in csv.DictReader(handle)]
