import pytest
import torch

from flowmap.checkpoint import load_model, save_checkpoint
from flowmap.nets import build_net

ARCH = {"name": "mlp", "shape": [1, 8, 8], "width": 32, "depth": 1, "num_classes": 10, "emb": 16}


def make_checkpoint(path, seed: int = 0, arch: dict = ARCH):
    """A tiny class-conditional digits-shaped checkpoint (random weights)."""
    torch.manual_seed(seed)
    net = build_net(arch)
    config = {
        "name": "tiny",
        "arch": arch,
        "data": {"name": "digits", "shape": arch["shape"], "num_classes": arch["num_classes"]},
    }
    save_checkpoint(path, net, config)
    return path


@pytest.fixture(name="make_checkpoint")
def make_checkpoint_fixture():
    return make_checkpoint


@pytest.fixture(scope="session")
def tiny_path(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.safetensors")


@pytest.fixture
def tiny(tiny_path):
    return load_model(str(tiny_path))


@pytest.fixture(autouse=True)
def cache_dir(tmp_path_factory, monkeypatch):
    """Compiled caches go to a per-session temp folder, never the user's home."""
    monkeypatch.setenv("FLOWMAP_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "flowmap-cache"))
