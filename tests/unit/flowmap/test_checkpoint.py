import json

import pytest
import torch
from safetensors.torch import save_file

from flowmap.checkpoint import CheckpointError, load_checkpoint, load_model, save_checkpoint
from flowmap.nets import build_net

ARCH = {"name": "mlp", "shape": [2], "width": 16, "depth": 1, "num_classes": 0}
CONFIG = {"arch": ARCH, "data": {"name": "gmm8", "shape": [2], "num_classes": 0}, "method": "fm"}


def test_round_trip(tmp_path):
    net = build_net(ARCH)
    save_checkpoint(tmp_path / "m.safetensors", net, CONFIG)
    m = load_checkpoint(tmp_path / "m.safetensors")
    assert m.config == CONFIG and m.shape == [2] and m.num_classes == 0
    x, s, t = torch.randn(4, 2), torch.ones(4), torch.zeros(4)
    assert torch.equal(m.net(x, s, t), net.eval()(x, s, t))
    assert not list(tmp_path.glob("*.tmp"))


def test_refuses_missing_and_corrupt(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "absent.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    with pytest.raises(CheckpointError, match="bad.safetensors: not a valid"):
        load_checkpoint(bad)
    good = tmp_path / "good.safetensors"
    save_checkpoint(good, build_net(ARCH), CONFIG)
    truncated = tmp_path / "trunc.safetensors"
    truncated.write_bytes(good.read_bytes()[:-50])
    with pytest.raises(CheckpointError, match="trunc.safetensors"):
        load_checkpoint(truncated)


def test_refuses_config_that_does_not_match_tensors(tmp_path):
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, build_net(ARCH), CONFIG | {"arch": ARCH | {"width": 32}})
    with pytest.raises(CheckpointError, match="has shape .* config implies"):
        load_checkpoint(path)
    save_checkpoint(path, build_net(ARCH), CONFIG | {"arch": ARCH | {"depth": 2}})
    with pytest.raises(CheckpointError, match="missing"):
        load_checkpoint(path)


def test_refuses_foreign_safetensors(tmp_path):
    path = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, str(path), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="not a flowmap checkpoint"):
        load_checkpoint(path)
    save_file({"w": torch.zeros(2)}, str(path), metadata={"format": "flowmap/1", "config": "{oops"})
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_checkpoint(path)
    save_file(
        {"w": torch.zeros(2)}, str(path), metadata={"format": "flowmap/1", "config": json.dumps({"x": 1})}
    )
    with pytest.raises(CheckpointError, match="lacks 'arch'"):
        load_checkpoint(path)


def test_unknown_model_name():
    with pytest.raises(CheckpointError, match="unknown model 'nope'"):
        load_model("nope")


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_refuses_non_finite_weights_naming_the_tensor(tmp_path, bad, capsys):
    from flowmap.cli import main

    net = build_net(ARCH)
    name = list(net.state_dict())[-1]
    with torch.no_grad():
        net.state_dict()[name].view(-1)[0] = bad
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, net, CONFIG)
    with pytest.raises(CheckpointError, match=rf"m.safetensors: tensor '{name}' holds 1 NaN/inf value"):
        load_checkpoint(path)
    assert main(["sample", "--model", str(path), "--out", str(tmp_path / "x.npy")]) == 2
    assert f"tensor '{name}'" in capsys.readouterr().err and not (tmp_path / "x.npy").exists()
