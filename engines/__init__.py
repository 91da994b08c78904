"""Engines: compiled runtimes of a flow map behind one tiny protocol, chosen by name."""

from engines.artifacts import load_artifact
from engines.base import ENGINES, Engine, EngineError, default_engine, example_inputs
from engines.load import load_engine

__all__ = [
    "ENGINES",
    "Engine",
    "EngineError",
    "default_engine",
    "example_inputs",
    "load_artifact",
    "load_engine",
]
