"""Engines: compiled runtimes of a flow map behind one tiny protocol, chosen by name."""

from engines.base import ENGINES, Engine, EngineError, default_engine, example_inputs, load_engine


def load_artifact(path, model=None, device="cpu", buckets=None, **options):
    """Verify and load an exported artifact (see engines.artifacts.load_artifact)."""
    from engines.artifacts import load_artifact as load

    return load(path, model=model, device=device, buckets=buckets, **options)


__all__ = [
    "ENGINES",
    "Engine",
    "EngineError",
    "default_engine",
    "example_inputs",
    "load_artifact",
    "load_engine",
]
