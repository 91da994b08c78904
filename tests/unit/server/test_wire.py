"""server.common.messages: the typed records (ModelSpec, CoreState) survive the wire, and a malformed one
is refused as a WireError, never let through as a dict."""

import pytest

from server.common import messages as m
from server.common.spec import ModelSpec

SPEC = ModelSpec(
    name="digits",
    shape=[1, 8, 8],
    num_classes=10,
    image=True,
    engine="onnxruntime",
    device="cpu",
    baked_guidance_scale=1.5,
    method="esd",
    samplers=["flowmap", "consistency"],
    default_sampler="flowmap",
)


def test_ready_and_core_states_carry_the_model_spec():
    ready = m.decode(m.encode(m.Ready(index=0, pid=42, info=SPEC)))
    assert ready == m.Ready(index=0, pid=42, info=SPEC) and isinstance(ready.info, ModelSpec)
    states = m.CoreStates([m.CoreState(up=True, generation=2, info=SPEC), m.CoreState()], draining=True)
    back = m.decode(m.encode(states))
    assert back == states and back.cores[0].info == SPEC and back.cores[1].info is None


@pytest.mark.parametrize("info", [{"name": "x"}, {**vars(SPEC), "extra": 1}, ["digits"], 7])
def test_a_malformed_model_spec_is_a_wire_error(info):
    frame = m.msgpack.packb([m.Ready.TAG, 0, 1, info])
    with pytest.raises(m.WireError):
        m.decode(frame)


def test_a_cancel_carries_when_it_was_sent_and_an_older_frame_still_decodes():
    assert m.decode(m.encode(m.Cancel(7, 123.5))) == m.Cancel(id=7, sent=123.5)
    assert m.decode(m.msgpack.packb([m.Cancel.TAG, 7])) == m.Cancel(id=7, sent=0.0)


def test_the_cancel_to_free_times_become_a_histogram(monkeypatch):
    from server.common.metrics import Metrics
    from server.common.stats import IterationStats

    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)  # this process's registry alone
    metrics = Metrics()
    metrics.iteration(IterationStats("mnist", 8, 8, 0.025, 0, 4, freed=[0.012, 0.030]))
    text = metrics.render().decode()
    assert 'flowmap_cancel_free_seconds_count{model="mnist"} 2.0' in text
    assert 'flowmap_cancel_free_seconds_bucket{le="0.015",model="mnist"} 1.0' in text
