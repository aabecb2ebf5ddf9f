"""Model soups, Fisher merging, WiSE-FT, sparse soups and task-vector merges on hand-made tensors."""

import pytest
import torch
from hydra import compose, initialize_config_module

from sim.errors import ConfigError, RunError
from sim.fisher import diagonal_fisher
from sim.layout import Layout
from strategies import AggregationInfo, build_strategy
from strategies.soups import FisherMerge, GreedySoup, Interpolate, SparseSoup, UniformSoup
from strategies.task_merging import TaskArithmetic, trim_by_magnitude

LAYOUT = Layout.from_module(torch.nn.Linear(2, 2))  # weight [0:4], bias [4:6]

MODELS = torch.tensor([[1.0, 2.0, 0.0, 4.0, 0.0, 6.0], [3.0, 0.0, 0.0, 8.0, 1.0, 2.0], [5.0, 4.0, 0.0, 0.0, 2.0, 1.0]])


def info(k=3, num_samples=None, reference=None, validate=None, extras=None, round_=1):
    return AggregationInfo(
        client_ids=torch.arange(10, 10 + k),
        num_samples=torch.tensor(num_samples or [1] * k),
        round=round_,
        num_clients=20,
        layout=LAYOUT,
        reference=torch.zeros(6) if reference is None else torch.tensor(reference),
        validate=validate,
        extras=extras or {},
    )


def distance_to(target):
    target = torch.as_tensor(target, dtype=torch.float32)
    return lambda p: -float(((p - target) ** 2).sum())


# ---- uniform soup and WiSE-FT -------------------------------------------------------------------
def test_uniform_soup_averages_and_can_weight_by_samples():
    out, state = UniformSoup().aggregate(MODELS, info(num_samples=[1, 1, 2]), {})
    assert torch.allclose(out, torch.tensor([3.0, 2.0, 0.0, 4.0, 1.0, 3.0]))
    assert state == {}
    weighted, _ = UniformSoup(weighting="samples").aggregate(MODELS, info(num_samples=[1, 1, 2]), {})
    # (1 + 3 + 2*5) / 4 = 3.5, (2 + 0 + 8) / 4 = 2.5, 0, (4 + 8) / 4 = 3, (1 + 4) / 4 = 1.25, (6 + 2 + 2) / 4
    assert torch.allclose(weighted, torch.tensor([3.5, 2.5, 0.0, 3.0, 1.25, 2.5]))


def test_interpolate_moves_alpha_of_the_way_from_reference_to_the_average():
    out, _ = Interpolate(alpha=0.25).aggregate(MODELS, info(reference=[1.0] * 6), {})
    # 0.75 * 1 + 0.25 * [3, 2, 0, 4, 1, 3]
    assert torch.allclose(out, torch.tensor([1.5, 1.25, 0.75, 1.75, 1.0, 1.5]))
    keep, _ = Interpolate(alpha=0.0).aggregate(MODELS, info(reference=[1.0] * 6), {})
    assert torch.equal(keep, torch.ones(6))


# ---- greedy soup ---------------------------------------------------------------------------------
def test_greedy_soup_starts_from_the_best_and_drops_a_candidate_that_hurts():
    a, b, c = torch.ones(6), -torch.ones(6), torch.full((6,), 3.0)
    models = torch.stack([c, b, a])  # scores vs target 0: c -54, b -6, a -6 (tie: row 1 before row 2)
    out, state = GreedySoup().aggregate(models, info(validate=distance_to([0.0] * 6)), {})
    # soup b (-6); + a -> mean 0, score 0: kept; + c -> mean 1, score -6 < 0: dropped
    assert torch.equal(out, torch.zeros(6))
    assert state["kept"].tolist() == [1, 2]
    assert state["kept_clients"].tolist() == [11, 12]
    assert GreedySoup().round_metrics(state, None) == {"greedy_kept": 2.0, "greedy_val": 0.0}


