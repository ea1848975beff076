"""The paper's ablation and comparison tables (Tables 4-7; 9, the memory, is not the paper's) as
data: one row = a key, the paper's row name, the train/main.py flags that make it, and the numbers
the paper prints for it.

The paper's numbers are CMU-MOSI with a BERT text encoder (copied from the paper's text); they
are shown beside measured rows for reference only. train/ablate.py runs these rows.
"""

from typing import NamedTuple

PAPER_COLUMNS = ("Acc7", "Acc2", "F1", "MAE", "Corr")


class Row(NamedTuple):
    key: str  # short name, used for the output folder and --rows
    name: str  # the paper's row name
    flags: tuple  # train/main.py flags that make this row
    paper: tuple  # Acc7, Acc2, F1 (percent), MAE, Corr as printed in the paper; () if absent


class Table(NamedTuple):
    number: int
    title: str
    rows: tuple
    note: str = ""  # printed under the measured table


def _rows(*rows):
    return tuple(Row(key, name, tuple(flags), paper) for key, name, flags, paper in rows)


HYCON = ("hycon", "HyCon", (), (46.6, 85.2, 85.1, 0.713, 0.790))
HYCON_V2 = ("v2", "HyCon-v2", ("--pair-selection",), (47.7, 85.7, 85.6, 0.705, 0.805))

TABLES = {
    4: Table(
        4,
        "Ablation Studies on the CMU-MOSI Dataset",
        _rows(
            (
                "no-contrastive",
                "HyCon (W/O Contrast Learning)",
                ("--no-contrastive",),
                (43.2, 82.7, 82.8, 0.769, 0.774),
            ),
            (
                "no-refinement",
                "HyCon (W/O Refinement Loss)",
                ("--no-refinement",),
                (45.5, 84.9, 84.9, 0.733, 0.789),
            ),
            (
                "no-margin",
                "HyCon (W/O Modality Margin α)",
                ("--no-margin",),
                (44.2, 84.6, 84.5, 0.739, 0.785),
            ),
            ("no-iamcl", "HyCon (W/O L_IAMCL)", ("--no-iamcl",), (45.0, 83.2, 83.2, 0.752, 0.787)),
            ("no-iemcl", "HyCon (W/O L_IEMCL)", ("--no-iemcl",), (42.8, 83.7, 83.4, 0.768, 0.760)),
            ("no-scl", "HyCon (W/O L_SCL)", ("--no-scl",), (47.0, 84.0, 84.0, 0.748, 0.776)),
            HYCON,
            (
                "v2-no-positive-selection",
                "HyCon-v2 (W/O Positive Selection)",
                ("--pair-selection", "--no-positive-selection"),
                (45.3, 85.5, 85.5, 0.714, 0.793),
            ),
            (
                "v2-no-negative-selection",
                "HyCon-v2 (W/O Negative Selection)",
                ("--pair-selection", "--no-negative-selection"),
                (45.3, 85.7, 85.6, 0.725, 0.794),
            ),
            HYCON_V2,
        ),
        note=(
            "HyCon-v2 without positive (negative) selection keeps that side of eqs. 7/10 as an "
            "unweighted sum over all its pairs while the other side stays a weighted average whose "
            "weights sum to 1, as the paper defines it. That moves the ratio sum_P / (sum_P + "
            "sum_N) before any training: on random batches (K = 32, d = 50, two classes) to 0.93 / "
            "0.96 (IAMCL / IEMCL) without positive selection and 0.05 / 0.03 without negative "
            "selection, against 0.50 for HyCon and 0.42 / 0.38 for HyCon-v2 (docs/losses.md). "
            "These rows change the balance of the two sides, not only the selection; this is the "
            "paper's definition, not a bug."
        ),
    ),
    5: Table(
        5,
        "Discussion on the Fusion Strategies on HyCon",
        _rows(
            ("concat", "Concatenation", ("--fusion", "concat"), (44.8, 84.3, 84.1, 0.762, 0.786)),
            ("add", "Addition (defaulted)", ("--fusion", "add"), (46.6, 85.2, 85.1, 0.713, 0.790)),
            ("tensor", "Tensor Fusion", ("--fusion", "tensor"), (43.7, 83.5, 83.5, 0.763, 0.791)),
            ("graph", "Graph Fusion", ("--fusion", "graph"), (46.0, 85.1, 85.3, 0.729, 0.801)),
        ),
    ),
    6: Table(
        6,
        "Discussion on the Selection of Modality Margin α on CMU-MOSI",
        _rows(
            ("alpha-0.5", "HyCon (α = 0.5)", ("--alpha", "0.5"), (42.2, 83.8, 83.7, 0.751, 0.784)),
            ("alpha-0.7", "HyCon (α = 0.7)", ("--alpha", "0.7"), (46.3, 83.8, 83.8, 0.737, 0.795)),
            ("alpha-0.8", "HyCon (α = 0.8)", ("--alpha", "0.8"), (46.6, 85.2, 85.1, 0.713, 0.790)),
            ("alpha-0.9", "HyCon (α = 0.9)", ("--alpha", "0.9"), (46.1, 84.2, 84.3, 0.747, 0.783)),
        ),
    ),
    7: Table(
        7,
        "Comparison of Loss Functions",
        _rows(
            (
                "triplet",
                "Triplet Loss",
                ("--contrastive-loss", "triplet"),
                (43.4, 83.5, 83.4, 0.797, 0.777),
            ),
            (
                "hard-triplet",
                "Hard-triplet Mining",
                ("--contrastive-loss", "hard-triplet"),
                (45.5, 84.3, 84.2, 0.753, 0.776),
            ),
            (
                "npair",
                "N-pair Loss",
                ("--contrastive-loss", "npair"),
                (45.7, 83.8, 83.9, 0.767, 0.768),
            ),
            (
                "classical",
                "Classical Contrastive Loss",
                ("--contrastive-loss", "classical"),
                (46.3, 83.7, 83.6, 0.740, 0.791),
            ),
            HYCON,
            HYCON_V2,
        ),
    ),
    # Not in the paper (which has Tables 1-8): hycon_ext's cross-batch memory measured like an
    # ablation row. Rows without the paper's numbers carry an empty tuple.
    9: Table(
        9,
        "Beyond the paper: the cross-batch memory (HyConLoss(memory_size=Q))",
        _rows(
            HYCON,
            ("memory-256", "HyCon + memory (Q = 256)", ("--memory-size", "256"), ()),
            ("memory-1024", "HyCon + memory (Q = 1024)", ("--memory-size", "1024"), ()),
            HYCON_V2,
            (
                "v2-memory-1024",
                "HyCon-v2 + memory (Q = 1024)",
                ("--pair-selection", "--memory-size", "1024"),
                (),
            ),
        ),
        note=(
            "Not a table of the paper: each batch's anchors are also paired with the Q most recent "
            "samples of earlier batches (docs/losses.md). The paper's numbers are shown for the "
            "rows it has."
        ),
    ),
}
