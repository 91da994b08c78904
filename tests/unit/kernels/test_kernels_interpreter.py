"""Triton kernels vs their PyTorch references on CPU, through the Triton interpreter (own process)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import kernels
from kernels import check
from kernels import reference as ref

WORKER = Path(__file__).with_name("interp_worker.py")
ROOT = Path(__file__).resolve().parents[3]
pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")


def _case(cases, tensors, name, fn, scalars=None, transform=None, **arrays):
    cases.append({"name": name, "fn": fn, "tensors": sorted(arrays), "scalars": scalars or {},
                  "transform": transform or {}})  # fmt: skip
    tensors.update({f"{name}.{k}": v.clone().contiguous() for k, v in arrays.items()})


def _step_cases(cases, tensors, g):
    for b, shape in [(1, (1, 8, 8)), (3, (3, 5, 7)), (7, (2,)), (2, (2, 1500))]:
        x, u2 = torch.randn((b, *shape), generator=g), torch.randn((2 * b, *shape), generator=g)
        s = torch.rand(b, generator=g)
        st = {"x": x, "s": s, "t": s * torch.rand(b, generator=g)}
        w, gam = 3 * torch.rand(b, generator=g), torch.rand(b, generator=g)
        seeds, k = torch.randint(-(2**62), 2**62, (b,), generator=g), torch.randint(0, 9, (b,), generator=g)
        tag = f"b{b}_n{x[0].numel()}"
        _case(cases, tensors, f"step_{tag}", "fused_step", u=u2[:b], **st)
        _case(cases, tensors, f"cfg2b_{tag}", "fused_step", u=u2, guidance=w, **st)
        _case(cases, tensors, f"cfgpair_{tag}", "fused_step", u=u2[:b], u_uncond=u2[b:], guidance=w, **st)
        _case(cases, tensors, f"renoise_{tag}", "fused_step", u=u2[:b], gamma=gam, seeds=seeds, step=k, **st)
        _case(cases, tensors, f"noise_{tag}", "noise", {"n": x[0].numel()}, seeds=seeds, step=k)
        _case(cases, tensors, f"cfgrenoise_{tag}", "fused_step", {"gamma": 0.5, "step": 3}, u=u2,
              guidance=w, seeds=seeds, **st)  # fmt: skip
        _case(cases, tensors, f"noise3_{tag}", "noise", {"n": x[0].numel(), "step": 3}, seeds=seeds)
    x = torch.randn(4, 3, 6, 10, generator=g)  # non-contiguous: x[..., ::2], u transposed
    u = torch.randn(4, 3, 5, 6, generator=g)
    st = {"s": torch.rand(4, generator=g), "t": torch.zeros(4)}
    _case(cases, tensors, "step_strided", "fused_step", transform={"x": "step2", "u": "T"}, x=x, u=u, **st)
    half = {"x": x.half(), "u": u.half().transpose(-1, -2), **st}
    _case(cases, tensors, "step_fp16", "fused_step", transform={"x": "step2"}, **half)
    _case(cases, tensors, "step_empty", "fused_step", x=torch.zeros(0, 3), u=torch.zeros(0, 3),
          s=torch.zeros(0), t=torch.zeros(0))  # fmt: skip
    _case(cases, tensors, "step_badshape", "fused_step", x=x, u=u, **st)


def _noise_cases(cases, tensors):
    seeds = torch.tensor([5, 9, 5, 2**32 + 5, 5])
    _case(cases, tensors, "noise_batch", "noise", {"n": 300}, seeds=seeds, step=torch.tensor([2, 2, 2, 2, 3]))
    _case(cases, tensors, "noise_alone", "noise", {"n": 300, "step": 2}, seeds=seeds[1:2])


def _post_cases(cases, tensors, g):
    for shape in [(2, 3, 5, 7), (1, 1, 8, 8), (3, 4, 9, 33), (0, 3, 4, 4)]:
        _case(
            cases,
            tensors,
            f"post_{'x'.join(map(str, shape))}",
            "postprocess",
            x=1.3 * torch.randn(shape, generator=g),
        )
    _case(cases, tensors, "post_halves", "postprocess", x=check.half_grid())
    x = torch.randn(2, 3, 6, 4, generator=g)
    _case(cases, tensors, "post_channels_last", "postprocess", transform={"x": "cl"}, x=x)
    _case(cases, tensors, "post_transposed", "postprocess", transform={"x": "T"}, x=x)
    _case(cases, tensors, "post_fp16", "postprocess", x=x.half())
    _case(cases, tensors, "post_3d", "postprocess", x=x[0])  # fmt: skip


def build_cases() -> tuple[list[dict], dict]:
    cases, tensors, g = [], {}, torch.Generator().manual_seed(1234)
    _step_cases(cases, tensors, g)
    _noise_cases(cases, tensors)
    _post_cases(cases, tensors, g)
    return cases, tensors


CASES, TENSORS = build_cases()
BY_NAME = {c["name"]: c for c in CASES}
TRANSFORMS = {"step2": lambda a: a[..., ::2], "T": lambda a: a.transpose(-1, -2),
              "cl": lambda a: a.contiguous(memory_format=torch.channels_last)}  # fmt: skip


def inputs(name: str) -> dict:
    """The same keyword arguments the worker passes (transforms applied)."""
    spec = BY_NAME[name]
    kw = dict(spec["scalars"])
    for k in spec["tensors"]:
        a = TENSORS[f"{name}.{k}"]
        kw[k] = TRANSFORMS[spec["transform"][k]](a) if k in spec["transform"] else a
    return kw


def child_env() -> dict:
    """This process's environment without TRITON_INTERPRET (only the worker sets it for itself)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    return env


