import numpy as np
import pytest
import torch

from train.data import DataError, load_dataset


def mult_split(n=3, t=5, dims=(4, 3, 2), lengths=(2, 5, 3), labels=None):
    """A MulT split, left-padded to the given lengths, with -inf in audio padding."""
    rng = np.random.default_rng(len(lengths))
    split = {}
    for m, d in zip(("text", "audio", "vision"), dims):
        x = rng.uniform(0.5, 1.0, (n, t, d)).astype(np.float32)
        for i, length in enumerate(lengths):
            x[i, : t - length] = 0.0
        split[m] = x
    for i, length in enumerate(lengths):
        split["audio"][i, : t - length, 0] = -np.inf
    split["labels"] = (
        np.linspace(-3, 3, n, dtype=np.float32).reshape(n, 1, 1) if labels is None else labels
    )
    split["id"] = np.array([b"vid_%d" % i for i in range(n)])  # MOSI ids are bytes
    return split


def mult_file(**kwargs):
    return {s: mult_split(**kwargs) for s in ("train", "valid", "test")}


def test_left_padded_masks_labels_and_inf(write_pickle):
    bundle = load_dataset("mosi", write_pickle(mult_file(), "mosi_data.pkl").parent)
    info = bundle.info
    assert (info.fmt, info.task, info.text_kind, info.dims, info.emotions) == (
        "mult",
        "regression",
        "features",
        {"text": 4, "audio": 3, "vision": 2},
        [],
    )
    t = bundle.train.tensors
    for m in ("text", "audio", "vision"):
        assert t[f"{m}_mask"].sum(1).tolist() == [2, 5, 3]
        assert t[f"{m}_mask"][:, -1].all()  # left padding: the last step is real
    assert torch.isfinite(t["audio"]).all() and (t["audio"][0, :3] == 0).all()
    assert torch.allclose(t["label"], torch.tensor([-3.0, 0.0, 3.0]))
    item = bundle.train[1]
    assert item["label"].shape == () and item["label"].dtype == torch.float32
    assert item["index"].item() == 1 and item["text_mask"].dtype == torch.bool


def test_aligned_mask_survives_zero_steps_in_one_modality(write_pickle):
    data = mult_file()
    for s in data.values():
        s["vision"][:, -1] = 0.0  # face lost on the last frame
        s["vision"][2, :] = 0.0  # and for a whole clip
    t = load_dataset("mosi", write_pickle(data, "mosi_data.pkl")).train.tensors
    assert t["vision_mask"].sum(1).tolist() == [2, 5, 3]
    assert torch.equal(t["vision_mask"], t["text_mask"])


def test_noalign_masks_per_modality(write_pickle):
    data = {s: mult_split() for s in ("train", "valid", "test")}
    for s in data.values():
        audio = np.zeros((3, 8, 3), np.float32)
        audio[:, -4:] = 1.0
        audio[0, -1] = 0.0  # a silent last step is still real: it follows data
        s["audio"] = audio
    t = load_dataset("mosi", write_pickle(data, "mosi_data_noalign.pkl")).train.tensors
    assert t["audio_mask"].shape == (3, 8) and t["audio_mask"].sum(1).tolist() == [4, 4, 4]
    assert t["text_mask"].sum(1).tolist() == [2, 5, 3]


def test_iemocap_one_hot_labels(write_pickle):
    labels = np.zeros((3, 4, 2), np.float32)
    labels[:, :, 0] = 1
    labels[0, 1] = (0, 1)  # Happy
    labels[1, 3] = (0, 1)  # Angry
    data = {s: mult_split(labels=labels) for s in ("train", "valid", "test")}
    for s in data.values():
        del s["id"]  # IEMOCAP has no ids
    bundle = load_dataset("iemocap", write_pickle(data, "iemocap_data.pkl").parent)
    assert bundle.info.task == "emotion" and bundle.info.emotions == [
        "Neutral",
        "Happy",
        "Sad",
        "Angry",
    ]
    label = bundle.train.tensors["label"]
    assert label.dtype == torch.long and label.tolist() == [
        [0, 1, 0, 0],
        [0, 0, 0, 1],
        [0, 0, 0, 0],
    ]


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d: d["valid"].pop("audio"), "[valid]: missing key 'audio'"),
        (
            lambda d: d["test"].update(labels=np.zeros((3, 2), np.float32)),
            "'labels': expected 3 sentiment scores",
        ),
        (
            lambda d: d["train"].update(vision=np.zeros((2, 5, 2), np.float32)),
            "'vision': expected shape (3, *, *), got (2, 5, 2)",
        ),
        (
            lambda d: d["train"].update(text=np.zeros((3, 5), np.float32)),
            "'text': expected shape (N, *, *), got (3, 5)",
        ),
        (lambda d: d.update(dev=d.pop("valid")), "missing split(s) ['valid']"),
        (lambda d: d["train"].update(labels=np.full((3, 1, 1), 4.0, np.float32)), "in [-3, 3]"),
        (
            lambda d: d["train"].update(audio=np.zeros((3, 5, 7), np.float32)),
            "audio feature size differs between splits",
        ),
    ],
)
def test_malformed_files_name_the_problem(write_pickle, change, message):
    data = mult_file()
    change(data)
    with pytest.raises(DataError) as err:
        load_dataset("mosi", write_pickle(data, "mosi_data.pkl").parent)
    assert message in str(err.value) and "mosi_data.pkl" in str(err.value)


def test_iemocap_labels_must_be_one_hot(write_pickle):
    data = {
        s: mult_split(labels=np.ones((3, 4, 2), np.float32)) for s in ("train", "valid", "test")
    }
    with pytest.raises(DataError, match=r"'labels': expected one-hot"):
        load_dataset("iemocap", write_pickle(data, "iemocap_data.pkl").parent)
    data = {
        s: mult_split(labels=np.zeros((3, 1, 1), np.float32)) for s in ("train", "valid", "test")
    }
    with pytest.raises(DataError, match=r"expected shape \(3, 4, 2\), got \(3, 1, 1\)"):
        load_dataset("iemocap", write_pickle(data, "iemocap_data.pkl").parent)


def test_nan_outside_audio_is_zeroed_with_a_warning(write_pickle):
    data = mult_file()
    data["train"]["vision"][1, 2, 0] = np.nan
    with pytest.warns(UserWarning, match=r"\[train\] 'vision': 1 non-finite"):
        t = load_dataset("mosi", write_pickle(data, "mosi_data.pkl")).train.tensors
    assert torch.isfinite(t["vision"]).all()
