"""--precision auto's engine: two engines, each call sent to the one faster at its batch bucket."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from engines.by_rows import ByRows, pick_by_bucket
from engines.load import load_engine

BUCKETS = (1, 8, 32)


class Fake:
    """An engine that records the batch sizes it ran and answers u = x * mark."""

    def __init__(self, mark: float, dtype=torch.float32, seconds=None):
        self.mark, self.dtype, self.device, self.calls = mark, dtype, torch.device("cpu"), []
        self.seconds = seconds or {}
        self.warmed = False

    def __call__(self, x, s, t, y):
        self.calls.append(x.shape[0])
        return x * self.mark

    def warmup(self):
        self.warmed = True


def test_pick_keeps_the_first_engine_unless_another_is_clearly_faster():
    costs = {"onnxruntime": {1: 4.8, 8: 31.0, 32: 126.0}, "eager-bf16": {1: 8.8, 8: 25.6, 32: 87.0}}
    assert pick_by_bucket(costs) == {1: "onnxruntime", 8: "eager-bf16", 32: "eager-bf16"}
    # within the 10% margin: the float32 reference keeps the bucket (timing noise cannot flip it)
    close = {"onnxruntime": {1: 10.0, 8: 10.0}, "eager-bf16": {1: 9.5, 8: 8.9}}
    assert pick_by_bucket(close) == {1: "onnxruntime", 8: "eager-bf16"}
    assert pick_by_bucket({"onnxruntime": {1: 1.0}}) == {1: "onnxruntime"}  # alone: always itself


def test_calls_go_to_the_engine_chosen_for_their_bucket():
    fp32, bf16 = Fake(1.0), Fake(2.0, torch.bfloat16)
    eng = ByRows({"onnxruntime": fp32, "eager-bf16": bf16}, BUCKETS)
    assert eng.precision() == "auto: fp32" and eng.name == "onnxruntime+eager-bf16"
    eng.choice = {1: "onnxruntime", 8: "eager-bf16", 32: "eager-bf16"}
    for n in (1, 2, 8, 9, 32, 40):  # 2 -> bucket 8, 9 -> 32, 40 (past the largest) -> 32
        x = torch.ones(n, 3)
        out = eng(x, torch.ones(n), torch.zeros(n), torch.zeros(n, dtype=torch.long))
        assert out.shape == x.shape
    assert fp32.calls == [1] and bf16.calls == [2, 8, 9, 32, 40]
    assert eng.precision() == "auto: fp32 below 8 rows, bf16 from 8 rows"
    eng.warmup()
    assert fp32.warmed and bf16.warmed


def test_choose_times_both_engines_at_every_bucket_and_routes_by_it(tiny, monkeypatch):
    import engines.by_rows as by_rows

    fp32, bf16 = Fake(1.0), Fake(2.0, torch.bfloat16)
    timed = []

    def fake_time(engine, inputs, reps=3):
        n = inputs[0].shape[0]
        timed.append((engine.mark, n))
        return {1: 1.0, 8: 8.0, 32: 32.0}[n] * (0.5 if engine is bf16 and n >= 8 else 1.0)

    monkeypatch.setattr(by_rows, "time_call", fake_time)
    eng = ByRows({"onnxruntime": fp32, "eager-bf16": bf16}, BUCKETS)
    assert eng.choose(tiny) == {1: "onnxruntime", 8: "eager-bf16", 32: "eager-bf16"}
    assert sorted(timed) == [(1.0, 1), (1.0, 8), (1.0, 32), (2.0, 1), (2.0, 8), (2.0, 32)]
    assert eng.costs["eager-bf16"][8] == 4.0


def test_real_engines_choose_by_measured_time_and_agree_with_float32(tiny):
    """Eager float32 and eager-bf16 on the tiny model: whatever the timing picks, every bucket answers
    within the bf16 tolerance of float32."""
    pair = {
        "eager": load_engine("eager", tiny, buckets=BUCKETS),
        "eager-bf16": load_engine("eager-bf16", tiny, buckets=BUCKETS),
    }
    eng = ByRows(pair, BUCKETS)
    choice = eng.choose(tiny, reps=2)
    assert set(choice) == set(BUCKETS) and set(choice.values()) <= set(pair)
    assert all(eng.costs[n][b] > 0 for n in pair for b in BUCKETS)
    x = torch.randn(8, *tiny.shape)
    s, t, y = torch.full((8,), 0.9), torch.full((8,), 0.1), torch.arange(8)
    with torch.inference_mode():
        ref, out = pair["eager"](x, s, t, y), eng(x, s, t, y)
    assert float((out - ref).abs().max() / ref.abs().max()) <= 3e-2


def test_auto_precision_pairs_the_float32_engine_with_bf16_in_the_core(tiny_path):
    from server.common.settings import ServerSettings
    from server.core_process.build import build_core, precision_of, warm_up

    settings = ServerSettings(device="cpu", engine="eager", precision="auto", max_batch_size=8)
    core, model, spec = build_core(str(tiny_path), settings)
    engine = core.executor.engine
    assert isinstance(engine, ByRows) and list(engine.engines) == ["eager", "eager-bf16"]
    assert spec.engine == "eager+eager-bf16" and spec.precision == "auto: fp32"  # before the timing
    warm_up(core, model, settings)
    assert set(engine.costs) == {"eager", "eager-bf16"} and set(engine.costs["eager"]) == {1, 2, 4, 8}
    assert engine.choice == pick_by_bucket(engine.costs)  # routed by what the warm-up measured
    assert precision_of(engine) == engine.precision()


def test_auto_serves_float32_alone_when_bf16_cannot_be_built(tiny_path, monkeypatch):
    import engines
    from server.common.settings import ServerSettings
    from server.core_process.build import build_core, precision_of, warm_up

    real = engines.load_engine

    def refuse_bf16(name, *a, **k):
        if name == "eager-bf16":
            raise TypeError("this model's forward takes no autocast")  # not an EngineError: still caught
        return real(name, *a, **k)

    monkeypatch.setattr(engines, "load_engine", refuse_bf16)
    settings = ServerSettings(device="cpu", engine="eager", precision="auto", max_batch_size=8)
    core, model, spec = build_core(str(tiny_path), settings)
    engine = core.executor.engine
    assert list(engine.engines) == ["eager"] and spec.engine == "eager"
    warm_up(core, model, settings)
    assert engine.costs == {} and precision_of(engine) == "auto: fp32"  # nothing to choose: not timed


def test_bf16_and_auto_on_a_users_onnx_file():
    from engines import EngineError
    from server.common.settings import ServerSettings
    from server.core_process.build import pick_engine

    model = SimpleNamespace(config={"arch": {"user": "models/net.onnx"}}, path="models/net.onnx")
    with pytest.raises(EngineError, match="cannot reach into a user's ONNX file"):
        pick_engine(ServerSettings(precision="bf16"), "cpu", model)
    assert pick_engine(ServerSettings(precision="auto"), "cpu", model) == "eager"  # with_bf16 then adds none


def test_channels_last_leaves_the_shared_net_alone(make_checkpoint, tmp_path):
    """An engine's channels-last copy must not restride the model's net, which the other engines built on
    the same model (a compiled one, under --precision auto) still run."""
    from flowmap.checkpoint import load_model

    arch = {"name": "unet", "shape": [1, 8, 8], "width": 8, "num_classes": 10}
    model = load_model(str(make_checkpoint(tmp_path / "unet.safetensors", arch=arch)))
    before = [p.stride() for p in model.net.parameters()]
    eng = load_engine("eager", model, buckets=BUCKETS, channels_last=True)
    assert eng.channels_last and any(
        p.stride() != q for p, q in zip(eng.net.parameters(), before, strict=True)
    )
    assert [p.stride() for p in model.net.parameters()] == before


def test_auto_refuses_a_precision_variant_as_its_float32_engine():
    from engines import EngineError
    from server.common.settings import ServerSettings
    from server.core_process.build import pick_engine

    model = SimpleNamespace(config={}, path="x.safetensors")
    with pytest.raises(EngineError, match="--precision auto pairs a float32 engine"):
        pick_engine(ServerSettings(precision="auto", engine="eager-bf16"), "cpu", model)
    assert pick_engine(ServerSettings(precision="auto", engine="onnxruntime"), "cpu", model) == "onnxruntime"
