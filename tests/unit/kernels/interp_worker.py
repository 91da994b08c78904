"""Run kernel cases through the Triton interpreter in a process of its own.

TRITON_INTERPRET=1 has to be set before triton is imported and is process-wide, so the tests run the
Triton side here (inputs and outputs pass through safetensors files) and keep their own process clean.
Usage: python interp_worker.py INPUTS.safetensors SPEC.json OUTPUTS.safetensors REPORT.json
"""

from __future__ import annotations

import json
import os
import sys
from collections import Counter

os.environ["TRITON_INTERPRET"] = "1"  # before anything imports triton

import torch  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

import kernels  # noqa: E402
from kernels import check, dispatch  # noqa: E402

TRANSFORMS = {
    "step2": lambda a: a[..., ::2],
    "T": lambda a: a.transpose(-1, -2),
    "cl": lambda a: a.contiguous(memory_format=torch.channels_last),
}


def case_inputs(spec: dict, tensors: dict) -> dict:
    """Keyword arguments of one case: its tensors (transformed as named) and its scalars."""
    kw = dict(spec.get("scalars", {}))
    for name in spec["tensors"]:
        a = tensors[f"{spec['name']}.{name}"]
        kw[name] = TRANSFORMS[spec["transform"][name]](a) if name in spec.get("transform", {}) else a
    return kw


def run_case(spec: dict, tensors: dict) -> tuple[torch.Tensor | None, dict]:
    kw = case_inputs(spec, tensors)
    before = Counter(dispatch.PATHS)
    try:
        out = getattr(kernels, spec["fn"])(**kw, backend="triton")
    except (ValueError, RuntimeError) as e:
        return None, {"error": f"{type(e).__name__}: {e}"}
    paths = sorted({path for (_, path) in (dispatch.PATHS - before)})
    return out, {"paths": paths, "dtype": str(out.dtype), "shape": list(out.shape)}


def process_report() -> dict:
    """What this process ran under, as triton itself sees it (the test checks it, not its own env)."""
    import triton

    knobs = getattr(triton, "knobs", None)  # triton >= 3.4 reads TRITON_INTERPRET through knobs
    return {
        "pid": os.getpid(),
        "TRITON_INTERPRET": os.environ.get("TRITON_INTERPRET"),
        "knob_interpret": bool(knobs.runtime.interpret) if knobs is not None else None,
        "step_kernel_type": type(dispatch._triton_module()._step_kernel).__name__,
        "triton": triton.__version__,
    }


def main(inputs: str, spec_path: str, outputs: str, report_path: str) -> None:
    torch.set_num_threads(1)
    tensors = load_file(inputs)
    specs = json.loads(open(spec_path).read())
    results, report = {}, {"cases": {}, "interpreted": dispatch._triton_module().interpreted()}
    report["process"] = process_report()
    for spec in specs:
        out, info = run_case(spec, tensors)
        report["cases"][spec["name"]] = info
        if out is not None:
            results[spec["name"]] = out.contiguous()
    report["check"] = check.check_against_reference("cpu")
    save_file(results, outputs)
    with open(report_path, "w") as f:
        json.dump(report, f)


if __name__ == "__main__":
    main(*sys.argv[1:5])
