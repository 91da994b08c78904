"""The PyTorch references and the dispatch API (CPU path, no Triton in this process)."""

from __future__ import annotations

import random
import subprocess
import sys

import numpy as np
import pytest
import torch

import kernels
from flowmap.data import to_uint8
from flowmap.guidance import cfg_mix
from flowmap.samplers import flow_step, guided, sample_stochastic
from kernels import bench, check
from kernels import reference as ref

# Random123 known-answer vectors for Philox4x32-10: (counter, key) -> output
KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]  # fmt: skip


@pytest.mark.parametrize("ctr,key,want", KAT)
def test_philox_known_answers(ctr, key, want):
    t = lambda v: torch.tensor([v], dtype=torch.int64)
    got = ref.philox4x32([t(c) for c in ctr], t(key[0]), t(key[1]))
    assert [int(g) for g in got] == list(want)


def test_umul32_matches_python_ints():
    rng = random.Random(0)
    b = [rng.randrange(2**32) for _ in range(200)] + [0, 1, 2**32 - 1]
    for a in ref.PHILOX_M:
        hi, lo = ref._umul32(np.uint64(a), np.array(b, dtype=np.uint64))
        assert hi.tolist() == [(a * v) >> 32 for v in b]
        assert lo.tolist() == [(a * v) & 0xFFFFFFFF for v in b]


def test_uniform_map_stays_in_unit_interval():
    bits = torch.tensor([0, 1, 2**31 - 1, 2**31, 2**32 - 1], dtype=torch.int64)
    u = ref.uint_to_uniform(bits)
    assert u.dtype == torch.float32 and bool((u >= 0).all()) and bool((u < 1).all())
    assert u[0] == 0 and u[4] == 0  # 0 and -1 (as int32) both fold to 0


def test_noise_statistics():
    z = kernels.noise(torch.arange(64), 0, 512)  # [64, 512]
    assert abs(z.mean().item()) < 0.03 and abs(z.var().item() - 1) < 0.05
    assert abs((z.abs() < 1).float().mean().item() - 0.6827) < 0.015
    corr = torch.corrcoef(z)  # across seeds
    assert corr.fill_diagonal_(0).abs().max() < 0.25
    z2 = kernels.noise(torch.arange(64), 1, 512)  # next step, same seeds
    assert abs(torch.corrcoef(torch.stack([z.flatten(), z2.flatten()]))[0, 1].item()) < 0.03


def test_noise_depends_only_on_own_seed_and_step():
    z = kernels.noise([11, 3, 11, 2**40 + 11], [4, 4, 4, 4], 100)
    assert torch.equal(z[0], z[2]) and not torch.equal(z[0], z[3])
    assert torch.equal(z[1], kernels.noise([3], 4, 100)[0])
    assert torch.equal(kernels.noise([3], 4, 60)[0], z[1, :60])  # prefix-stable in n
    assert not torch.equal(kernels.noise([3], 5, 100)[0], z[1])


def _u(x, s, t, y):
    """A toy flow map depending on everything: u(x, s, t, y)."""
    e = lambda v: v.reshape(-1, *([1] * (x.dim() - 1)))
    return torch.sin(x) * e(1 + s) - e(t) * x + (0 if y is None else e(y.float()) * 0.1)


def test_step_equals_flowmap_flow_step():
    x, s = torch.randn(5, 1, 8, 8), torch.rand(5)
    t, y = s * 0.5, torch.tensor([0, 1, 2, 3, 10])
    assert torch.equal(kernels.fused_step(x, _u(x, s, t, y), s, t), flow_step(_u, x, s, t, y))


def test_guidance_equals_flowmap_guided():
    x, s, y = torch.randn(4, 3, 5), torch.rand(4), torch.tensor([1, 2, 3, 4])
    t = s / 3
    u2 = _u(torch.cat([x, x]), torch.cat([s, s]), torch.cat([t, t]), torch.cat([y, torch.full_like(y, 10)]))
    want = flow_step(guided(_u, 2.5, 10), x, s, t, y)
    assert torch.equal(kernels.fused_step(x, u2, s, t, guidance=2.5), want)
    per_sample = kernels.fused_step(x, u2[:4], s, t, guidance=torch.full((4,), 2.5), u_uncond=u2[4:])
    assert torch.equal(per_sample, want)


