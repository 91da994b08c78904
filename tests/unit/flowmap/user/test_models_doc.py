"""docs/models.md's copy-paste example is at most 30 lines, imports nothing from flowmap, and serves as
written; the spec type imports no torch."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import torch

from flowmap.checkpoint import load_model
from flowmap.generate import generate_seeded
from tests.unit.server.inprocess import serve

DOC = Path(__file__).resolve().parents[4] / "docs" / "models.md"


def example() -> str:
    text = DOC.read_text().split("## The example", 1)[1]
    return re.search(r"```python\n(.*?)```", text, re.S).group(1)


def test_the_example_is_short_and_needs_no_flowmap():
    code = example()
    assert len(code.strip().splitlines()) <= 30 and "flowmap" not in code.replace("# mymodel.py", "")


def test_the_example_samples_and_serves(tmp_path, monkeypatch):
    (tmp_path / "mymodel.py").write_text(example())
    monkeypatch.syspath_prepend(str(tmp_path))
    model = load_model("mymodel:make")
    assert (model.name, model.shape, model.num_classes) == ("make", [2], 10)
    x = generate_seeded(model, 2, 16, 0, guidance=1.5)
    assert x.shape == (16, 2) and bool(torch.isfinite(x).all())
    _, client, http = serve("mymodel:make")
    import asyncio

    r = asyncio.run(
        http.post("/v1/generate", json={"steps": 2, "num_samples": 4, "seed": 1, "output": "npy"})
    )
    assert r.status_code == 200, r.text


def test_the_spec_type_imports_no_torch():
    code = "import sys; from flowmap.user import UserSpec; assert 'torch' not in sys.modules, 'torch'"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