@pytest.fixture(scope="module")
def interp(tmp_path_factory):
    d = tmp_path_factory.mktemp("interp")
    save_file(TENSORS, d / "in.safetensors")
    (d / "spec.json").write_text(json.dumps(CASES))
    args = [str(d / f) for f in ("in.safetensors", "spec.json", "out.safetensors", "report.json")]
    cmd = [sys.executable, str(WORKER), *args]
    proc = subprocess.run(cmd, env=child_env(), capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return load_file(d / "out.safetensors"), json.loads((d / "report.json").read_text())


def reference(name: str) -> torch.Tensor:
    """The case computed in this process by the PyTorch path of the same API."""
    return getattr(kernels, BY_NAME[name]["fn"])(**inputs(name), backend="torch")


EXACT = [c["name"] for c in CASES if not c["name"].startswith(("noise", "renoise", "cfgrenoise")) and
         c["name"] not in ("step_badshape", "post_3d")]  # fmt: skip


def test_interpreter_ran_the_triton_code(interp):
    _, report = interp
    assert report["interpreted"] is True
    ran = {name: info["paths"] for name, info in report["cases"].items() if "paths" in info}
    assert ran and all(p == ["triton-interpret"] for p in ran.values()), ran


def test_worker_process_ran_under_the_triton_interpreter(interp):
    """The worker, a process of its own, saw TRITON_INTERPRET=1 and triton built interpreted kernels."""
    proc = interp[1]["process"]
    assert proc["pid"] != os.getpid()
    assert proc["TRITON_INTERPRET"] == "1", proc
    assert proc["knob_interpret"] in (True, None), proc  # None: a triton without `knobs`
    assert proc["step_kernel_type"] == "InterpretedFunction", proc


CONTROL = """
import torch, kernels
x = torch.randn(2, 3)
try:
    kernels.fused_step(x, x, 1.0, 0.0, backend="triton")
except kernels.KernelError as e:
    print("refused:", e)
else:
    print("ran")
"""


def test_interpretation_comes_from_the_worker_not_the_env_it_was_given(interp):
    """Control: the env the worker was started with does not by itself run triton on CPU tensors, so the
    interpreted results above come from the worker setting TRITON_INTERPRET=1 in its own process."""
    proc = subprocess.run([sys.executable, "-c", CONTROL], env=child_env(), capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "refused:" in proc.stdout and "needs TRITON_INTERPRET=1" in proc.stdout, proc.stdout


@pytest.mark.parametrize("name", EXACT)
def test_kernel_matches_reference_exactly(interp, name):
    outs, report = interp
    want = reference(name)
    got = outs[name]
    assert report["cases"][name]["dtype"] == str(want.dtype)
    assert got.shape == want.shape and torch.equal(got, want), (got.double() - want.double()).abs().max()


@pytest.mark.parametrize("name", [c["name"] for c in CASES if c["name"].startswith("noise_b")])
def test_noise_matches_reference_philox(interp, name):
    got, want = interp[0][name], reference(name)
    torch.testing.assert_close(got, want, rtol=0, atol=check.NOISE_ATOL)


@pytest.mark.parametrize("name", [c["name"] for c in CASES if c["name"].startswith("renoise")])
def test_renoise_exact_given_kernel_noise(interp, name):
    outs = interp[0]
    kw = inputs(name)
    b = kw["x"].shape[0]
    z = outs[name.replace("renoise", "noise")]  # same seeds, steps and size
    want = ref.renoise_ref(kw["x"].reshape(b, -1), kw["u"].reshape(b, -1), kw["s"], kw["t"], kw["gamma"], z)
    assert torch.equal(outs[name].reshape(b, -1), want)
    torch.testing.assert_close(outs[name], reference(name), rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", [c["name"] for c in CASES if c["name"].startswith("cfgrenoise")])
def test_guided_renoise_exact_given_kernel_noise(interp, name):
    outs, kw = interp[0], inputs(name)
    b = kw["x"].shape[0]
    u = kw["u"].reshape(2 * b, -1)
    z = outs[name.replace("cfgrenoise", "noise3")]
    g = torch.full((b,), 0.5)
    u_cfg = ref.combine_guidance(u[:b], u[b:], kw["guidance"])
    want = ref.renoise_ref(kw["x"].reshape(b, -1), u_cfg, kw["s"], kw["t"], g, z)
    assert torch.equal(outs[name].reshape(b, -1), want)
    torch.testing.assert_close(outs[name], reference(name), rtol=0, atol=1e-5)


def test_kernel_noise_depends_only_on_own_seed_and_step(interp):
    z, alone = interp[0]["noise_batch"], interp[0]["noise_alone"]
    assert torch.equal(z[0], z[2])  # same seed, same step, other batch position
    assert torch.equal(z[1], alone[0])  # same seed and step in a batch of one
    assert not torch.equal(z[0], z[3])  # seeds differing only above bit 32
    assert not torch.equal(z[0], z[4])  # same seed, next step


def test_round_half_to_even_landed_on_halves(interp):
    x = inputs("post_halves")["x"].flatten()[:-5]
    y = (x + 1.0) * 127.5
    halves = (y - y.floor()) == 0.5
    assert int(halves.sum()) > 150  # the grid really puts many values exactly on .5
    want = (y.floor() + (y.floor() % 2 == 1).float() * halves + (y - y.floor() > 0.5).float()).to(torch.uint8)
    assert torch.equal(interp[0]["post_halves"].flatten()[:-5], want)
    assert interp[0]["post_halves"].flatten()[-5:].tolist() == [
        0,
        255,
        255,
        0,
        0,
    ]  # -1.5, 1.5, inf, -inf, nan


@pytest.mark.parametrize("name", ["step_badshape", "post_3d"])
def test_bad_inputs_rejected_clearly(interp, name):
    assert interp[1]["cases"][name]["error"].startswith("ValueError")


def test_check_against_reference_on_cpu_interpreter(interp):
    rows = interp[1]["check"]
    assert rows and all(r["ok"] for r in rows), [r for r in rows if not r["ok"]]
    assert all(r["exact"] for r in rows if r["op"] != "noise")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (compiled Triton kernels)")
def test_cuda_kernels_match_reference():
    rows = check.check_against_reference("cuda")
    assert all(r["ok"] for r in rows), [r for r in rows if not r["ok"]]
