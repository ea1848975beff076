"""Fusion of the three unimodal representations x^l, x^a, x^v (each (B, d)), Table 5.

Every module has .out_dim, the size of the fused representation it returns.
"""
import torch
from torch import nn

FUSIONS = ("add", "concat", "tensor", "graph")


class AddFusion(nn.Module):
    """Element-wise addition (the paper's default)."""

    def __init__(self, d):
        super().__init__()
        self.out_dim = d

    def forward(self, x_l, x_a, x_v):
        return x_l + x_a + x_v


class ConcatFusion(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.out_dim = 3 * d

    def forward(self, x_l, x_a, x_v):
        return torch.cat([x_l, x_a, x_v], dim=-1)


class TensorFusion(nn.Module):
    """TFN (Zadeh et al. 2017): outer product of [x^m; 1], flattened ((d+1)^3 values), then a
    linear layer back to d. The appended 1 keeps the unimodal and bimodal terms."""

    def __init__(self, d, dropout=0.1):
        super().__init__()
        self.out_dim = d
        self.post = nn.Sequential(nn.Dropout(dropout), nn.Linear((d + 1) ** 3, d), nn.ReLU())

    def forward(self, x_l, x_a, x_v):
        one = x_l.new_ones(x_l.shape[0], 1)
        l, a, v = (torch.cat([x, one], dim=1) for x in (x_l, x_a, x_v))
        outer = torch.einsum("bi,bj,bk->bijk", l, a, v)
        return self.post(outer.flatten(1))


class GraphFusion(nn.Module):
    """GFN-style graph fusion (Mai et al. AAAI 2020): unimodal, bimodal and trimodal nodes.

    Unimodal nodes are the x^m, weighted by attention; each bimodal node fuses a pair of
    unimodal nodes, weighted by attention over the three pairs; the trimodal node fuses the
    three bimodal nodes. The output concatenates the attended unimodal, bimodal and trimodal
    layers (3d values), as GFN passes all three layers on to the predictor.
    """

    PAIRS = ((0, 1), (0, 2), (1, 2))

    def __init__(self, d):
        super().__init__()
        self.out_dim = 3 * d
        self.uni_score = nn.Sequential(nn.Linear(d, d), nn.Tanh(), nn.Linear(d, 1))
        self.bimodal = nn.Sequential(nn.Linear(2 * d, d), nn.ReLU())
        self.bi_score = nn.Sequential(nn.Linear(d, d), nn.Tanh(), nn.Linear(d, 1))
        self.trimodal = nn.Sequential(nn.Linear(3 * d, d), nn.ReLU())

    @staticmethod
    def _attend(nodes, scorer):
        # nodes (B, n, d): softmax attention over the n nodes of one layer
        weights = torch.softmax(scorer(nodes), dim=1)
        return (weights * nodes).sum(1)

    def forward(self, x_l, x_a, x_v):
        uni = torch.stack([x_l, x_a, x_v], dim=1)
        bi = torch.stack([self.bimodal(torch.cat([uni[:, i], uni[:, j]], dim=-1)) for i, j in self.PAIRS], dim=1)
        tri = self.trimodal(bi.flatten(1))
        return torch.cat([self._attend(uni, self.uni_score), self._attend(bi, self.bi_score), tri], dim=-1)


def build_fusion(name, d):
    if name == "add":
        return AddFusion(d)
    if name == "concat":
        return ConcatFusion(d)
    if name == "tensor":
        return TensorFusion(d)
    if name == "graph":
        return GraphFusion(d)
    raise ValueError(f"fusion: expected one of {FUSIONS}, got {name!r}")
