"""Settings: flags and FLOWMAP_* variables, range checks, and the `serve` command's one-line errors."""

from __future__ import annotations

import argparse

import pytest

from server.cli import FLAGS, register, serve, settings_from
from server.common.settings import ServerSettings


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    return parser.parse_args(["serve", *argv])


def test_every_setting_has_a_flag_and_a_description():
    fields = ServerSettings.model_fields
    assert {dest for dest, _, _ in FLAGS.values()} == set(fields)
    assert all(f.description for f in fields.values())


def test_defaults():
    s = ServerSettings()
    assert (s.models, s.host, s.port, s.api_key) == (["mnist", "digits"], "127.0.0.1", 8000, None)


def test_flags_override_environment(monkeypatch):
    monkeypatch.setenv("FLOWMAP_MAX_BATCH_SIZE", "16")
    monkeypatch.setenv("FLOWMAP_MODELS", "digits, gmm8")
    monkeypatch.setenv("FLOWMAP_API_KEY", "k")
    s = settings_from(parse(["--port", "9000"]))
    assert (s.max_batch_size, s.port, s.models, s.key()) == (16, 9000, ["digits", "gmm8"], "k")
    s = settings_from(parse(["--max-batch-size", "8", "--model", "a.safetensors", "--model", "gmm8"]))
    assert s.max_batch_size == 8 and s.models == ["a.safetensors", "gmm8"]


@pytest.mark.parametrize(
    "argv,field",
    [
        (["--max-batch-size", "0"], "max_batch_size"),
        (["--port", "70000"], "port"),
        (["--default-steps", "9", "--max-steps", "4"], "default_steps"),
        (["--device", "tpu"], "device"),
        (["--batching", "magic"], "batching"),
    ],
)
def test_out_of_range_names_the_field(argv, field):
    with pytest.raises(ValueError, match=field):
        settings_from(parse(argv))


def test_serve_reports_one_line_errors(capsys, tmp_path):
    assert serve(parse(["--max-queue", "0"])) == 2
    assert serve(parse(["--model", str(tmp_path / "missing.safetensors")])) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "max_queue" in err[0] and "missing.safetensors" in err[1]


def test_precision_bf16_serves_the_eager_variant_and_refuses_float32_engines():
    from engines import EngineError
    from flowmap.checkpoint import load_model
    from server.core_process.build import pick_engine

    model = load_model("digits")
    assert pick_engine(ServerSettings(precision="bf16"), "cpu", model) == "eager-bf16"
    assert pick_engine(ServerSettings(precision="bf16", engine="eager"), "cpu", model) == "eager-bf16"
    with pytest.raises(EngineError, match="--precision bf16 runs on the eager engine"):
        pick_engine(ServerSettings(precision="bf16", engine="onnxruntime"), "cpu", model)
    with pytest.raises(ValueError, match="precision"):
        ServerSettings(precision="fp8")


def test_models_list_shows_the_precision():
    import dataclasses

    from server.api_process.app import model_info
    from server.common.spec import ModelSpec

    spec = ModelSpec(name="m", shape=[1, 28, 28], num_classes=10, image=True, engine="eager", device="cpu")
    assert model_info(spec).precision == "fp32"
    spec = dataclasses.replace(spec, precision="bf16")
    assert model_info(spec).model_dump()["precision"] == "bf16"