def test_greedy_soup_equal_score_is_kept_unless_strict():
    a = torch.tensor([2.0, 0, 0, 0, 0, 0])  # score -4
    b = torch.tensor([-2.0, 0, 0, 0, 0, 4])  # score -20; mean with a is [0, 0, 0, 0, 0, 2]: score -4
    models = torch.stack([b, a])
    out, state = GreedySoup().aggregate(models, info(k=2, validate=distance_to([0.0] * 6)), {})
    assert torch.equal(out, torch.tensor([0.0, 0, 0, 0, 0, 2]))
    assert state["kept"].tolist() == [1, 0]
    strict, state = GreedySoup(strict=True).aggregate(models, info(k=2, validate=distance_to([0.0] * 6)), {})
    assert torch.equal(strict, a)
    assert state["kept"].tolist() == [1]


def test_greedy_soup_without_validation_split_is_a_config_error():
    with pytest.raises(ConfigError, match="val_fraction") as exc:
        GreedySoup().aggregate(MODELS, info(), {})
    assert exc.value.field == "strategy.name"
    assert GreedySoup.needs_validation


# ---- Fisher merging ------------------------------------------------------------------------------
def test_fisher_merge_with_equal_fishers_is_the_plain_average():
    fisher = 0.5 + torch.rand(6, generator=torch.Generator().manual_seed(0)).expand(3, 6)
    for normalize in (True, False):
        for favor in (True, False):
            merge = FisherMerge(normalize_fishers=normalize, favor_target_model=favor)
            out, _ = merge.aggregate(MODELS, info(extras={"fisher": fisher}), {})
            assert torch.allclose(out, MODELS.mean(0), atol=1e-6)
    assert FisherMerge.requires == frozenset({"fisher"})


# theta_0 = 2, theta_1 = 8 everywhere; ||F_0|| = 5, ||F_1|| = 10; a floor of 1 makes the sums easy
PAIR = torch.tensor([[2.0] * 6, [8.0] * 6])
PAIR_FISHER = torch.tensor([[3.0, 0.0, 0.0, 4.0, 0.0, 0.0], [2.0, 4.0, 0.0, 0.0, 4.0, 8.0]])


@pytest.mark.parametrize(
    "normalize, favor, expected",
    [
        # c = [1/5, 1/10]; target F'_0 = max(F_0, 1) = [3, 1, 1, 4, 1, 1] -> [.6, .2, .2, .8, .2, .2];
        # donor F_1 unfloored -> [.2, .4, 0, 0, .4, .8]; theta = 2 + 6 * w_1 / (w_0 + w_1)
        (True, True, [3.5, 6.0, 2.0, 2.0, 6.0, 6.8]),
        # donor floored too: F'_1 = [2, 4, 1, 1, 4, 8] -> [.2, .4, .1, .1, .4, .8]: columns 2, 3 change
        (True, False, [3.5, 6.0, 4.0, 2 + 6 * 0.1 / 0.9, 6.0, 6.8]),
        # c = [1, 1]: w_0 = [3, 1, 1, 4, 1, 1], w_1 = [2, 4, 0, 0, 4, 8]
        (False, True, [4.4, 6.8, 2.0, 2.0, 6.8, 2 + 6 * 8 / 9]),
        (False, False, [4.4, 6.8, 5.0, 3.2, 6.8, 2 + 6 * 8 / 9]),
    ],
)
def test_fisher_merge_by_hand_for_each_reference_option(normalize, favor, expected):
    merge = FisherMerge(fisher_floor=1.0, normalize_fishers=normalize, favor_target_model=favor)
    out, _ = merge.aggregate(PAIR, info(k=2, extras={"fisher": PAIR_FISHER}), {})
    assert torch.allclose(out, torch.tensor(expected), atol=1e-6)


