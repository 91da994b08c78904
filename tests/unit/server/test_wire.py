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
