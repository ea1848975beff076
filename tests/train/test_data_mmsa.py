import numpy as np
import pytest
import torch

from train.data import DataError, load_dataset


def mmsa_split(t=6, ta=6, tv=6, text_len=(3, 6), audio_len=(2, 6), vision_len=(0, 4)):
    """An MMSA split of 2 samples, right-padded to the given lengths."""
    n = len(text_len)
    text_bert = np.zeros((n, 3, t), np.float64)  # stored as floats in some releases
    rng = np.random.default_rng(0)
    out = {
        "regression_labels": np.array([-1.4, 2.2], np.float32),
        "id": np.array(["a$_$1", "b$_$2"]),
        "text": rng.uniform(0.5, 1, (n, t, 8)).astype(np.float32),
    }
    for i, length in enumerate(text_len):
        text_bert[i, 0, :length] = np.arange(101, 101 + length)
        text_bert[i, 1, :length] = 1
        out["text"][i, length:] = 0
    out["text_bert"] = text_bert
    for m, steps, lengths, d in (("audio", ta, audio_len, 3), ("vision", tv, vision_len, 5)):
        x = rng.uniform(0.5, 1, (n, steps, d)).astype(np.float32)
        for i, length in enumerate(lengths):
            x[i, length:] = 0
        if m == "audio":
            x[0, -1, 0] = -np.inf
        out[m], out[f"{m}_lengths"] = x, list(lengths)
    return out


def mmsa_file(**kwargs):
    return {s: mmsa_split(**kwargs) for s in ("train", "valid", "test")}


def test_tokens_and_right_padded_lengths(write_pickle):
    bundle = load_dataset(
        "mosei",
        write_pickle(
            mmsa_file(ta=9, tv=7), "MOSEI/Processed/unaligned_50.pkl"
        ).parent.parent.parent,
    )
    assert (bundle.info.fmt, bundle.info.text_kind, bundle.info.dims) == (
        "mmsa",
        "tokens",
        {"audio": 3, "vision": 5, "text": None},
    )
    t = bundle.train.tensors
    assert "text" not in t and t["text_ids"].dtype == torch.long
    assert t["text_ids"][0].tolist() == [101, 102, 103, 0, 0, 0] and t["text_segment"].eq(0).all()
    assert t["text_mask"].sum(1).tolist() == [3, 6] and t["text_mask"][0, 0]
    assert t["audio_mask"].shape == (2, 9) and t["audio_mask"].sum(1).tolist() == [2, 6]
    assert t["audio_mask"][:, 0].all()  # right padding: the first step is real
    assert t["vision_mask"].sum(1).tolist() == [1, 4]  # a zero length keeps one (zero) step
    assert torch.isfinite(t["audio"]).all()
    assert torch.allclose(t["label"], torch.tensor([-1.4, 2.2]))


def test_aligned_without_lengths_follows_the_text(write_pickle):
    data = mmsa_file()
    for s in data.values():
        del s["audio_lengths"], s["vision_lengths"]
    t = load_dataset("mosi", write_pickle(data, "MOSI/aligned_50.pkl").parent.parent).train.tensors
    assert t["audio_mask"].sum(1).tolist() == [3, 6] and t["vision_mask"].sum(1).tolist() == [3, 6]


def test_text_features_when_no_text_bert(write_pickle):
    data = mmsa_file()
    for s in data.values():
        del s["text_bert"]
    bundle = load_dataset("mosi", write_pickle(data, "aligned_50.pkl").parent, "mmsa")
    assert bundle.info.text_kind == "features" and bundle.info.dims["text"] == 8
    assert bundle.train.tensors["text_mask"].sum(1).tolist() == [3, 6]


@pytest.mark.parametrize(
    "change, message",
    [
        (
            lambda s: s.update(audio_lengths=[2, 7]),
            "'audio_lengths': expected integer lengths in [0, 6]",
        ),
        (
            lambda s: s.update(text_bert=np.zeros((2, 2, 6))),
            "'text_bert': expected shape (2, 3, *), got (2, 2, 6)",
        ),
        (lambda s: s.pop("regression_labels"), "missing key 'regression_labels'"),
        (
            lambda s: s.update(vision=np.zeros((2, 6), np.float32)),
            "'vision': expected shape (2, *, *), got (2, 6)",
        ),
    ],
)
def test_malformed(write_pickle, change, message):
    data = mmsa_file()
    change(data["valid"])
    with pytest.raises(DataError) as err:
        load_dataset("mosi", write_pickle(data, "aligned_50.pkl"), "mmsa")
    assert message in str(err.value) and "[valid]" in str(err.value)