def test_fisher_merge_target_is_the_receivers_own_model_and_samples_weight_the_coefficients():
    gossip = info(k=2, extras={"fisher": PAIR_FISHER})
    gossip.self_index = 1  # the receiver is row 1: its Fisher is floored, row 0's is not
    out, _ = FisherMerge(fisher_floor=1.0).aggregate(PAIR, gossip, {})
    # c = [1/5, 1/10]; F'_1 = [2, 4, 1, 1, 4, 8] -> [.2, .4, .1, .1, .4, .8]; w_0 = [.6, 0, 0, .8, 0, 0]
    assert torch.allclose(out, torch.tensor([3.5, 8.0, 8.0, 2 + 6 * 0.1 / 0.9, 8.0, 8.0]), atol=1e-6)
    weighted, _ = FisherMerge(fisher_floor=1.0, normalize_fishers=False, weighting="samples").aggregate(
        PAIR, info(k=2, num_samples=[1, 3], extras={"fisher": PAIR_FISHER}), {}
    )
    # l = [1, 3]: w_0 = [3, 1, 1, 4, 1, 1], w_1 = 3 * [2, 4, 0, 0, 4, 8]
    assert torch.allclose(
        weighted, torch.tensor([2 + 6 * 6 / 9, 2 + 6 * 12 / 13, 2.0, 2.0, 2 + 6 * 12 / 13, 2 + 6 * 24 / 25]), atol=1e-6
    )


def reference_fisher_merge(variables, fishers, coefficients, floor, favor_target_model, normalize_fishers):
    """``mmatena/model_merging``'s ``generate_merged_for_coeffs_set`` + ``_merge_with_coeffs``, re-expressed
    over lists (model -> variable -> tensor); model 0 is the target."""
    if normalize_fishers:
        norms = [sum(float((d**2).sum()) for d in f) ** 0.5 for f in fishers]
        coefficients = [c / n for c, n in zip(coefficients, norms, strict=True)]
    out = []
    for i in range(len(variables[0])):
        lhs, rhs = 0.0, 0.0
        for j, (mvars, coeff, fisher) in enumerate(zip(variables, coefficients, fishers, strict=True)):
            diag = fisher[i]
            if not favor_target_model or j == 0:
                diag = torch.maximum(diag, torch.tensor(floor, dtype=diag.dtype))
            lhs = lhs + coeff * diag
            rhs = rhs + coeff * diag * mvars[i]
        out.append(rhs / lhs)
    return out


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("favor", [True, False])
def test_fisher_merge_matches_the_reference_formula(normalize, favor):
    g = torch.Generator().manual_seed(4)
    layout = Layout.from_module(torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.Linear(4, 3)))
    models = torch.randn(3, layout.size, generator=g, dtype=torch.float64)
    scale = torch.tensor([[1.0], [30.0], [0.2]], dtype=torch.float64)  # Fishers of very different sizes
    fisher = torch.rand(3, layout.size, generator=g, dtype=torch.float64) ** 4 * scale
    fisher[fisher < 0.01] = 0.0  # exact zeros, where the floor decides
    fisher[1, :7] = 1e-9  # below the floor in a donor
    lam = [0.5, 0.3, 0.2]

    def split(flat):
        return [flat[s.slice] for s in layout.specs]

    expected = reference_fisher_merge(
        [split(m) for m in models], [split(f) for f in fisher], lam, 1e-3, favor, normalize
    )
    i = AggregationInfo(
        client_ids=torch.arange(3),
        num_samples=torch.tensor([5, 3, 2]),
        round=1,
        num_clients=3,
        layout=layout,
        reference=torch.zeros(layout.size),
        extras={"fisher": fisher},
    )
    out, _ = FisherMerge(
        weighting="samples", fisher_floor=1e-3, normalize_fishers=normalize, favor_target_model=favor
    ).aggregate(models, i, {})
    assert torch.allclose(out, torch.cat(expected), atol=1e-12, rtol=1e-12)
    assert (out - models.mean(0)).abs().max() > 0.1  # far from the plain mean: the Fisher decides


