"""The counter-based Gumbel noise: deterministic per (seed, index), well distributed, same in C++."""

import math

import pytest
import torch

from cign_fast.ops.gumbel import gumbel_noise, mix32, mix32_int, seed_keys, uniform_from_index


def test_mix32_tensor_matches_python_ints():
    values = [0, 1, 2, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 123456789, 0xDEADBEEF]
    assert mix32(torch.tensor(values, dtype=torch.int64)).tolist() == [mix32_int(v) for v in values]


def test_same_seed_same_noise_and_different_seed_different_noise():
    a, b, c = gumbel_noise((2, 9, 49), 7), gumbel_noise((2, 9, 49), 7), gumbel_noise((2, 9, 49), 8)
    assert torch.equal(a, b)
    assert (a != c).float().mean() > 0.99


def test_noise_depends_on_element_index_only():
    small = gumbel_noise((1, 4, 5), 3).flatten()
    large = gumbel_noise((2, 4, 5), 3).flatten()
    assert torch.equal(small, large[:20])


def test_uniforms_stay_inside_the_open_interval_and_are_exact_multiples():
    u = uniform_from_index(torch.arange(1 << 18, dtype=torch.int64), seed=11)
    assert u.min() >= 2.0**-24 and u.max() <= 1 - 2.0**-24
    assert torch.equal((u - 2.0**-24) * 2**23, ((u - 2.0**-24) * 2**23).round())


def test_gumbel_moments():
    g = gumbel_noise((4, 256, 256), 1234).double()
    euler_gamma = 0.5772156649
    assert abs(g.mean().item() - euler_gamma) < 0.01
    assert abs(g.var().item() - math.pi**2 / 6) < 0.03
    assert torch.isfinite(g).all()


def test_seed_range_is_checked():
    with pytest.raises(ValueError, match="seed"):
        seed_keys(-1)
    with pytest.raises(ValueError, match="seed"):
        seed_keys(2**63)


def test_cpp_noise_equals_python_noise():
    from cign_fast.ops import native_cpp  # the C++ extension is always built

    expected = gumbel_noise((3, 11, 17), 2**40 + 5)
    assert torch.allclose(native_cpp.gumbel_noise((3, 11, 17), 2**40 + 5), expected, rtol=0, atol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_noise_equals_python_noise():
    from cign_fast.ops import native_cuda

    expected = gumbel_noise((3, 11, 17), 99)
    got = native_cuda.gumbel_noise((3, 11, 17), 99, torch.device("cuda")).cpu()
    assert torch.allclose(got, expected, rtol=0, atol=1e-6)
