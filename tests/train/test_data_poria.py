from pathlib import Path

import numpy as np
import pytest
import torch

from train.data import DataError, load_dataset

REAL = Path(__file__).resolve().parents[3] / "shared" / "data" / "real"


def poria_arrays(videos=10, slots=4):
    rng = np.random.default_rng(0)
    mask = np.zeros((videos, slots))
    for v in range(videos):
        mask[v, : 1 + v % slots] = 1
    label = np.zeros((videos, slots, 2))
    label[..., 1] = 1
    label[::2, 0] = (1, 0)  # first utterance of even videos is negative
    out = {}
    for part in ("train", "test"):
        out[f"{part}_mask"], out[f"{part}_label"] = mask, label
        for m in ("text", "audio", "video"):
            # padding is NOT zero
            out[f"{m}_{part}"] = rng.uniform(0.1, 1, (videos, slots, 5)).astype(np.float32)
    return out


def test_utterances_follow_the_mask(tmp_path):
    np.savez(tmp_path / "mosi_utterance_2way.npz", **poria_arrays())
    bundle = load_dataset("mosi", tmp_path)
    n_real = sum(1 + v % 4 for v in range(10))
    assert (bundle.info.fmt, bundle.info.dims) == ("poria", {"text": 5, "audio": 5, "vision": 5})
    assert len(bundle.train) + len(bundle.valid) == n_real and len(bundle.test) == n_real
    assert len(bundle.valid) == 1 + 9 % 4  # the last training video
    t = bundle.test.tensors
    assert t["text"].shape == (n_real, 1, 5) and t["vision_mask"].all()
    # video 0: one (negative) utterance, video 1: two positive ones, video 2 starts negative
    assert t["label"][:4].tolist() == [-1.0, 1.0, 1.0, -1.0]


def test_malformed_labels(tmp_path):
    arrays = poria_arrays()
    arrays["test_label"] = arrays["test_label"][..., :1]
    np.savez(tmp_path / "mosi_utterance_2way.npz", **arrays)
    with pytest.raises(
        DataError, match=r"'test_label': expected shape \(10, 4, 2\), got \(10, 4, 1\)"
    ):
        load_dataset("mosi", tmp_path, "poria")


def test_only_mosi_is_published_in_this_format(tmp_path):
    with pytest.raises(DataError, match=r"mosei is not published in the 'poria' format"):
        load_dataset("mosei", tmp_path, "poria")


@pytest.mark.skipif(not (REAL / "mosi_utterance_2way.npz").exists(), reason="real data absent")
def test_real_file_counts():
    bundle = load_dataset("mosi", REAL, "poria")
    assert len(bundle.train) + len(bundle.valid) == 1447 and len(bundle.test) == 752
    assert 100 < len(bundle.valid) < 300
    labels = torch.cat([s.tensors["label"] for s in bundle.splits().values()])
    # 1,176 of the 2,199 official MOSI labels are >= 0: column 1 of the one-hot is non-negative
    assert set(labels.tolist()) == {-1.0, 1.0} and int((labels > 0).sum()) == 1176
    assert bundle.train.tensors["text"].abs().sum(-1).gt(0).all()