def test_fisher_merge_averages_buffers_with_the_model_weights():
    layout = Layout.from_module(torch.nn.BatchNorm1d(1))  # weight, bias, running_mean, running_var
    models = torch.tensor([[1.0, 0.0, 2.0, 1.0], [3.0, 2.0, 6.0, 3.0]])
    fisher = torch.tensor([[1.0, 1.0, 0.0, 0.0], [3.0, 1.0, 0.0, 0.0]])  # buffers have no Fisher
    i = AggregationInfo(
        client_ids=torch.arange(2),
        num_samples=torch.tensor([1, 3]),
        round=1,
        num_clients=2,
        layout=layout,
        reference=torch.zeros(4),
        extras={"fisher": fisher},
    )
    out, _ = FisherMerge(weighting="samples", normalize_fishers=False).aggregate(models, i, {})
    # weight (1*1*1 + 3*3*3) / (1 + 9) = 2.8 ; bias (0 + 3*2) / 4 = 1.5 ; buffers (1 x + 3 y) / 4
    assert torch.allclose(out, torch.tensor([2.8, 1.5, 5.0, 2.5]))


def test_fisher_merge_without_fisher_extras_is_a_run_error():
    with pytest.raises(RunError, match="Fisher"):
        FisherMerge().aggregate(MODELS, info(), {})


# ---- sparse soup ---------------------------------------------------------------------------------
def test_sparse_soup_masks_by_hand():
    # zeros: column 2 in all rows; row 0 also at 4; row 1 at 1; row 2 at 3
    inter, _ = SparseSoup().aggregate(MODELS, info(), {})
    assert torch.equal(inter, torch.tensor([3.0, 2.0, 0.0, 4.0, 1.0, 3.0]))
    first, _ = SparseSoup(mask="first").aggregate(MODELS, info(), {})
    assert torch.equal(first, torch.tensor([3.0, 2.0, 0.0, 4.0, 0.0, 3.0]))
    union, _ = SparseSoup(mask="union").aggregate(MODELS, info(), {})
    assert torch.equal(union, torch.tensor([3.0, 0.0, 0.0, 0.0, 0.0, 3.0]))


def test_sparse_soup_keeps_every_masked_zero_exactly():
    g = torch.Generator().manual_seed(1)
    layout = Layout.from_module(torch.nn.Linear(8, 4))
    mask = torch.rand(layout.size, generator=g) < 0.6
    models = torch.randn(3, layout.size, generator=g).masked_fill(mask, 0.0)
    models[1, mask] = -0.0
    i = AggregationInfo(
        client_ids=torch.arange(3),
        num_samples=torch.tensor([5, 1, 2]),
        round=1,
        num_clients=3,
        layout=layout,
        reference=torch.zeros(layout.size),
    )
    out, _ = SparseSoup(weighting="samples").aggregate(models, i, {})
    assert torch.equal((out == 0), mask)  # sparsity kept, nothing else zeroed
    assert not torch.signbit(out[mask]).any()  # exactly +0.0
    assert torch.allclose(out[~mask], (torch.tensor([5.0, 1, 2]) / 8) @ models[:, ~mask])


# ---- task arithmetic / TIES / DARE ---------------------------------------------------------------
def test_task_arithmetic_scales_the_weighted_mean_delta():
    out, _ = TaskArithmetic(scaling=2.0).aggregate(MODELS, info(reference=[1.0] * 6), {})
    # mean delta = [3, 2, 0, 4, 1, 3] - 1 = [2, 1, -1, 3, 0, 2]; 1 + 2 * delta
    assert torch.allclose(out, torch.tensor([5.0, 3.0, -1.0, 7.0, 1.0, 5.0]))
    samples, _ = TaskArithmetic(weighting="samples").aggregate(
        MODELS, info(num_samples=[1, 1, 2], reference=[1.0] * 6), {}
    )
    assert torch.allclose(samples, torch.tensor([3.5, 2.5, 0.0, 3.0, 1.25, 2.5]))


TAUS = torch.tensor(
    [[3.0, -1.0, 0.5, 2.0, 1.0, -0.5], [-2.0, 4.0, -1.0, 0.2, -3.0, 0.1], [2.5, -3.0, 0.5, -0.1, 0.2, 0.4]]
)