def test_reference_guidance_is_flowmap_cfg_mix_bit_for_bit():
    u_cond, u_null, w = torch.randn(6, 33), torch.randn(6, 33), torch.rand(6) * 5
    assert torch.equal(ref.combine_guidance(u_cond, u_null, w), cfg_mix(u_cond, u_null, w))


def test_renoise_matches_textbook_formula():
    x, u, z = torch.randn(3, 40, dtype=torch.float64).unbind(0)
    x, u, z = x.reshape(4, 10), u.reshape(4, 10), z.reshape(4, 10)
    s, t, g = (
        torch.tensor([1.0, 0.8, 0.5, 0.3]),
        torch.tensor([0.6, 0.4, 0.2, 0.0]),
        torch.tensor([1, 0.5, 0, 0.3]),
    )
    e = lambda v: v.double()[:, None]
    x0 = x - e(s) * u
    eps_old = (x - (1 - e(s)) * x0) / e(s)  # sample_stochastic's form, with the division
    want = (1 - e(t)) * x0 + e(t) * ((1 - e(g) ** 2).sqrt() * eps_old + e(g) * z)
    got = ref.renoise_ref(x.float(), u.float(), s, t, g, z.float())
    torch.testing.assert_close(got.double(), want, rtol=0, atol=2e-6)
    assert torch.equal(got[3], (x[3].float() + (0.0 - s[3]) * u[3].float()))  # t = 0 returns x0 exactly


def test_deterministic_renoise_equals_sample_stochastic():
    x, y = torch.randn(6, 2), None
    grid = torch.tensor([1.0, 0.6, 0.25, 0.0])
    want = sample_stochastic(_u, x, grid, y, gamma=0.0)
    z = x
    for k, (s, t) in enumerate(zip(grid[:-1].tolist(), grid[1:].tolist(), strict=True)):
        sv, tv = torch.full((6,), s), torch.full((6,), t)
        z = kernels.fused_step(
            z, _u(z, sv, torch.zeros(6), y), sv, tv, gamma=0.0, seeds=torch.arange(6), step=k
        )
    torch.testing.assert_close(z, want, rtol=0, atol=1e-5)


def test_postprocess_equals_to_uint8_then_nhwc():
    x = torch.cat([1.3 * torch.randn(3, 2, 5, 4).flatten(), check.half_grid().flatten()[:-1]])[:120]
    x = x.reshape(3, 2, 5, 4)
    want = torch.from_numpy(to_uint8(x)).permute(0, 2, 3, 1)
    assert torch.equal(kernels.postprocess(x), want)
    assert kernels.postprocess(x).is_contiguous() and kernels.postprocess(x).dtype == torch.uint8


def test_round_half_to_even_values():
    x = check.half_grid().flatten()[:-5]
    y = (x + 1) * 127.5  # float32, exactly on k / 2 by construction
    pick = torch.isin(y, torch.tensor([64.5, 65.5, 66.5, 253.5, 254.5]))
    assert int(pick.sum()) == 5
    assert kernels.postprocess(x[pick].reshape(1, 1, 1, -1)).flatten().tolist() == [64, 66, 66, 254, 254]


def test_cpu_dispatch_uses_torch_and_counts():
    before = kernels.PATHS[("step", "torch")]
    x = torch.randn(2, 3)
    kernels.fused_step(x, x, 1.0, 0.5)
    assert kernels.PATHS[("step", "torch")] == before + 1
    assert kernels.resolve_path(torch.device("cpu")) == "torch"


