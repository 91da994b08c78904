import importlib.util
import textwrap

import pytest
import torch

from engines import base
from engines.base import EngineError, check_parity, example_inputs
from engines.load import load_engine

has_ort = importlib.util.find_spec("onnxruntime") is not None


@pytest.mark.parametrize(
    "name",
    [
        "eager",
        "torchscript",
        pytest.param(
            "onnxruntime", marks=pytest.mark.skipif(not has_ort, reason="onnxruntime not installed")
        ),
    ],
)
def test_engine_matches_eager(tiny, name):
    engine = load_engine(name, tiny, buckets=(1, 4))  # load_engine ran check_parity already
    assert engine.name == name and engine.dtype == torch.float32
    # compared here, not through check_parity: the model's own network on fresh inputs, batches
    # equal to, between and above the buckets (padded, split)
    for batch in (1, 3, 4, 9):
        inputs = example_inputs(tiny, batch, seed=1000 + batch)
        with torch.inference_mode():
            want = tiny.net(*inputs).double()
        got = engine(*inputs).double()
        assert got.shape == want.shape, (batch, got.shape)
        err = ((got - want).abs().max() / want.abs().max()).item()
        assert err <= base.TOLERANCE[torch.float32], (name, batch, err)
    engine.warmup()


def test_onnxruntime_runs_one_thread_all_optimisations(tiny):
    pytest.importorskip("onnxruntime")
    engine = load_engine("onnxruntime", tiny, buckets=(2,))
    assert engine.providers == ["CPUExecutionProvider"]
    import onnxruntime as ort

    opts = engine.session.get_session_options()
    assert opts.intra_op_num_threads == 1
    assert opts.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL


def test_onnxruntime_releases_its_arena_and_answers_the_same(tiny):
    """release_memory (one smallest-bucket call with arena shrinkage) changes no result, at the largest
    bucket (whose activations it gave back) or the smallest."""
    pytest.importorskip("onnxruntime")
    engine = load_engine("onnxruntime", tiny, buckets=(1, 64))
    big, small = example_inputs(tiny, 64, seed=3), example_inputs(tiny, 1, seed=4)
    want = engine(*big), engine(*small)
    run, asked = engine.session.run, []
    engine.session.run = lambda out, feeds, options=None: (
        asked.append((feeds, options)),
        run(out, feeds, options),
    )[1]
    engine.release_memory()
    ((feeds, options),) = asked  # one call, at the smallest bucket, asking ONNX Runtime to shrink its arena
    assert len(feeds["x"]) == 1
    assert options.get_run_config_entry("memory.enable_memory_arena_shrinkage") == "cpu:0"
    del engine.session.run
    torch.testing.assert_close(engine(*big), want[0], rtol=0, atol=0)
    torch.testing.assert_close(engine(*small), want[1], rtol=0, atol=0)


@pytest.mark.slow
def test_compile_engine_one_bucket(tiny, tmp_path):
    engine = load_engine("compile", tiny, buckets=(2,), cache_dir=tmp_path / "inductor")
    inputs = example_inputs(tiny, 1, seed=7)  # padded to the bucket
    with torch.inference_mode():
        ref = tiny.net(*inputs)
    torch.testing.assert_close(engine(*inputs), ref, rtol=1e-4, atol=1e-5)
    assert any((tmp_path / "inductor").rglob("*")), "compiled artifacts were not cached"


BROKEN = textwrap.dedent("""
    import torch
    from engines.eager import EagerEngine

    class Noisy(EagerEngine):
        # u + scale * max|u|: relative error exactly `scale` (up to float32 rounding of the sum)
        name = "noisy"

        def __call__(self, x, s, t, y):
            u = super().__call__(x, s, t, y)
            return u + self.scale * u.abs().max()

    class NoisyOff(Noisy):
        scale = 1e-2

    class NoisyNaN(Noisy):
        scale = float("nan")

    class NoisyTiny(Noisy):
        scale = 1e-7

    class NoisySmall(Noisy):
        scale = 1e-5

    class OffAtSomeInputs(Noisy):
        # off by 1e-2 where the batch's noise sums above 0: about half the random draws of inputs
        def __call__(self, x, s, t, y):
            self.scale = 1e-2 if x.sum() > 0 else 0.0
            return super().__call__(x, s, t, y)

    class OffAtLargeBatch(Noisy):
        # exact at batch 1, off by 1e-2 from batch 4 on: only the second bucket can catch it
        def __call__(self, x, s, t, y):
            self.scale = 1e-2 if x.shape[0] >= 4 else 0.0
            return super().__call__(x, s, t, y)
""")
BROKEN_CLASSES = ("NoisyOff", "NoisyNaN", "NoisyTiny", "NoisySmall", "OffAtSomeInputs", "OffAtLargeBatch")


@pytest.fixture
def broken(tmp_path, monkeypatch):
    (tmp_path / "broken_engines.py").write_text(BROKEN)
    monkeypatch.syspath_prepend(str(tmp_path))
    for cls in BROKEN_CLASSES:
        monkeypatch.setitem(base.ENGINES, cls, f"broken_engines:{cls}")


@pytest.mark.parametrize(
    "name,match",
    [
        ("NoisyOff", r"at batch 1: relative error 0\.01 > 0\.0001"),
        ("NoisyNaN", "relative error nan"),
        ("OffAtLargeBatch", r"at batch 4: relative error 0\.01 > 0\.0001"),
    ],
)
def test_engine_failing_parity_is_refused(tiny, broken, name, match):
    with pytest.raises(EngineError, match=match) as err:
        load_engine(name, tiny, buckets=(1, 4))
    assert "refusing to serve" in str(err.value)
    load_engine(name, tiny, buckets=(1, 4), parity=False)  # it loads: the refusal is the parity check's


