"""Losses: hand-computed values on tiny tensors, limiting cases, gradients, bad shapes."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

from multimag.learn.losses import (  # noqa: E402
    constellation_loss,
    focal_loss,
    npair_loss,
    nt_xent_loss,
    pair_loss,
    reinforced_focal_loss,
    sim_loss,
    triplet_loss,
)

D64 = torch.float64


def t(values) -> torch.Tensor:
    return torch.tensor(values, dtype=D64)


def approx(value: float):
    return pytest.approx(value, rel=1e-9, abs=1e-12)


# -- SMSE: pair and triplet ------------------------------------------------------------------


def test_pair_loss_hand_value():
    e1 = t([[0.0, 0.0], [1.0, 1.0]])
    e2 = t([[3.0, 4.0], [1.0, 2.0]])
    # pair 0: same class, d^2 = 9 + 16 = 25; pair 1: different, d^2 = 1 -> max(0, 2 - 1) = 1
    expected = (25.0 + 1.0) / 2
    assert pair_loss(e1, e2, torch.tensor([1, 0]), margin=2.0).item() == approx(expected)


@pytest.mark.parametrize("same", [torch.tensor([1, 0]), torch.tensor([True, False]),
                                  torch.tensor([1.0, 0.0])])
def test_pair_loss_accepts_any_dtype_for_same(same):
    e1, e2 = t([[0.0, 0.0], [1.0, 1.0]]), t([[3.0, 4.0], [1.0, 1.5]])
    expected = (25.0 + (1.0 - 0.25)) / 2
    assert pair_loss(e1, e2, same).item() == approx(expected)


def test_pair_loss_identical_pairs():
    e = torch.randn(5, 3, dtype=D64)
    assert pair_loss(e, e.clone(), torch.ones(5)).item() == 0.0
    assert pair_loss(e, e.clone(), torch.zeros(5), margin=1.7).item() == approx(1.7)


def test_pair_loss_far_different_pair_is_zero():
    e1, e2 = t([[0.0, 0.0]]), t([[10.0, 0.0]])
    assert pair_loss(e1, e2, torch.tensor([0])).item() == 0.0
    assert pair_loss(e1, e2, torch.tensor([1])).item() == approx(100.0)


def test_triplet_loss_hand_value():
    a = t([[0.0, 0.0], [0.0, 0.0]])
    p = t([[1.0, 0.0], [1.0, 0.0]])
    n = t([[0.0, 2.0], [0.5, 0.0]])
    # row 0: 1 - 4 + 1 = -2 -> 0; row 1: 1 - 0.25 + 1 = 1.75
    assert triplet_loss(a, p, n).item() == approx(1.75 / 2)
    assert triplet_loss(a, p, n, margin=4.0).item() == approx(((1 - 4 + 4) + (1 - 0.25 + 4)) / 2)


def test_triplet_loss_zero_when_negative_far():
    a = torch.randn(4, 6, dtype=D64)
    p = a + 0.01 * torch.randn(4, 6, dtype=D64)
    n = a + 100.0
    assert triplet_loss(a, p, n).item() == 0.0


# -- SMSE: focal losses ----------------------------------------------------------------------


def test_focal_losses_hand_value():
    # p = softmax([0, ln 3]) = [1/4, 3/4]
    logits = t([[0.0, math.log(3.0)], [math.log(3.0), 0.0]])
    target = torch.tensor([1, 1])
    p_t = [0.75, 0.25]
    rfl = sum(2.0 * (1 - p) ** 1.5 for p in p_t) / 2
    assert reinforced_focal_loss(logits, target).item() == approx(rfl)
    fl = sum(-((1 - p) ** 2) * math.log(p) for p in p_t) / 2
    assert focal_loss(logits, target).item() == approx(fl)


def test_reinforced_focal_loss_hand_value_three_classes():
    logits, target = t([[1.0, 2.0, 0.0]]), torch.tensor([1])
    p_t = math.exp(2.0) / (math.exp(1.0) + math.exp(2.0) + math.exp(0.0))
    got = reinforced_focal_loss(logits, target, lam=3.0, gamma=0.5).item()
    assert got == approx(3.0 * (1 - p_t) ** 0.5)


def test_reinforced_focal_loss_lam1_gamma1_is_one_minus_p_t():
    torch.manual_seed(0)
    logits, target = torch.randn(7, 4, dtype=D64), torch.randint(0, 4, (7,))
    p_t = torch.softmax(logits, 1)[torch.arange(7), target]
    got = reinforced_focal_loss(logits, target, lam=1.0, gamma=1.0)
    assert got.item() == approx((1 - p_t).mean().item())


def test_focal_loss_gamma0_is_cross_entropy():
    torch.manual_seed(1)
    logits, target = torch.randn(9, 5, dtype=D64), torch.randint(0, 5, (9,))
    assert focal_loss(logits, target, gamma=0.0).item() == approx(
        F.cross_entropy(logits, target).item())


def test_focal_loss_is_stable_for_extreme_logits():
    logits = t([[1000.0, -1000.0], [-1000.0, 1000.0]]).float()
    loss = focal_loss(logits, torch.tensor([1, 1]))
    assert torch.isfinite(loss)
    # row 0 is wrong with p_t ~ e^-2000: (1 - p_t)^2 * 2000 ~ 2000; row 1 is right: ~0
    assert loss.item() == pytest.approx(1000.0, rel=1e-4)


# -- N-pair and constellation ------------------------------------------------------------------


def test_npair_loss_hand_value():
    a = t([[1.0, 0.0], [0.0, 1.0]])
    p = t([[1.0, 0.0], [0.0, 2.0]])
    # a.p^T = [[1, 0], [0, 2]]
    expected = (math.log(1 + math.exp(0 - 1)) + math.log(1 + math.exp(0 - 2))) / 2
    assert npair_loss(a, p).item() == approx(expected)


def test_npair_loss_three_pairs_hand_value():
    a = t([[1.0, 2.0], [0.0, 1.0], [-1.0, 0.5]])
    p = t([[0.5, 0.0], [1.0, 1.0], [0.0, -1.0]])
    rows = [[sum(x * y for x, y in zip(ai, pj, strict=True)) for pj in p.tolist()]
            for ai in a.tolist()]
    expected = sum(math.log(1 + sum(math.exp(rows[i][j] - rows[i][i]) for j in range(3) if j != i))
                   for i in range(3)) / 3
    assert npair_loss(a, p).item() == approx(expected)


def test_npair_loss_single_pair_is_zero():
    assert npair_loss(t([[3.0, -1.0]]), t([[0.2, 5.0]])).item() == 0.0


def test_npair_loss_is_stable_for_large_dot_products():
    a = t([[100.0, 0.0], [0.0, 100.0]]).float()
    p = t([[-100.0, 0.0], [0.0, 100.0]]).float()
    # row 0: log(1 + exp(0 + 10000)) ~ 10000; row 1: log(1 + exp(0 - 10000)) ~ 0
    loss = npair_loss(a, p)
    assert torch.isfinite(loss) and loss.item() == pytest.approx(5000.0, rel=1e-5)


def test_constellation_loss_hand_value():
    a = t([[2.0, 0.0]])                     # -> (1, 0)
    p = t([[1.0, 1.0]])                     # -> (1, 1) / sqrt 2
    n = t([[[0.0, 3.0], [-0.5, 0.0]]])      # -> (0, 1), (-1, 0)
    ap = 1 / math.sqrt(2)
    expected = math.log(1 + math.exp(0.0 - ap) + math.exp(-1.0 - ap))
    assert constellation_loss(a, p, n).item() == approx(expected)


def test_constellation_loss_k1_is_softplus_and_scale_invariant():
    torch.manual_seed(2)
    a, p, n = torch.randn(6, 4, dtype=D64), torch.randn(6, 4, dtype=D64), torch.randn(6, 1, 4,
                                                                                      dtype=D64)
    an, pn, nn = F.normalize(a, dim=1), F.normalize(p, dim=1), F.normalize(n[:, 0], dim=1)
    expected = F.softplus((an * nn).sum(1) - (an * pn).sum(1)).mean().item()
    assert constellation_loss(a, p, n).item() == approx(expected)
    assert constellation_loss(3 * a, 0.5 * p, 7 * n).item() == approx(expected)


def test_constellation_loss_batch_mean_of_rows():
    torch.manual_seed(3)
    a, p, n = torch.randn(4, 3, dtype=D64), torch.randn(4, 3, dtype=D64), torch.randn(4, 5, 3,
                                                                                      dtype=D64)
    rows = [constellation_loss(a[i:i + 1], p[i:i + 1], n[i:i + 1]).item() for i in range(4)]
    assert constellation_loss(a, p, n).item() == approx(sum(rows) / 4)


# -- NT-Xent ---------------------------------------------------------------------------------


def nt_xent_reference(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> float:
    """A loop over the 2N views, one cross entropy per view."""
    views = list(torch.cat([z1, z2]))
    n = z1.shape[0]
    total = 0.0
    for i, zi in enumerate(views):
        others = [k for k in range(2 * n) if k != i]
        partner = i + n if i < n else i - n
        row = torch.stack([F.cosine_similarity(zi, views[k], dim=0) for k in others]) / temperature
        target = torch.tensor([others.index(partner)])
        total += F.cross_entropy(row[None], target).item()
    return total / (2 * n)


def test_nt_xent_hand_value():
    z = t([[1.0, 0.0], [0.0, 1.0]])
    # each view: partner cos 1, two others cos 0 -> -log(e / (e + 2)) with t = 1
    expected = math.log(1 + 2 / math.e)
    assert nt_xent_loss(z, z.clone(), temperature=1.0).item() == approx(expected)
    # t = 0.5: -log(e^2 / (e^2 + 2))
    assert nt_xent_loss(2 * z, z, temperature=0.5).item() == approx(math.log(1 + 2 / math.e ** 2))


@pytest.mark.parametrize(("n", "temperature"), [(1, 0.1), (3, 0.5), (6, 0.07)])
def test_nt_xent_matches_reference_loop(n, temperature):
    torch.manual_seed(4 + n)
    z1, z2 = torch.randn(n, 5, dtype=D64), torch.randn(n, 5, dtype=D64)
    assert nt_xent_loss(z1, z2, temperature).item() == approx(
        nt_xent_reference(z1, z2, temperature))


def test_nt_xent_decreases_when_views_agree():
    torch.manual_seed(5)
    z1, z2 = torch.randn(8, 16, dtype=D64), torch.randn(8, 16, dtype=D64)
    losses = [nt_xent_loss(z1, (1 - s) * z2 + s * z1).item() for s in (0.0, 0.25, 0.5, 0.75, 1.0)]
    assert all(b < a for a, b in zip(losses, losses[1:], strict=False)), losses


# -- DSML similarity term ----------------------------------------------------------------------


def test_sim_loss_hand_value_channel_max_and_pooling():
    # 2 channels whose max is [[1, 2], [3, 4]]
    small = t([[[[1.0, 0.0], [3.0, 0.0]], [[0.0, 2.0], [0.0, 4.0]]]])
    big = torch.arange(16, dtype=D64).reshape(1, 1, 4, 4)
    # 2x2 block means of 0..15 laid out 4x4: [[2.5, 4.5], [10.5, 12.5]]
    pooled = [[(0 + 1 + 4 + 5) / 4, (2 + 3 + 6 + 7) / 4],
              [(8 + 9 + 12 + 13) / 4, (10 + 11 + 14 + 15) / 4]]
    chmax = [[1.0, 2.0], [3.0, 4.0]]
    expected = sum(abs(chmax[i][j] - pooled[i][j]) for i in range(2) for j in range(2)) / 4
    assert expected == 5.0
    assert sim_loss([small, big]).item() == approx(expected)
    assert sim_loss((big, small)).item() == approx(expected)


def test_sim_loss_identical_maps_and_symmetry():
    torch.manual_seed(6)
    f = torch.randn(3, 4, 5, 5, dtype=D64)
    assert sim_loss([f, f.clone()]).item() == 0.0
    g = torch.randn(3, 8, 10, 7, dtype=D64)
    assert sim_loss([f, g]).item() == approx(sim_loss([g, f]).item())


def test_sim_loss_averages_over_all_pairs():
    maps = [torch.full((2, 1, 4, 4), 0.0, dtype=D64), torch.full((2, 3, 2, 2), 1.0, dtype=D64),
            torch.full((2, 2, 8, 8), 3.0, dtype=D64)]
    # |0 - 1|, |0 - 3|, |1 - 3|
    assert sim_loss(maps).item() == approx((1 + 3 + 2) / 3)


def test_sim_loss_pools_height_and_width_to_their_minimum():
    # a is 2 x 4: pooling its width to 2 averages column pairs -> all ones
    a = t([[[[2.0, 0.0, 4.0, -2.0], [2.0, 0.0, 4.0, -2.0]]]])
    # b is 4 x 2: pooling its height to 2 averages row pairs -> all zeros
    b = t([[[[1.0, -1.0], [-1.0, 1.0], [2.0, -2.0], [-2.0, 2.0]]]])
    assert sim_loss([a, b]).item() == approx(1.0)


# -- gradients ----------------------------------------------------------------------------------


def _inputs(seed: int, *shapes):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*s, generator=g, dtype=D64, requires_grad=True) for s in shapes]


GRAD_CASES = {
    "pair": lambda: (lambda e1, e2: pair_loss(e1, e2, torch.tensor([1, 0, 1, 0]), margin=100.0),
                     _inputs(0, (4, 3), (4, 3))),
    "triplet": lambda: (lambda a, p, n: triplet_loss(a, p, n, margin=100.0),
                        _inputs(1, (4, 3), (4, 3), (4, 3))),
    "reinforced_focal": lambda: (lambda x: reinforced_focal_loss(x, torch.tensor([0, 1, 2])),
                                 _inputs(2, (3, 3))),
    "focal": lambda: (lambda x: focal_loss(x, torch.tensor([0, 1, 2])), _inputs(3, (3, 3))),
    "npair": lambda: (npair_loss, _inputs(4, (4, 3), (4, 3))),
    "constellation": lambda: (constellation_loss, _inputs(5, (4, 3), (4, 3), (4, 2, 3))),
    "nt_xent": lambda: (lambda a, b: nt_xent_loss(a, b, 0.5), _inputs(6, (4, 3), (4, 3))),
    "sim": lambda: (lambda a, b: sim_loss([a, b]), _inputs(7, (2, 3, 2, 2), (2, 2, 4, 4))),
}


@pytest.mark.parametrize("name", sorted(GRAD_CASES))
def test_gradients_flow(name):
    fn, inputs = GRAD_CASES[name]()
    loss = fn(*inputs)
    assert loss.ndim == 0
    loss.backward()
    for x in inputs:
        assert x.grad is not None
        assert torch.isfinite(x.grad).all()
        assert x.grad.abs().sum() > 0


# -- invalid shapes ---------------------------------------------------------------------------


BAD_CALLS = {
    "pair batch": lambda: pair_loss(torch.zeros(3, 2), torch.zeros(4, 2), torch.ones(3)),
    "pair dim": lambda: pair_loss(torch.zeros(3, 2), torch.zeros(3, 5), torch.ones(3)),
    "pair ndim": lambda: pair_loss(torch.zeros(3), torch.zeros(3), torch.ones(3)),
    "pair same": lambda: pair_loss(torch.zeros(3, 2), torch.zeros(3, 2), torch.ones(4)),
    "triplet batch": lambda: triplet_loss(torch.zeros(3, 2), torch.zeros(3, 2), torch.zeros(2, 2)),
    "triplet ndim": lambda: triplet_loss(torch.zeros(3, 2, 1), torch.zeros(3, 2, 1),
                                         torch.zeros(3, 2, 1)),
    "rfl batch": lambda: reinforced_focal_loss(torch.zeros(3, 2), torch.zeros(4, dtype=torch.long)),
    "rfl ndim": lambda: reinforced_focal_loss(torch.zeros(3), torch.zeros(3, dtype=torch.long)),
    "focal batch": lambda: focal_loss(torch.zeros(3, 2), torch.zeros(2, dtype=torch.long)),
    "focal target ndim": lambda: focal_loss(torch.zeros(3, 2), torch.zeros(3, 1, dtype=torch.long)),
    "npair batch": lambda: npair_loss(torch.zeros(3, 2), torch.zeros(4, 2)),
    "npair ndim": lambda: npair_loss(torch.zeros(3), torch.zeros(3)),
    "constellation neg ndim": lambda: constellation_loss(torch.zeros(3, 2), torch.zeros(3, 2),
                                                         torch.zeros(3, 2)),
    "constellation neg batch": lambda: constellation_loss(torch.zeros(3, 2), torch.zeros(3, 2),
                                                          torch.zeros(4, 1, 2)),
    "constellation neg dim": lambda: constellation_loss(torch.zeros(3, 2), torch.zeros(3, 2),
                                                        torch.zeros(3, 1, 5)),
    "constellation batch": lambda: constellation_loss(torch.zeros(3, 2), torch.zeros(2, 2),
                                                      torch.zeros(3, 1, 2)),
    "nt_xent batch": lambda: nt_xent_loss(torch.zeros(3, 2), torch.zeros(4, 2)),
    "nt_xent ndim": lambda: nt_xent_loss(torch.zeros(3, 2, 2), torch.zeros(3, 2, 2)),
    "nt_xent temperature": lambda: nt_xent_loss(torch.ones(3, 2), torch.ones(3, 2), 0.0),
    "sim one map": lambda: sim_loss([torch.zeros(2, 1, 4, 4)]),
    "sim empty": lambda: sim_loss([]),
    "sim bare tensor": lambda: sim_loss(torch.zeros(2, 1, 4, 4)),
    "sim batch": lambda: sim_loss([torch.zeros(2, 1, 4, 4), torch.zeros(3, 1, 4, 4)]),
    "sim ndim": lambda: sim_loss([torch.zeros(2, 4, 4), torch.zeros(2, 4, 4)]),
}


@pytest.mark.parametrize("name", sorted(BAD_CALLS))
def test_invalid_shapes_raise_value_error(name):
    with pytest.raises(ValueError):
        BAD_CALLS[name]()


def test_error_messages_are_clear():
    with pytest.raises(ValueError, match="at least 2 feature maps"):
        sim_loss([torch.zeros(2, 1, 4, 4)])
    with pytest.raises(ValueError, match="batch size"):
        sim_loss([torch.zeros(2, 1, 4, 4), torch.zeros(3, 1, 4, 4)])
    with pytest.raises(ValueError, match=r"shapes must match.*\(3, 2\).*\(4, 2\)"):
        npair_loss(torch.zeros(3, 2), torch.zeros(4, 2))
