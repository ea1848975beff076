"""The Graph Fusion Network (Mai et al., AAAI 2020): its nodes, their weights, and gradients."""

import pytest
import torch

from train.fusion import GraphFusion

B, D = 4, 6


def _inputs(dtype=torch.float32, requires_grad=False):
    g = torch.Generator().manual_seed(0)
    return [
        torch.randn(B, D, generator=g, dtype=dtype).requires_grad_(requires_grad) for _ in range(3)
    ]


def test_nodes_and_shapes():
    torch.manual_seed(0)
    gfn = GraphFusion(D)
    nodes = gfn.graph(*_inputs())
    assert nodes.unimodal.shape == (B, 3, D) and nodes.unimodal_weights.shape == (B, 3)
    assert nodes.bimodal.shape == (B, 3, D) and nodes.bimodal_weights.shape == (B, 3)
    assert nodes.trimodal.shape == (B, 6, D) and nodes.trimodal_weights.shape == (B, 6)
    assert nodes.fused.shape == (B, gfn.out_dim) == (B, 3 * D)
    torch.testing.assert_close(gfn(*_inputs()), nodes.fused)
    # the fused vector is the three layers: mean of weighted unimodal nodes, sums of the others
    uni = (nodes.unimodal_weights.unsqueeze(-1) * nodes.unimodal).mean(1)
    torch.testing.assert_close(
        nodes.fused, torch.cat([uni, nodes.bimodal.sum(1), nodes.trimodal.sum(1)], -1)
    )
    # six trimodal nodes: three bimodal-bimodal pairs, three bimodal-unimodal with the missing
    # modality
    kinds = [k for k, _, _ in GraphFusion.TRIMODAL]
    assert kinds.count("b") == 3 and kinds.count("u") == 3
    for kind, i, j in GraphFusion.TRIMODAL:
        if kind == "u":
            assert j not in GraphFusion.PAIRS[i]


def test_weights_as_specified():
    torch.manual_seed(0)
    nodes = GraphFusion(D).graph(*_inputs())
    # sigmoid scores, not normalised
    assert ((nodes.unimodal_weights > 0) & (nodes.unimodal_weights < 1)).all()
    torch.testing.assert_close(nodes.bimodal_weights.sum(1), torch.ones(B))
    torch.testing.assert_close(nodes.trimodal_weights.sum(1), torch.ones(B))


def test_similar_modalities_give_their_bimodal_node_less_weight():
    gfn = GraphFusion(D)
    with torch.no_grad():  # equal unimodal scores, so only the similarity decides
        gfn.uni_score.weight.zero_()
    x_l = torch.randn(B, D)
    x_v = -3 * x_l  # far from both l and a after the softmax
    nodes = gfn.graph(x_l, x_l.clone(), x_v)
    w = nodes.bimodal_weights  # pairs (l, a), (l, v), (a, v)
    assert (w[:, 0] < w[:, 1]).all() and torch.allclose(w[:, 1], w[:, 2])
    s = torch.sigmoid(gfn.uni_score.bias)
    sim_la = (torch.softmax(x_l, -1) ** 2).sum(-1)
    sim_lv = (torch.softmax(x_l, -1) * torch.softmax(x_v, -1)).sum(-1)
    scores = torch.stack(
        [2 * s / (sim_la + 0.5), 2 * s / (sim_lv + 0.5), 2 * s / (sim_lv + 0.5)], 1
    )
    torch.testing.assert_close(w, torch.softmax(scores, 1))


def test_gradients():
    torch.manual_seed(0)
    gfn = GraphFusion(D, hidden=8).double()
    xs = _inputs(torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *x: gfn(*x), xs)
    gfn(*xs).sum().backward()
    for name, p in gfn.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("k", [0, 1, 2])
def test_every_modality_reaches_every_layer(k):
    torch.manual_seed(0)
    gfn = GraphFusion(D)
    xs = _inputs(requires_grad=True)
    fused = gfn(*xs)
    for layer in range(3):
        (grad,) = torch.autograd.grad(
            fused[:, layer * D : (layer + 1) * D].sum(), xs[k], retain_graph=True
        )
        assert grad.abs().sum() > 0
