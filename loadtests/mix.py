"""Request mixes for the load tests: weighted entries of steps, samples, classes and SLOs, from TOML or JSON.

    slo_ms = 100                 # default SLO of every entry (ms from scheduled arrival to the answer)
    output = "npy"               # default output ("npy" keeps float samples for scoring; or "png")
    [[request]]
    weight = 3                   # relative frequency
    steps = 4                    # 1..max_steps, or "auto" (the server picks from deadline_ms)
    num_samples = 8
    classes = "cycle"            # "cycle": sample m of the run gets class m % C (balanced, known);
                                 # an int: that class; "server": omitted (the server cycles per request)
    slo_ms = 100                 # optional, per entry
    deadline_ms = 100            # optional; "auto" entries default to their slo_ms

Used by loadtests.openloop, loadtests.sweep and loadtests/locustfile.py (FLOWMAP_LOAD_MIX).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, replace
from pathlib import Path

MIXES = Path(__file__).with_name("mixes")
TOP_KEYS = {"name", "slo_ms", "output", "request"}
KEYS = {"weight", "steps", "num_samples", "classes", "slo_ms", "deadline_ms", "output"}


class MixError(ValueError):
    """A mix file that cannot be used; the message names the file and the field."""


@dataclass(frozen=True)
class Entry:
    weight: float
    steps: int | str  # an int, or "auto"
    num_samples: int
    classes: int | str  # "cycle", "server" or a class index
    slo_ms: float
    deadline_ms: float | None
    output: str

    @property
    def label(self) -> str:
        return f"steps={self.steps}"


@dataclass(frozen=True)
class Mix:
    name: str
    entries: tuple[Entry, ...]

    def draw(self, n: int, rng: random.Random) -> list[int]:
        """n entry indices drawn by weight."""
        return rng.choices(range(len(self.entries)), [e.weight for e in self.entries], k=n)

    def bodies(self, picks: list[int], seed_base: int, num_classes: int) -> list[dict]:
        """The JSON body of each request: seed seed_base + i; "cycle" classes continue across requests."""
        out, m = [], 0
        for i, k in enumerate(picks):
            e = self.entries[k]
            b = {"steps": e.steps, "num_samples": e.num_samples, "seed": seed_base + i, "output": e.output}
            if e.deadline_ms is not None:
                b["deadline_ms"] = e.deadline_ms
            if e.classes == "cycle" and num_classes:
                b["class_label"] = [(m + j) % num_classes for j in range(e.num_samples)]
                m += e.num_samples
            elif isinstance(e.classes, int):
                b["class_label"] = e.classes
            out.append(b)
        return out

    def with_steps(self, steps: int | str, deadline_ms: float | None = None) -> Mix:
        """Every entry at `steps`; an "auto" entry's deadline: `deadline_ms`, else its own, else its SLO."""
        dl = lambda e: (  # noqa: E731
            e.deadline_ms if steps != "auto" else deadline_ms or e.deadline_ms or e.slo_ms
        )
        return Mix(
            f"{self.name}@{steps}", tuple(replace(e, steps=steps, deadline_ms=dl(e)) for e in self.entries)
        )


def load_mix(path: str | Path) -> Mix:
    """A mix from a .toml or .json file (a bare name is looked up in loadtests/mixes/)."""
    p = Path(path)
    if not p.exists() and not p.suffix:
        p = next((MIXES / f"{p.name}{s}" for s in (".toml", ".json") if (MIXES / f"{p.name}{s}").exists()), p)
    if not p.exists():
        raise MixError(f"mix file {str(path)!r} not found")
    text = p.read_text()
    try:
        raw = json.loads(text) if p.suffix == ".json" else _toml(text)
    except ValueError as e:
        raise MixError(f"mix file {p}: cannot parse: {e}") from None
    return parse_mix(raw, p.stem, str(p))


def _toml(text: str) -> dict:
    import tomllib  # Python 3.11+; JSON mixes work everywhere

    return tomllib.loads(text)


def parse_mix(raw: dict, name: str = "mix", where: str = "mix") -> Mix:
    reqs = raw.get("request") if isinstance(raw, dict) else None
    if not isinstance(reqs, list) or not reqs:
        raise MixError(f"{where}: needs at least one [[request]] entry")
    unknown = set(raw) - TOP_KEYS
    if unknown:
        raise MixError(f"{where}: unknown top-level field(s) {sorted(unknown)}; known: {sorted(TOP_KEYS)}")
    defaults = {"slo_ms": raw.get("slo_ms", 100.0), "output": raw.get("output", "npy")}
    return Mix(
        raw.get("name", name),
        tuple(_entry(r, defaults, f"{where}: request {i + 1}") for i, r in enumerate(reqs)),
    )


def _entry(r: dict, defaults: dict, where: str) -> Entry:
    if not isinstance(r, dict):
        raise MixError(f"{where}: must be a table")
    unknown = set(r) - KEYS
    if unknown:
        raise MixError(f"{where}: unknown field(s) {sorted(unknown)}; known: {sorted(KEYS)}")
    e = Entry(
        weight=_num(r.get("weight", 1.0), "weight", where),
        steps=_steps(r.get("steps", 1), where),
        num_samples=_int(r.get("num_samples", 1), "num_samples", where),
        classes=_classes(r.get("classes", "cycle"), where),
        slo_ms=_num(r.get("slo_ms", defaults["slo_ms"]), "slo_ms", where),
        deadline_ms=None if r.get("deadline_ms") is None else _num(r["deadline_ms"], "deadline_ms", where),
        output=r.get("output", defaults["output"]),
    )
    if e.output not in ("npy", "png"):
        raise MixError(f"{where}: output must be 'npy' or 'png', got {e.output!r}")
    if e.steps == "auto" and e.deadline_ms is None:
        e = replace(e, deadline_ms=e.slo_ms)
    return e


def _num(v, key: str, where: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
        raise MixError(f"{where}: {key} must be a number > 0, got {v!r}")
    return float(v)


def _int(v, key: str, where: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise MixError(f"{where}: {key} must be an integer >= 1, got {v!r}")
    return v


def _steps(v, where: str) -> int | str:
    return v if v == "auto" else _int(v, "steps", where)


def _classes(v, where: str) -> int | str:
    if v in ("cycle", "server") or (isinstance(v, int) and not isinstance(v, bool) and v >= 0):
        return v
    raise MixError(f"{where}: classes must be 'cycle', 'server' or a class index >= 0, got {v!r}")