def test_ties_trims_each_tensor_separately():
    trimmed = trim_by_magnitude(TAUS, 0.5, LAYOUT)  # weight: top 2 of 4 ; bias: top 1 of 2
    assert torch.equal(
        trimmed,
        torch.tensor(
            [[3.0, 0.0, 0.0, 2.0, 1.0, 0.0], [-2.0, 4.0, 0.0, 0.0, -3.0, 0.0], [2.5, -3.0, 0.0, 0.0, 0.0, 0.4]]
        ),
    )
    # a global top-3 would have kept row 2's 0.5 at column 2 instead of 0.4 at column 5


def test_ties_elects_signs_and_takes_the_disjoint_mean():
    base = torch.ones(6)
    out, _ = TaskArithmetic(method="ties", density=0.5, scaling=0.5).aggregate(
        base + TAUS, info(reference=base.tolist()), {}
    )
    # trimmed sums [3.5, 1, 0, 2, -2, 0.4] -> signs + + + + - + ; column 2 has no nonzero entry
    # disjoint means: (3 + 2.5) / 2, 4, 0, 2, -3, 0.4 ; result 1 + 0.5 * mean
    assert torch.allclose(out, torch.tensor([2.375, 3.0, 1.0, 2.0, -0.5, 1.2]))


def test_dare_with_density_one_is_task_arithmetic_and_ties_without_trim():
    g = torch.Generator().manual_seed(2)
    models, ref = torch.randn(3, 6, generator=g), torch.randn(6, generator=g)
    i = info(reference=ref.tolist())
    plain, _ = TaskArithmetic(scaling=1.5).aggregate(models, i, {})
    dare, _ = TaskArithmetic(method="dare", density=1.0, scaling=1.5).aggregate(models, i, {})
    assert torch.equal(dare, plain)
    dare_ties, _ = TaskArithmetic(method="dare", density=1.0, sign_consensus=True).aggregate(models, i, {})
    ties, _ = TaskArithmetic(method="ties", density=1.0).aggregate(models, i, {})
    assert torch.equal(dare_ties, ties)


def test_dare_drops_and_rescales_deterministically():
    g = torch.Generator().manual_seed(3)
    layout = Layout.from_module(torch.nn.Linear(20, 10))
    tau = torch.randn(1, layout.size, generator=g)
    i = AggregationInfo(
        client_ids=torch.tensor([0]),
        num_samples=torch.tensor([1]),
        round=4,
        num_clients=1,
        layout=layout,
        reference=torch.zeros(layout.size),
    )
    out, _ = TaskArithmetic(method="dare", density=0.25, seed=7).aggregate(tau, i, {})
    kept = out != 0
    assert torch.allclose(out[kept], 4 * tau[0, kept])  # kept entries rescaled by 1 / density
    assert 0.15 < kept.float().mean() < 0.35
    again, _ = TaskArithmetic(method="dare", density=0.25, seed=7).aggregate(tau, i, {})
    assert torch.equal(again, out)
    other_seed, _ = TaskArithmetic(method="dare", density=0.25, seed=8).aggregate(tau, i, {})
    i.round = 5
    other_round, _ = TaskArithmetic(method="dare", density=0.25, seed=7).aggregate(tau, i, {})
    assert not torch.equal(other_seed, out) and not torch.equal(other_round, out)


# ---- diagonal Fisher -----------------------------------------------------------------------------
def brute_force_fisher(model, layout, params, x):
    layout.load_into(model, params)
    model.eval()
    names = [s.name for s in layout.of_kind("weight", "bias")]
    own = dict(model.named_parameters())
    total = torch.zeros_like(params)
    for xi in x:
        logp = torch.log_softmax(model(xi.unsqueeze(0))[0], dim=0)
        for c in range(len(logp)):
            grads = torch.autograd.grad(logp[c], [own[n] for n in names], retain_graph=True)
            for n, gr in zip(names, grads, strict=True):
                total[layout.spec(n).slice] += logp[c].exp().detach() * gr.reshape(-1) ** 2
    return total / len(x)


