"""Fusion of the three unimodal representations x^l, x^a, x^v (each (B, d)), Table 5.

Every module has .out_dim, the size of the fused representation it returns.
"""

from typing import NamedTuple

import torch
import torch.nn.functional as F
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
        lang, a, v = (torch.cat([x, one], dim=1) for x in (x_l, x_a, x_v))
        outer = torch.einsum("bi,bj,bk->bijk", lang, a, v)
        return self.post(outer.flatten(1))


class GraphNodes(NamedTuple):
    """Every node of the graph and its weight, for one batch (B samples, d values per node)."""

    unimodal: torch.Tensor  # (B, 3, d): x^l, x^a, x^v
    unimodal_weights: torch.Tensor  # (B, 3): sigmoid scores, each in (0, 1), not normalised
    bimodal: torch.Tensor  # (B, 3, d): (l, a), (l, v), (a, v), weighted
    bimodal_weights: torch.Tensor  # (B, 3): softmax over the three pairs, sums to 1
    trimodal: torch.Tensor  # (B, 6, d): TRIMODAL pairs, weighted
    trimodal_weights: torch.Tensor  # (B, 6): softmax over the six pairs, sums to 1
    fused: torch.Tensor  # (B, 3d): [unimodal layer; bimodal layer; trimodal layer]


def _similarity(x, y):
    # softmax-normalised dot product, in (0, 1): the similarity HyCon's losses use too
    return (torch.softmax(x, -1) * torch.softmax(y, -1)).sum(-1)


class GraphFusion(nn.Module):
    """Graph Fusion Network (Mai, Hu and Xing, "Modality to Modality Translation: An Adversarial
    Representation Learning and Graph Fusion Network for Multimodal Fusion", AAAI 2020), the
    fusion the HyCon paper cites as [16] in Table 5.

    - Unimodal layer: the three x^m, each with a learned score s_m = sigmoid(w . x^m + b) (one
      scorer shared by the modalities); the layer's output is mean_m s_m x^m.
    - Bimodal layer: one node per pair (i, j), b_ij = F_bi([x^i; x^j]) (an MLP shared by the
      pairs). Its score is (s_i + s_j) / (sim(x^i, x^j) + SHIFT): two informative and
      *dissimilar* (complementary) modalities weigh most. The weights are the softmax of the
      scores over the three pairs; a node is elu(w_ij b_ij) and the layer output their sum.
    - Trimodal layer: one node per pair of a bimodal node with another bimodal node (3) or with
      the unimodal node it lacks (3), t = F_tri([node; node]), scored in the same way from the two
      parents' scores and the similarity of their representations, softmax over the six.
    - The fused vector concatenates the three layer outputs (3d values) for the predictor.

    sim is the softmax-normalised dot product; SHIFT = 0.5 keeps the denominator away from 0.
    """

    PAIRS = ((0, 1), (0, 2), (1, 2))  # bimodal nodes: (l, a), (l, v), (a, v)
    # trimodal nodes: ("b", i, j) pairs bimodal nodes i and j; ("u", i, m) bimodal node i with
    # the unimodal node m it does not contain
    TRIMODAL = (("b", 0, 1), ("b", 0, 2), ("b", 1, 2), ("u", 0, 2), ("u", 1, 1), ("u", 2, 0))
    SHIFT = 0.5

    def __init__(self, d, hidden=64):
        super().__init__()
        self.out_dim = 3 * d
        self.uni_score = nn.Linear(d, 1)
        self.bimodal_net = self._pair_net(d, hidden)
        self.trimodal_net = self._pair_net(d, hidden)

    @staticmethod
    def _pair_net(d, hidden):
        return nn.Sequential(
            nn.Linear(2 * d, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, d), nn.Tanh()
        )

    def _score(self, s_i, s_j, x_i, x_j):
        return (s_i + s_j) / (_similarity(x_i, x_j) + self.SHIFT)

    def graph(self, x_l, x_a, x_v):
        """All nodes and weights (GraphNodes)."""
        uni = torch.stack([x_l, x_a, x_v], dim=1)
        s_uni = torch.sigmoid(self.uni_score(uni)).squeeze(-1)  # (B, 3)
        uni_out = (s_uni.unsqueeze(-1) * uni).mean(1)

        reps = [self.bimodal_net(torch.cat([uni[:, i], uni[:, j]], -1)) for i, j in self.PAIRS]
        s_bi = torch.stack(
            [self._score(s_uni[:, i], s_uni[:, j], uni[:, i], uni[:, j]) for i, j in self.PAIRS], 1
        )
        w_bi = torch.softmax(s_bi, 1)
        bi = torch.stack([F.elu(w_bi[:, k : k + 1] * r) for k, r in enumerate(reps)], 1)

        inputs, scores = [], []
        for kind, i, j in self.TRIMODAL:
            if kind == "b":
                inputs.append(torch.cat([bi[:, i], bi[:, j]], -1))
                scores.append(self._score(s_bi[:, i], s_bi[:, j], reps[i], reps[j]))
            else:
                inputs.append(torch.cat([bi[:, i], uni[:, j]], -1))
                scores.append(self._score(s_bi[:, i], s_uni[:, j], reps[i], uni[:, j]))
        w_tri = torch.softmax(torch.stack(scores, 1), 1)
        tri = torch.stack(
            [F.elu(w_tri[:, k : k + 1] * self.trimodal_net(x)) for k, x in enumerate(inputs)], 1
        )

        fused = torch.cat([uni_out, bi.sum(1), tri.sum(1)], -1)
        return GraphNodes(uni, s_uni, bi, w_bi, tri, w_tri, fused)

    def forward(self, x_l, x_a, x_v):
        return self.graph(x_l, x_a, x_v).fused


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
