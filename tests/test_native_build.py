"""The native extensions: they import and expose the ops, the CPU kernels of both instruction sets
agree with each other and with Python's noise, results do not depend on the thread count, and bad
input raises a RuntimeError that names the problem instead of crashing. (The numerical comparison of
every backend with the reference lives in test_assign_attention.py / test_token_distill_kl.py /
test_bernoulli_distill_kl.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import cign_fast
from cign_fast import _C
from cign_fast.contract import AssignParams
from cign_fast.ops import native_cpp
from cign_fast.ops.backends import backend_report
from cign_fast.ops.gumbel import gumbel_noise, seed_keys

OPS = (
    "assign_attention_forward",
    "assign_attention_backward",
    "token_distill_kl_forward",
    "bernoulli_distill_kl_forward",
)
# What the extensions export: the contract's functions, except the Bernoulli KL's per-row losses (reduced in Python).
EXTENSION_OPS = (*OPS[:3], "bernoulli_distill_kl_rows")
CUDA_BUILT = any(Path(cign_fast.__file__).parent.glob("_cuda*.so")) or any(
    Path(cign_fast.__file__).parent.glob("_cuda*.pyd")
)


def available_isas() -> list[str]:
    """The CPU kernel builds this machine can run ('generic' always)."""
    isas = ["generic"]
    previous = _C.kernel_isa()
    try:
        if _C.select_kernels("auto") == "avx2":
            isas.append("avx2")
    finally:
        _C.select_kernels(previous)
    return isas


@pytest.fixture
def use_isa():
    """Switch the CPU kernels for one test, restoring the automatic choice afterwards."""
    yield _C.select_kernels
    _C.select_kernels("auto")


def small_problem(dtype=torch.float32, shape=(3, 7, 11, 20)):
    batch, groups, tokens, channels = shape
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(batch, n, channels, generator=generator).to(dtype) for n in (groups, tokens, tokens))
    grad_out = torch.randn(batch, groups, channels, generator=generator).to(dtype)
    return q, k, v, grad_out


def run_cpp(q, k, v, grad_out, mode, sum_assign=False, seed=9):
    params = AssignParams(mode=mode, tau=0.7, eps=0.5, sum_assign=sum_assign, seed=seed, return_maps=True)
    forward = native_cpp.assign_attention_forward(q, k, v, params)
    backward = native_cpp.assign_attention_backward(grad_out, q, k, v, *forward[1:4], params)
    return (*forward, *backward)


def test_cpu_extension_exposes_the_ops_and_reports_its_kernels():
    for name in (*EXTENSION_OPS, "gumbel_noise", "kernel_isa", "select_kernels", "num_threads"):
        assert callable(getattr(_C, name)), name
    for name in OPS:
        assert callable(getattr(native_cpp, name)), name
    assert native_cpp.kernel_isa() in ("avx2", "generic")
    assert _C.num_threads() == torch.get_num_threads()


def test_info_reports_the_cpp_backend_usable_for_every_op():
    assert backend_report(torch.device("cpu"))["cpp"] == {op: None for op in OPS}


@pytest.mark.parametrize("isa", available_isas())
def test_cpu_noise_equals_python_noise(use_isa, isa):
    use_isa(isa)
    shape, seed = (2, 37, 53), 2**40 + 77  # odd sizes: vector tails at every row
    expected = gumbel_noise(shape, seed)
    got = native_cpp.gumbel_noise(shape, seed)
    torch.testing.assert_close(got, expected, rtol=2e-7, atol=2e-7)
    # the value of an element depends on its index only, not on where a vector of 8 starts
    assert torch.equal(native_cpp.gumbel_noise((1, 1, 5), seed).flatten(), got.flatten()[:5])


@pytest.mark.skipif("avx2" not in available_isas(), reason="this CPU has no AVX2+FMA")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("mode", [0, 1, 2])
def test_avx2_and_generic_kernels_agree(use_isa, dtype, mode):
    inputs = small_problem(dtype, shape=(2, 13, 19, 41))  # every vector and tile remainder
    results = {}
    for isa in ("avx2", "generic"):
        use_isa(isa)
        results[isa] = run_cpp(*inputs, mode)
    for name, a, b in zip(
        ("out", "lse", "argmax", "row_sum", "hard", "soft", "dq", "dk", "dv"), *results.values(), strict=True
    ):
        if name in ("argmax", "hard"):
            assert torch.equal(a, b), name
        else:
            torch.testing.assert_close(
                a.float(),
                b.float(),
                rtol=1e-5 if dtype == torch.float32 else 1e-2,
                atol=1e-5 if dtype == torch.float32 else 1e-2,
                msg=name,
            )


@pytest.mark.skipif("avx2" not in available_isas(), reason="this CPU has no AVX2+FMA")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_avx2_and_generic_bernoulli_kernels_agree(use_isa, dtype):
    generator = torch.Generator().manual_seed(3)
    student, teacher = (
        3 * torch.randn(2 * 64 + 5, 29, generator=generator).to(dtype) for _ in range(2)
    )  # row blocks and vector tails
    results = {}
    for isa in ("avx2", "generic"):
        use_isa(isa)
        results[isa] = _C.bernoulli_distill_kl_rows(student, teacher.t().contiguous().t(), 2, 27, 1.5, "mean")
    for a, b in zip(*results.values(), strict=True):
        assert a.dtype == b.dtype
        torch.testing.assert_close(a.float(), b.float(), rtol=1e-5, atol=1e-7 if dtype == torch.float32 else 1e-2)


def test_results_do_not_depend_on_the_thread_count():
    # big enough for the kernels to use two threads: (4 batch elements of 2^20 multiply-adds, 8192 rows)
    inputs = small_problem(shape=(4, 32, 64, 512))
    student, teacher = torch.randn(8192, 40), torch.randn(8192, 40)
    previous = torch.get_num_threads()
    runs = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            runs.append(
                (
                    *run_cpp(*inputs, mode=2),
                    *native_cpp.token_distill_kl_forward(student, teacher, 3, 37, 2.0, "sum"),
                    *native_cpp.bernoulli_distill_kl_forward(student, teacher, 3, 37, 2.0, "sum"),
                )
            )
    finally:
        torch.set_num_threads(previous)
    for a, b in zip(*runs, strict=True):
        assert torch.equal(a, b)


def test_bfloat16_outputs_follow_the_float32_computation():
    q, k, v, grad_out = small_problem(torch.bfloat16)
    low = run_cpp(q, k, v, grad_out, mode=0)
    high = run_cpp(q.float(), k.float(), v.float(), grad_out.float(), mode=0)
    for index in (0, 6, 7, 8):  # out, dq, dk, dv: bfloat16 roundings of the float32 results
        assert low[index].dtype == torch.bfloat16
        torch.testing.assert_close(low[index].float(), high[index], rtol=1e-2, atol=1e-2)
    assert low[1].dtype == torch.float32 and torch.allclose(low[1], high[1], rtol=1e-5, atol=1e-5)


def assign_args(**changes):
    q, k, v, _ = small_problem()
    args = dict(
        q=q,
        k=k,
        v=v,
        mode=0,
        tau=1.0,
        eps=1.0,
        sum_assign=False,
        key_a=1,
        key_b=2,
        noise_batch_offset=0,
        noise_batch_stride=1,
        return_maps=False,
    )
    args.update(changes)
    return args


@pytest.mark.parametrize(
    "changes, match",
    [
        (lambda a: dict(k=a["k"][:2]), "batch size B"),
        (lambda a: dict(v=a["v"][..., :5]), "channels C"),
        (lambda a: dict(v=a["v"][:, :4]), "same tokens S"),
        (lambda a: dict(q=a["q"][0]), "q must have rank 3"),
        (lambda a: dict(q=a["q"].double(), k=a["k"].double(), v=a["v"].double()), "float32 or bfloat16"),
        (lambda a: dict(q=a["q"].int(), k=a["k"].int(), v=a["v"].int()), "float32 or bfloat16"),
        (lambda a: dict(k=a["k"].bfloat16()), "k must have the dtype of q"),
        (lambda a: dict(v=a["v"].to("meta")), "v must be a cpu tensor"),
        (lambda a: dict(q=a["q"][:, :0], k=a["k"], v=a["v"]), "non-empty"),
        (lambda a: dict(mode=3), "mode must be"),
        (lambda a: dict(tau=0.0), "tau must be"),
        (lambda a: dict(eps=float("nan")), "eps must be"),
        (lambda a: dict(key_a=-1), "32-bit"),
        (lambda a: dict(noise_batch_stride=0), "noise_batch_stride in \\[1, 2\\^32\\)"),
        (lambda a: dict(noise_batch_offset=2**31, noise_batch_stride=2**31), "global"),
    ],
)
def test_bad_assign_inputs_raise_runtime_errors(changes, match):
    args = assign_args()
    args.update(changes(args))
    with pytest.raises(RuntimeError, match=match):
        _C.assign_attention_forward(**args)


@pytest.mark.parametrize(
    "statistic, value, match",
    [
        ("grad_out", lambda f, g: g[:, :3], "grad_out must have the shape of q"),
        ("col_lse", lambda f, g: f[1].double(), "col_lse must be Float"),
        ("col_argmax", lambda f, g: f[2][:, :4], "col_argmax must have shape"),
        ("col_argmax", lambda f, g: f[2] + 100, "group indices"),
        ("row_sum", lambda f, g: f[3].to("meta"), "row_sum must be a cpu tensor"),
    ],
)
def test_bad_backward_inputs_raise_runtime_errors(statistic, value, match):
    q, k, v, grad_out = small_problem()
    forward = _C.assign_attention_forward(q, k, v, 0, 1.0, 1.0, False, 1, 2, 0, 1, False)
    args = dict(
        grad_out=grad_out,
        q=q,
        k=k,
        v=v,
        col_lse=forward[1],
        col_argmax=forward[2],
        row_sum=forward[3],
        mode=1,
        tau=1.0,
        eps=1.0,
        sum_assign=False,
        key_a=1,
        key_b=2,
        noise_batch_offset=0,
        noise_batch_stride=1,
    )
    args[statistic] = value(forward, grad_out)
    with pytest.raises(RuntimeError, match=match):
        _C.assign_attention_backward(**args)


@pytest.mark.parametrize(
    "changes, match",
    [
        (dict(teacher=torch.randn(4, 6)), "teacher must have the student's shape"),
        (dict(student=torch.randn(4, 7, 1), teacher=torch.randn(4, 7, 1)), "student must have rank 2"),
        (dict(student=torch.randn(4, 7).half(), teacher=torch.randn(4, 7).half()), "float32 or bfloat16"),
        (dict(teacher=torch.randn(4, 7).bfloat16()), "teacher must have the dtype of student"),
        (dict(start=5, stop=5), "non-empty range"),
        (dict(stop=8), "non-empty range"),
        (dict(temperature=-1.0), "temperature must be"),
        (dict(reduction="max"), "reduction must be"),
        (dict(student=torch.randn(0, 7), teacher=torch.randn(0, 7)), "at least one row"),
    ],
)
@pytest.mark.parametrize("function", ["token_distill_kl_forward", "bernoulli_distill_kl_rows"])
def test_bad_distill_inputs_raise_runtime_errors(changes, match, function):
    args = dict(
        student=torch.randn(4, 7), teacher=torch.randn(4, 7), start=0, stop=7, temperature=2.0, reduction="batchmean"
    )
    args.update(changes)
    with pytest.raises(RuntimeError, match=f"{function}: .*{match}"):
        getattr(_C, function)(**args)


def test_unknown_kernel_set_is_refused(use_isa):
    with pytest.raises(RuntimeError, match="expected 'auto', 'avx2' or 'generic'"):
        use_isa("sse9")


@pytest.mark.skipif(not CUDA_BUILT, reason="the CUDA extension was not built here (no CUDA toolkit)")
def test_cuda_extension_imports_exposes_the_ops_and_checks_the_device():
    from cign_fast import _cuda

    for name in (*EXTENSION_OPS, "gumbel_noise"):
        assert callable(getattr(_cuda, name)), name
    q, k, v, _ = small_problem()
    with pytest.raises(RuntimeError, match="q must be a cuda tensor"):
        _cuda.assign_attention_forward(q, k, v, 0, 1.0, 1.0, False, *seed_keys(3), 0, 1, False)
    with pytest.raises(RuntimeError, match="student must be a cuda tensor"):
        _cuda.token_distill_kl_forward(torch.randn(4, 7), torch.randn(4, 7), 0, 7, 2.0, "sum")
    with pytest.raises(RuntimeError, match="bernoulli_distill_kl_rows: student must be a cuda tensor"):
        _cuda.bernoulli_distill_kl_rows(torch.randn(4, 7), torch.randn(4, 7), 0, 7, 2.0, "sum")
    if not torch.cuda.is_available():
        from cign_fast.ops import native_cuda

        assert native_cuda.unavailable_reason(torch.device("cpu")) == "no CUDA device is visible to torch"
