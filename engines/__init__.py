"""Engines: compiled runtimes of a flow map behind one tiny protocol, chosen by name."""

from engines.base import ENGINES, Engine, EngineError, load_engine

__all__ = ["ENGINES", "Engine", "EngineError", "load_engine"]
