from flowmap.checkpoint import load_model
from flowmap.cli import main
from flowmap.generate import generate_seeded


def test_labels_drop_trains_an_unconditional_model_on_digits(tmp_path, capsys):
    out = tmp_path / "u.safetensors"
    argv = ["train", "--data", "digits", "--method", "fm", "--steps", "3", "--width", "32", "--depth", "1"]
    assert main(argv + ["--labels", "drop", "--out", str(out), "--no-progress"]) == 0
    model = load_model(str(out))
    assert model.num_classes == 0 and model.config["data"]["name"] == "digits"
    assert model.net.cond.label is None  # no label embedding at all
    assert generate_seeded(model, 1, 4, seed=0).shape == (4, 1, 8, 8)
    assert main(argv + ["--labels", "maybe", "--out", str(tmp_path / "x.safetensors")]) == 2
    assert "labels must be use or drop" in capsys.readouterr().err
