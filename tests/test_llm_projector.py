"""MoE / MLP projectors: shapes, hand-computed router and load-balancing values, top-k, gradients."""

import math

import pytest
import torch

from amfrec.model.projector import MLPProjector, MoEProjector


def _uniform_router(p: MoEProjector) -> None:
    with torch.no_grad():
        p.router.weight.zero_()
        p.router.bias.zero_()


def test_mlp_projector_shape_and_form():
    torch.manual_seed(0)
    proj = MLPProjector(5, 7, 3)
    x = torch.randn(4, 5)
    want = proj.fc2(torch.nn.functional.gelu(proj.fc1(x)))
    assert proj(x).shape == (4, 3)
    torch.testing.assert_close(proj(x), want)


def test_moe_shapes():
    proj = MoEProjector(6, 8, 5, n_experts=4)
    out, aux, probs = proj(torch.randn(10, 6))
    assert out.shape == (10, 5) and aux.shape == () and probs.shape == (10, 4)
    torch.testing.assert_close(probs.sum(-1), torch.ones(10))


def test_uniform_router_switch_aux_is_one_and_output_is_expert_mean():
    torch.manual_seed(0)
    proj = MoEProjector(6, 8, 5, n_experts=4)
    _uniform_router(proj)
    x = torch.randn(10, 6)
    out, aux, probs = proj(x)
    torch.testing.assert_close(probs, torch.full((10, 4), 0.25))
    assert aux.item() == pytest.approx(1.0)
    # dense mixture of equal weights = the mean of the experts, each computed the slow way
    experts = [
        torch.nn.functional.gelu(x @ proj.w1[k] + proj.b1[k]) @ proj.w2[k] + proj.b2[k] for k in range(4)
    ]
    torch.testing.assert_close(out, torch.stack(experts).mean(0))


def test_switch_aux_hand_case_collapsed_router():
    # Router sends every row to expert 2 with probability q: f = (0,0,1,0), p_2 = q -> aux = K * q
    proj = MoEProjector(3, 4, 2, n_experts=4)
    with torch.no_grad():
        proj.router.weight.zero_()
        proj.router.bias.copy_(torch.tensor([0.0, 0.0, math.log(6.0), 0.0]))  # probs = (1,1,6,1)/9
    _, aux, probs = proj(torch.randn(5, 3))
    q = 6.0 / 9.0
    torch.testing.assert_close(probs[0], torch.tensor([1, 1, 6, 1]) / 9.0)
    assert aux.item() == pytest.approx(4 * q)


def test_soft_aux_and_mask():
    proj = MoEProjector(3, 4, 2, n_experts=2, balance="soft")
    with torch.no_grad():
        proj.router.weight.zero_()
        proj.router.weight[0, 0] = 1.0  # logit_0 = x_0, logit_1 = 0
        proj.router.bias.zero_()
    x = torch.tensor([[math.log(3.0), 0, 0], [0.0, 0, 0], [50.0, 0, 0]])
    mask = torch.tensor([True, True, False])  # the third row (would collapse p) does not count
    _, aux, _ = proj(x, mask)
    p0 = (0.75 + 0.5) / 2  # mean router prob of expert 0 over the two counted rows
    assert aux.item() == pytest.approx(2 * (p0**2 + (1 - p0) ** 2))
    _, aux_none, _ = proj(x, torch.zeros(3, dtype=torch.bool))
    assert aux_none.item() == 0.0


def test_top_k_keeps_exactly_k_experts_renormalised():
    torch.manual_seed(1)
    proj = MoEProjector(6, 8, 5, n_experts=4, top_k=2)
    x = torch.randn(7, 6)
    out, aux, probs = proj(x)
    # slow reference: one row and one expert at a time; the two largest router probabilities, renormalised
    want = torch.zeros(7, 5)
    out, probs = out.detach(), probs.detach()
    with torch.no_grad():
        for n in range(7):
            p = torch.softmax(x[n] @ proj.router.weight.T + proj.router.bias, -1)
            torch.testing.assert_close(p, probs[n])
            best = sorted(range(4), key=lambda k: -p[k].item())[:2]
            for k in best:
                expert = torch.nn.functional.gelu(x[n] @ proj.w1[k] + proj.b1[k]) @ proj.w2[k] + proj.b2[k]
                want[n] += p[k] / (p[best[0]] + p[best[1]]) * expert
    torch.testing.assert_close(out, want)
    top = probs.topk(2, -1)
    # perturbing a non-selected expert does not change the output
    dropped = [k for k in range(4) if k not in top.indices[0].tolist()][0]
    with torch.no_grad():
        proj.b2[dropped] += 100.0
    torch.testing.assert_close(proj(x)[0][0], out[0])
    # Switch aux with k = 2 slots: f counts both kept experts (each 1/2); equals K * sum f p by hand
    keep = torch.zeros_like(probs).scatter(-1, top.indices, 0.5)
    assert aux.item() == pytest.approx(4 * (keep.mean(0) * probs.mean(0)).sum().item(), rel=1e-5)


def test_top_k_out_of_range():
    with pytest.raises(ValueError, match="top_k"):
        MoEProjector(3, 4, 2, n_experts=2, top_k=3)


def test_gradients_reach_experts_and_router():
    torch.manual_seed(0)
    proj = MoEProjector(6, 8, 5, n_experts=4, balance="soft")
    out, aux, _ = proj(torch.randn(10, 6))
    (out.pow(2).sum() + aux).backward()
    for name, p in proj.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_dense_mixture_and_its_gradients_equal_a_slow_reference():
    """A learned (non-uniform) router: the output and every parameter's gradient equal those of a slow
    reference built row by row and expert by expert from the same parameters."""
    torch.manual_seed(0)
    proj = MoEProjector(6, 8, 5, n_experts=3)
    x, w = torch.randn(7, 6), torch.randn(7, 5)  # w: a random upstream gradient
    out, _, probs = proj(x)
    (out * w).sum().backward()
    got = {name: p.grad.clone() for name, p in proj.named_parameters()}
    proj.zero_grad()

    rows = []
    for n in range(7):
        p = torch.softmax(x[n] @ proj.router.weight.T + proj.router.bias, dim=-1)
        gelu = torch.nn.functional.gelu
        experts = [gelu(x[n] @ proj.w1[k] + proj.b1[k]) @ proj.w2[k] + proj.b2[k] for k in range(3)]
        rows.append(sum(p[k] * experts[k] for k in range(3)))
    want = torch.stack(rows)  # (7, 5)
    assert probs.std() > 0.01  # the router is not uniform
    torch.testing.assert_close(out, want)
    (want * w).sum().backward()
    for name, p in proj.named_parameters():
        torch.testing.assert_close(got[name], p.grad, msg=name)