def test_non_contiguous_inputs_handled():
    x, u = torch.randn(3, 4, 10)[..., ::2], torch.randn(3, 5, 4).transpose(1, 2)
    s, t = torch.rand(3), torch.zeros(3)
    assert torch.equal(
        kernels.fused_step(x, u, s, t), kernels.fused_step(x.contiguous(), u.contiguous(), s, t)
    )


def test_output_keeps_x_dtype():
    x = torch.randn(2, 6).half()
    assert kernels.fused_step(x, x, 1.0, 0.0).dtype == torch.float16


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"u": torch.zeros(3, 5)}, "u must match"),
        ({"guidance": 2.0}, "2B = 6 rows"),
        ({"gamma": 0.5}, "needs per-sample seeds"),
        ({"gamma": 1.5, "seeds": [1, 2, 3]}, "gamma must be in"),
        ({"s": torch.zeros(4)}, "s must be a number or a \\[3\\] tensor"),
        ({"u_uncond": torch.zeros(3, 4)}, "only used with guidance"),
        ({"backend": "cuda"}, "backend must be one of"),
        ({"x": torch.zeros(3, 4, dtype=torch.int64)}, "x must be a float tensor"),
    ],
)
def test_bad_step_inputs_raise_clear_errors(kwargs, match):
    args = {"x": torch.zeros(3, 4), "u": torch.zeros(3, 4), "s": 1.0, "t": 0.0, **kwargs}
    with pytest.raises(ValueError, match=match):
        kernels.fused_step(args.pop("x"), args.pop("u"), args.pop("s"), args.pop("t"), **args)


def test_postprocess_rejects_non_image():
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        kernels.postprocess(torch.zeros(2, 8, 8))


SNIPPET = """
import sys
{block}
import torch, kernels
assert sys.modules.get("triton") is None, "import kernels imported triton"
x = torch.randn(2, 3)
assert torch.equal(kernels.fused_step(x, x, 1.0, 0.0), x + (0.0 - 1.0) * x)
assert kernels.postprocess(torch.zeros(1, 1, 2, 2)).tolist() == [[[[128], [128]], [[128], [128]]]]
try:
    kernels.fused_step(x, x, 1.0, 0.0, backend="triton")
except kernels.KernelError as e:
    print(e)
"""


def _run(code: str) -> str:
    env = {"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def test_import_and_cpu_path_work_without_triton():
    out = _run(SNIPPET.format(block="sys.modules['triton'] = None  # import triton now raises ImportError"))
    assert "needs the triton package" in out


@pytest.mark.skipif(
    __import__("importlib").util.find_spec("triton") is None, reason="triton is not installed"
)
def test_triton_on_cpu_without_interpreter_is_refused():
    assert "needs TRITON_INTERPRET=1" in _run(SNIPPET.format(block=""))


def test_bench_step_returns_rows():
    res = bench.bench_step(batch_sizes=(1, 3), repeats=1, number=2)
    assert res["path"] == "torch" and len(res["rows"]) == 6
    assert all(r["fused_ms"] > 0 and r["unfused_ms"] > 0 for r in res["rows"])
    assert "speedup" in bench.format_rows(res)


def test_bench_fused_and_unfused_compute_the_same_step():
    gen = torch.Generator().manual_seed(0)
    x, u2, s, t, w = torch.randn(3, 4), torch.randn(6, 4), torch.rand(3), torch.rand(3) / 2, torch.rand(3)
    for mode in ("step", "cfg"):
        fused = bench._fused(mode, x, u2, s, t, w, torch.arange(3))
        torch.testing.assert_close(fused, bench._unfused(mode, x, u2, s, t, w, gen), rtol=0, atol=1e-6)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA error")
def test_kernel_bandwidth_needs_cuda():
    with pytest.raises(kernels.KernelError, match="CUDA"):
        bench.kernel_bandwidth(1 << 20)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device to time the Triton kernel")
def test_kernel_bandwidth_on_cuda():
    res = bench.kernel_bandwidth(16 << 20, reps=5)
    assert res["gbps"]["copy"] > 0 and set(res["ratio_to_copy"]) == {"step", "step_cfg", "postprocess"}
