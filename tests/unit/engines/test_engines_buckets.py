import pytest
import torch

from engines.base import bucket_for, example_inputs, run_bucketed
from engines.load import load_engine


def test_bucket_for_picks_smallest_bucket_at_least_batch():
    buckets = (1, 8, 32)
    assert [bucket_for(b, buckets) for b in (1, 2, 8, 9, 32, 40)] == [1, 8, 8, 32, 32, 32]


@pytest.mark.parametrize(
    "batch,calls", [(1, [1]), (3, [4]), (4, [4]), (5, [8]), (9, [8, 1]), (19, [8, 8, 4])]
)
def test_run_bucketed_pads_splits_and_slices(batch, calls):
    seen = []

    def fn(x, s, t, y):  # only bucket sizes allowed; rows must stay independent
        seen.append(x.shape[0])
        assert x.shape[0] in (1, 4, 8) and s.shape == t.shape == y.shape == (x.shape[0],)
        return x * 2 + (s - t)[:, None] + y[:, None]

    x = torch.randn(batch, 3)
    s, t, y = torch.rand(batch), torch.rand(batch), torch.randint(0, 5, (batch,))
    out = run_bucketed(fn, (1, 4, 8), x, s, t, y)
    assert seen == calls
    torch.testing.assert_close(out, x * 2 + (s - t)[:, None] + y[:, None])


@pytest.mark.parametrize("batch", [1, 3, 9])
def test_bucketed_engine_matches_eager_at_any_batch(tiny, batch):
    eager = load_engine("eager", tiny)
    ts = load_engine("torchscript", tiny, buckets=(2, 4))
    inputs = example_inputs(tiny, batch, seed=batch)
    torch.testing.assert_close(ts(*inputs), eager(*inputs), rtol=1e-5, atol=1e-5)


def test_null_label_default(tiny):
    ts = load_engine("torchscript", tiny, buckets=(2,))
    x, s, t, _ = example_inputs(tiny, 2)
    null = torch.full((2,), tiny.num_classes)
    torch.testing.assert_close(ts(x, s, t, None), ts(x, s, t, null))