def test_engine_within_tolerance_is_accepted(tiny, broken):
    assert load_engine("NoisyTiny", tiny, buckets=(1, 4)).name == "noisy"


def test_check_parity_reports_the_measured_error(tiny, broken):
    """check_parity compares with eager for real: it returns the error the engine was built to have."""
    engine = load_engine("NoisySmall", tiny, buckets=(1, 4), parity=False)
    assert check_parity(engine, tiny, seed=5) == pytest.approx(1e-5, rel=2e-2)
    exact = load_engine("eager", tiny, buckets=(1, 4))
    assert check_parity(exact, tiny, seed=5) == 0.0


def test_a_model_gets_one_parity_verdict_at_every_start(tiny, broken):
    """The parity inputs' seed is the model's own (`parity_seed`), not a fresh draw: an engine that fails
    at some inputs is refused at every load or at none, never by chance (a pod crash-looping at random)."""
    verdicts = set()
    for _ in range(8):
        try:
            load_engine("OffAtSomeInputs", tiny, buckets=(1, 4))
            verdicts.add("served")
        except EngineError as e:
            verdicts.add(str(e))
            assert f"parity seed {base.parity_seed(tiny)})" in str(e)  # the seed that replays it
    assert len(verdicts) == 1, verdicts
    # and the verdict is the one at that seed; other seeds can decide otherwise (it is the inputs that decide)
    engine = load_engine("OffAtSomeInputs", tiny, buckets=(1, 4), parity=False)
    at_seeds = {}
    for seed in range(base.parity_seed(tiny), base.parity_seed(tiny) + 12):
        try:
            check_parity(engine, tiny, seed=seed)
            at_seeds[seed] = "served"
        except EngineError:
            at_seeds[seed] = "refused"
    assert (at_seeds[base.parity_seed(tiny)] == "served") == (verdicts == {"served"})
    assert set(at_seeds.values()) == {"served", "refused"}, at_seeds


def test_parity_seed_is_per_model(tiny):
    other = type(tiny)(tiny.net, {**tiny.config, "name": "another"}, tiny.path)
    assert base.parity_seed(tiny) == base.parity_seed(type(tiny)(tiny.net, dict(tiny.config), tiny.path))
    assert base.parity_seed(other) != base.parity_seed(tiny)
    assert 0 <= base.parity_seed(tiny) < 2**31
    data = tiny.config["data"]
    as_tuple = type(tiny)(tiny.net, {**tiny.config, "data": {**data, "shape": (1, 2, 2)}}, tiny.path)
    as_list = type(tiny)(tiny.net, {**tiny.config, "data": {**data, "shape": [1, 2, 2]}}, tiny.path)
    assert base.parity_seed(as_tuple) == base.parity_seed(as_list)


UNET_28 = {"name": "unet", "shape": [1, 28, 28], "width": 8, "mults": "1,2,4", "attention": "lowest"}


@pytest.mark.parametrize(
    "name",
    [
        "torchscript",
        pytest.param(
            "onnxruntime", marks=pytest.mark.skipif(not has_ort, reason="onnxruntime not installed")
        ),
    ],
)
def test_mnist_sized_unet_matches_eager(make_checkpoint, tmp_path, name):
    """The multi-resolution U-Net at 28x28 (pooling to 7x7, attention there) through each exporting engine."""
    from flowmap.checkpoint import load_model

    model = load_model(
        str(make_checkpoint(tmp_path / "unet.safetensors", arch={**UNET_28, "num_classes": 10}))
    )
    engine = load_engine(name, model, buckets=(1, 4))
    inputs = example_inputs(model, 3, seed=7)
    with torch.inference_mode():
        want = model.net(*inputs).double()
    err = ((engine(*inputs).double() - want).abs().max() / want.abs().max()).item()
    assert err <= base.TOLERANCE[torch.float32], (name, err)


def test_eager_bf16_computes_in_bf16_and_is_checked_against_float32(tiny, monkeypatch):
    engine = load_engine("eager-bf16", tiny, buckets=(1, 4))  # parity-checked against float32 eager
    assert engine.name == "eager" and engine.dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in tiny.net.parameters())  # weights stay float32 (autocast)
    inputs = example_inputs(tiny, 9, seed=5)
    with torch.inference_mode():
        want = tiny.net(*inputs)
    got = engine(*inputs)
    assert got.dtype == torch.float32
    err = base.relative_error(got, want)
    assert base.TOLERANCE[torch.float32] < err <= base.TOLERANCE[torch.bfloat16], err  # bf16, not float32
    monkeypatch.setitem(base.TOLERANCE, torch.bfloat16, 1e-9)  # the check runs for eager in bf16 too
    with pytest.raises(EngineError, match="fails parity with eager"):
        load_engine("eager-bf16", tiny, buckets=(1,))


@pytest.mark.parametrize(
    "name",
    [
        "torchscript",
        pytest.param(
            "onnxruntime", marks=pytest.mark.skipif(not has_ort, reason="onnxruntime not installed")
        ),
    ],
)
def test_float32_engines_refuse_bf16(tiny, name):
    with pytest.raises(EngineError, match="bf16|bfloat16"):
        load_engine(name, tiny, buckets=(1,), dtype=torch.bfloat16)