def test_diagonal_fisher_matches_brute_force_and_zeroes_buffers():
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.Tanh(), torch.nn.Linear(4, 3)
    ).double()
    with torch.no_grad():
        model[1].running_mean.uniform_(-0.5, 0.5)
        model[1].running_var.uniform_(0.5, 2.0)
    layout = Layout.from_module(model)
    params = layout.flatten(model).double() + 0.1 * torch.randn(layout.size, dtype=torch.float64)
    x = torch.randn(5, 3, dtype=torch.float64)
    model.train()
    fast = diagonal_fisher(model, layout, params, x, batch_size=2)
    assert model.training  # mode restored
    expected = brute_force_fisher(model, layout, params.clone(), x)
    buffers = ~layout.trainable_mask()
    assert buffers.any() and torch.equal(fast[buffers], torch.zeros(int(buffers.sum()), dtype=torch.float64))
    assert torch.allclose(fast, expected, atol=1e-6, rtol=0)
    assert (fast[~buffers] > 0).all()
    floored = diagonal_fisher(model, layout, params, x, floor=10.0)
    assert torch.equal(floored[~buffers], torch.full((int((~buffers).sum()),), 10.0, dtype=torch.float64))


# ---- configuration -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "make, field",
    [
        (lambda: UniformSoup(weighting="median"), "strategy.weighting"),
        (lambda: GreedySoup(strict="yes"), "strategy.strict"),
        (lambda: FisherMerge(fisher_floor=0.0), "strategy.fisher_floor"),
        (lambda: FisherMerge(weighting="fisher"), "strategy.weighting"),
        (lambda: FisherMerge(normalize_fishers="yes"), "strategy.normalize_fishers"),
        (lambda: FisherMerge(favor_target_model=1), "strategy.favor_target_model"),
        (lambda: Interpolate(alpha=1.5), "strategy.alpha"),
        (lambda: Interpolate(alpha=-0.1), "strategy.alpha"),
        (lambda: Interpolate(base="checkpoint"), "strategy.base"),
        (lambda: SparseSoup(mask="random"), "strategy.mask"),
        (lambda: TaskArithmetic(method="slerp"), "strategy.method"),
        (lambda: TaskArithmetic(method="ties", density=0.0), "strategy.density"),
        (lambda: TaskArithmetic(method="dare", density=1.5), "strategy.density"),
        (lambda: TaskArithmetic(density=0.5), "strategy.density"),
        (lambda: TaskArithmetic(method="ties", scaling=0.0), "strategy.scaling"),
        (lambda: TaskArithmetic(weighting="equal"), "strategy.weighting"),
        (lambda: TaskArithmetic(method="dare", sign_consensus="sum"), "strategy.sign_consensus"),
        (lambda: TaskArithmetic(method="dare", seed=1.5), "strategy.seed"),
    ],
)
def test_bad_options_name_their_field(make, field):
    with pytest.raises(ConfigError) as exc:
        make()
    assert exc.value.field == field


@pytest.mark.parametrize(
    "name, cls, method",
    [
        ("uniform_soup", UniformSoup, None),
        ("greedy_soup", GreedySoup, None),
        ("fisher_merge", FisherMerge, None),
        ("interpolate", Interpolate, None),
        ("sparse_soup", SparseSoup, None),
        ("task_arithmetic", TaskArithmetic, "task_arithmetic"),
        ("ties", TaskArithmetic, "ties"),
        ("dare", TaskArithmetic, "dare"),
    ],
)
def test_each_strategy_config_composes_and_builds(name, cls, method):
    with initialize_config_module(config_module="configs", version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"strategy={name}"])
    strategy = build_strategy(cfg.strategy)
    assert type(strategy) is cls and strategy.name == name == cfg.strategy.name
    if method is not None:
        assert strategy.method == method
