import torch

from flowmap.guidance import cfg_mix
from flowmap.teacher import teacher_velocity


def test_cfg_mix_hand_computed():
    u_cond, u_null = torch.tensor([[3.0, 1.0]]), torch.tensor([[1.0, 2.0]])
    # 1 + 2.5 * (3 - 1) = 6, 2 + 2.5 * (1 - 2) = -0.5 (all exact in float32)
    assert cfg_mix(u_cond, u_null, 2.5).tolist() == [[6.0, -0.5]]


def test_cfg_mix_per_sample_scale_expands_to_rank():
    u_cond, u_null = torch.full((3, 1, 2, 2), 4.0), torch.full((3, 1, 2, 2), 1.0)
    out = cfg_mix(u_cond, u_null, torch.tensor([0.0, 1.0, 2.0]))  # w: [B]
    assert out.shape == (3, 1, 2, 2)
    assert out[:, 0, 0, 0].tolist() == [1.0, 4.0, 7.0]  # u_null, u_cond, 1 + 2 * 3


def test_cfg_mix_keeps_the_operation_order():
    u_cond, u_null, w = torch.randn(5, 7), torch.randn(5, 7), torch.rand(5) * 4
    assert torch.equal(cfg_mix(u_cond, u_null, w), u_null + w[:, None] * (u_cond - u_null))


def test_teacher_velocity_guides_labelled_rows_only():
    teacher = lambda x, s, t, y: x * 0 + y.float()[:, None]  # u = label
    x, t, y = torch.zeros(3, 2), torch.rand(3), torch.tensor([1, 4, 10])  # 10: the null label
    out = teacher_velocity(teacher, x, t, y, guidance=3.0, null=10)
    assert out[:, 0].tolist() == [10 + 3 * (1 - 10), 10 + 3 * (4 - 10), 10.0]
