"""Deployable artifacts: `flowmap export` writes one (TorchScript .pt, ONNX .onnx, TensorRT .plan) plus a
sidecar `<artifact>.json` with the checkpoint's config, the sha256 of the source checkpoint and of
the artifact, and a probe (eager outputs on fixed inputs). Loading verifies the checksum and the
config BEFORE the file is parsed (TorchScript archives run code when loaded: only load artifacts
from a trusted export), then checks the engine against the probe, or against eager when the
checkpoint is given.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

import torch

from engines.base import (
    DEFAULT_BUCKETS,
    TOLERANCE,
    EngineError,
    check_parity,
    engine_class,
    example_inputs,
    relative_error,
)
from flowmap.checkpoint import Model, atomic_write

FORMAT = "flowmap-artifact/1"
SUFFIX = {"torchscript": ".pt", "onnxruntime": ".onnx", "tensorrt": ".plan"}
EXTRA = "flowmap.json"  # config inside the artifact: TorchScript extra file / ONNX metadata key
PROBE_SEED, PROBE_VALUES = 1234, 4096


def sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def source_digest(model: Model) -> str:
    """sha256 of the model's file; a user's factory model (no file) by its config: its behaviour is then
    covered by the parity check against eager when the artifact is loaded for it."""
    if Path(model.path).is_file():
        return sha256(model.path)
    return hashlib.sha256(canonical(model.config).encode()).hexdigest()


def sidecar(path: str | Path) -> Path:
    return Path(f"{path}.json")


def canonical(config: dict) -> str:
    return json.dumps(config, sort_keys=True, separators=(",", ":"))


def _probe(model: Model) -> dict:
    """Eager outputs on fixed inputs (seed, batch): what a loaded artifact must reproduce."""
    batch = max(1, min(4, PROBE_VALUES // max(1, int(torch.Size(model.shape).numel()))))
    with torch.inference_mode():
        u = model.net.cpu().eval()(*example_inputs(model, batch, seed=PROBE_SEED))
    return {"seed": PROBE_SEED, "batch": batch, "u": [float(v) for v in u.flatten()]}


def _payload_torchscript(model: Model, embedded: str, device: str, buckets, dtype) -> bytes:
    import io

    from engines.torchscript import trace

    buf = io.BytesIO()
    torch.jit.save(trace(model, "cpu"), buf, _extra_files={EXTRA: embedded})
    return buf.getvalue()


def _payload_onnx(model: Model, embedded: str, device: str, buckets, dtype) -> bytes:
    from engines.onnx_export import export_onnx

    return export_onnx(model, metadata={EXTRA: embedded})


def _payload_tensorrt(model: Model, embedded: str, device: str, buckets, dtype) -> bytes:
    from engines.onnx_export import export_onnx
    from engines.trt import build_plan, import_trt

    import_trt()
    return build_plan(export_onnx(model), tuple(sorted(buckets)), fp16=dtype == torch.float16)


PAYLOADS = {"torchscript": _payload_torchscript, "onnxruntime": _payload_onnx, "tensorrt": _payload_tensorrt}


def export_artifact(
    model: Model,
    engine: str,
    out: str | Path,
    device: str = "cpu",
    buckets=DEFAULT_BUCKETS,
    dtype=torch.float32,
) -> Path:
    """Write the artifact for `engine` to `out` and its sidecar `out.json`; returns `out`."""
    if engine not in PAYLOADS:
        raise EngineError(f"engine {engine!r} has no exportable artifact; choose one of {sorted(PAYLOADS)}")
    out = Path(out)
    if out.suffix != SUFFIX[engine]:
        raise EngineError(f"{out}: a {engine} artifact must end in {SUFFIX[engine]}")
    embedded = canonical({"config": model.config, "source_sha256": source_digest(model)})
    data = PAYLOADS[engine](model, embedded, device, buckets, dtype)
    atomic_write(out, lambda tmp: Path(tmp).write_bytes(data))
    meta = {
        "format": FORMAT,
        "engine": engine,
        "model": model.name,
        "config": model.config,
        "source": str(model.path),
        "source_sha256": source_digest(model),
        "artifact_sha256": sha256(out),
        "buckets": sorted(buckets),
        "dtype": str(dtype).removeprefix("torch."),
        "versions": {"torch": torch.__version__},
        "probe": _probe(model),
    }
    if engine == "tensorrt":
        meta["versions"]["tensorrt"] = __import__("tensorrt").__version__
    atomic_write(sidecar(out), lambda tmp: Path(tmp).write_text(json.dumps(meta, indent=1)))
    return out


def read_sidecar(path: Path) -> dict:
    side = sidecar(path)
    if not path.is_file():
        raise EngineError(f"{path}: no such artifact")
    if not side.is_file():
        raise EngineError(f"{path}: missing {side.name} (config and checksum); re-export with flowmap export")
    try:
        meta = json.loads(side.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise EngineError(f"{side}: not valid JSON ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise EngineError(f"{side}: not a flowmap artifact sidecar (format {FORMAT!r} expected)")
    return meta


def embedded_config(path: Path, engine: str) -> str | None:
    """The config JSON stored inside the artifact, read without running any of its code."""
    if engine == "torchscript":
        with zipfile.ZipFile(path) as z:
            names = [n for n in z.namelist() if n.endswith(f"/extra/{EXTRA}")]
            return z.read(names[0]).decode() if names else None
    if engine == "onnxruntime":
        from engines.onnx_export import onnx_metadata

        return onnx_metadata(path.read_bytes()).get(EXTRA)
    return None  # a TensorRT plan has no metadata; the sidecar checksum covers it


def verify(path: str | Path, model: Model | None = None) -> dict:
    """Sidecar metadata of a checked artifact; EngineError naming the mismatch otherwise."""
    path = Path(path)
    meta = read_sidecar(path)
    if sha256(path) != meta.get("artifact_sha256"):
        raise EngineError(
            f"{path}: checksum mismatch (sha256 differs from {sidecar(path).name}); "
            "the file was modified or is not the exported artifact; refusing to load"
        )
    try:
        inside = embedded_config(path, meta.get("engine"))
    except (zipfile.BadZipFile, OSError, KeyError, ValueError) as e:
        raise EngineError(f"{path}: cannot read the embedded config ({e})") from None
    expect = canonical({"config": meta.get("config"), "source_sha256": meta.get("source_sha256")})
    if inside is not None and inside != expect:
        raise EngineError(f"{path}: config inside the artifact does not match {sidecar(path).name}")
    if model is not None and canonical(model.config) != canonical(meta["config"]):
        raise EngineError(f"{path}: exported from a model with a different config than {model.path}")
    if model is not None and source_digest(model) != meta["source_sha256"]:
        raise EngineError(f"{path}: exported from a different checkpoint than {model.path} (sha256 differs)")
    return meta


def _payload_kwargs(path: Path, engine: str, device: str) -> dict:
    if engine == "torchscript":  # runs code from the archive: only after verify() passed
        return {"module": torch.jit.load(str(path), map_location=device)}
    if engine == "onnxruntime":
        return {"onnx_bytes": path.read_bytes()}
    return {"plan": path.read_bytes()}


def check_probe(engine, stub: Model, probe: dict) -> float:
    """The engine must reproduce the eager outputs recorded at export."""
    inputs = example_inputs(stub, probe["batch"], engine.device, seed=probe["seed"])
    ref = torch.tensor(probe["u"]).reshape(probe["batch"], *stub.shape)
    err = relative_error(engine(*inputs), ref)
    tol = TOLERANCE.get(engine.dtype, 1e-4)
    if not err <= tol:
        raise EngineError(
            f"artifact engine {engine.name!r} does not reproduce its export-time outputs: "
            f"relative error {err:.3g} > {tol:g}; refusing to serve"
        )
    return err


def load_artifact(path: str | Path, model: Model | None = None, device: str = "cpu", buckets=None, **options):
    """Verify, then load an exported artifact as an engine (parity against eager when `model` is given)."""
    path = Path(path)
    meta = verify(path, model)
    engine_name = meta["engine"]
    buckets = tuple(meta["buckets"]) if engine_name == "tensorrt" or not buckets else tuple(buckets)
    stub = model or Model(net=None, config=meta["config"], path=path)
    dtype = getattr(torch, meta.get("dtype", "float32"))
    kwargs = _payload_kwargs(path, engine_name, device)
    engine = engine_class(engine_name)(stub, device=device, buckets=buckets, dtype=dtype, **kwargs, **options)
    check_probe(engine, stub, meta["probe"])
    if model is not None:
        check_parity(engine, model)
    return engine
