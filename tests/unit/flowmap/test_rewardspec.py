"""flowmap.rewardspec: the library and the server's steer check accept and refuse the same reward specs."""

import pytest

from flowmap.reward import RewardError, make_reward
from server.common.steer import SteerError, check_reward

SHAPES = ([1, 8, 8], [2], [3, 4, 4])
SPECS = ["class:0", "class:9", "class:10", "class:x", "class: 7", "class:+7", "class:٧", "class", "class:",
         "mode:0", "mode:7", "mode:8", "mode:-1", "ink", "ink:", "ink:2", "nope", "pkg.mod:fn"]  # fmt: skip


def library_accepts(spec: str, shape: list[int]) -> bool:
    try:
        make_reward(spec, shape)
    except RewardError:
        return False
    return True


def server_accepts(spec: str, shape: list[int]) -> bool:
    try:
        check_reward(spec, shape, user_rewards=[])
    except SteerError:
        return False
    return True


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("spec", SPECS)
def test_the_library_and_the_server_agree_on_every_spec(spec, shape):
    """(A user reward the operator did not list, or one that does not import, is refused by both.)"""
    assert library_accepts(spec, shape) == server_accepts(spec, shape), (spec, shape)


@pytest.mark.parametrize("spec", ["class: 7", "class:+7", "class:٧", "mode:-1"])
def test_arguments_are_ascii_digits_only(spec):
    with pytest.raises(RewardError, match="is not an integer"):
        make_reward(spec, None)
