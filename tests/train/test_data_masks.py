import torch

from train.data.masks import left_padded_mask, length_mask, nonzero_steps, right_padded_mask


def seq(rows):
    """(N, T, 1) features from nested lists of per-step values."""
    return torch.tensor(rows, dtype=torch.float32)[..., None]


def test_left_padding_keeps_interior_and_last_zero_steps():
    x = seq(
        [
            [0, 0, 1, 0, 2, 0],  # zero steps inside and at the end are real
            [0, 0, 0, 0, 0, 3],
            [4, 0, 0, 0, 0, 0],
        ]
    )
    mask = left_padded_mask(nonzero_steps(x))
    assert mask.tolist() == [
        [False, False, True, True, True, True],
        [False] * 5 + [True],
        [True] * 6,
    ]


def test_right_padding_mirrors_left():
    x = seq([[1, 0, 2, 0, 0, 0], [0, 0, 0, 0, 0, 5]])
    mask = right_padded_mask(nonzero_steps(x))
    assert mask.tolist() == [[True, True, True, False, False, False], [True] * 6]


def test_empty_sequence_keeps_the_step_next_to_the_padding():
    x = seq([[0, 0, 0]])
    assert left_padded_mask(nonzero_steps(x)).tolist() == [[False, False, True]]
    assert right_padded_mask(nonzero_steps(x)).tolist() == [[True, False, False]]
    assert length_mask(torch.tensor([0, 2, 3]), 3).tolist() == [
        [True, False, False],
        [True, True, False],
        [True, True, True],
    ]


def test_nonzero_steps_combines_modalities():
    a = seq([[0, 0, 1, 1]])
    v = seq([[0, 2, 0, 0]])
    assert left_padded_mask(nonzero_steps(a, v)).tolist() == [[False, True, True, True]]
    # any nonzero feature counts, not the sum (which is 0 here)
    both = torch.tensor([[[0.0, 0.0], [1.0, -1.0]]])
    assert nonzero_steps(both).tolist() == [[False, True]]
