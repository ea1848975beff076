import pickle

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression, Ridge

from train.data import DataError, write_demo
from train.data.demo import DEMO_FORMATS, DEMO_VOCAB, DIMS, NEGATIVE, POSITIVE

PAIRS = [
    (n, f, a)
    for n, fmts in DEMO_FORMATS.items()
    for f in fmts
    for a in ((True, False) if f != "magbert" else (True,))
]


def block_masks(mask):
    """Every row of a mask is one contiguous run of real steps."""
    steps = torch.arange(mask.shape[1])
    first = torch.where(mask, steps, mask.shape[1]).min(1).values
    last = torch.where(mask, steps, -1).max(1).values
    return bool((mask.sum(1) == last - first + 1).all())


@pytest.mark.parametrize("name, fmt, aligned", PAIRS)
def test_round_trip(demo_bundle, name, fmt, aligned):
    bundle = demo_bundle(name, fmt, aligned=aligned)
    info = bundle.info
    text_dim, audio_dim, vision_dim = DIMS[(fmt, name)]
    assert (info.name, info.fmt) == (name, fmt)
    assert info.dims == {
        "text": None if fmt != "mult" else text_dim,
        "audio": audio_dim,
        "vision": vision_dim,
    }
    assert info.text_kind == ("features" if fmt == "mult" else "tokens")
    assert [len(s) for s in bundle.splits().values()] == [32, 8, 8]
    t = bundle.train.tensors
    for m in ("text", "audio", "vision"):
        mask = t[f"{m}_mask"]
        assert mask.dtype == torch.bool and block_masks(mask) and mask.any(1).all()
        if fmt == "mult":
            assert mask[:, -1].all() and not mask[:, 0].all()  # left padding, lengths vary
        if m != "text" or fmt == "mult":
            x = t[m]
            assert torch.isfinite(x).all() and x.shape[:2] == mask.shape
            assert (x[~mask] == 0).all() and x[mask].abs().sum(-1).gt(0).float().mean() > 0.9
    if fmt == "mmsa":
        assert t["text_mask"][:, 0].all() and (t["text_ids"][~t["text_mask"]] == 0).all()
    if name == "iemocap":
        assert t["label"].dtype == torch.long and t["label"].sum(1).eq(1).all()
    else:
        assert t["label"].dtype == torch.float32 and t["label"].abs().le(3).all()


def test_mult_file_has_the_format_quirks(tmp_path):
    with open(write_demo("mosi", tmp_path, n_train=20, n_valid=2, n_test=2, seq_len=10), "rb") as f:
        split = pickle.load(f)["train"]
    assert split["text"].shape == (20, 10, 300) and split["labels"].shape == (20, 1, 1)
    assert np.isneginf(split["audio"]).any() and isinstance(split["id"][0], bytes)
    assert (split["text"][:, 0] == 0).any() and (split["text"][:, -1] != 0).all()  # left padding


def test_same_seed_same_file(tmp_path):
    kw = {"n_train": 5, "n_valid": 2, "n_test": 2, "seq_len": 6}
    a = write_demo("iemocap", tmp_path / "a", seed=3, **kw).read_bytes()
    assert a == write_demo("iemocap", tmp_path / "b", seed=3, **kw).read_bytes()
    assert a != write_demo("iemocap", tmp_path / "c", seed=4, **kw).read_bytes()


def test_never_overwrites_a_real_file(tmp_path):
    (tmp_path / "mosi_data.pkl").write_bytes(b"real data")
    with pytest.raises(DataError, match="not a demo file"):
        write_demo("mosi", tmp_path)
    assert (tmp_path / "mosi_data.pkl").read_bytes() == b"real data"
    path = write_demo("mosei", tmp_path, n_train=3, n_valid=1, n_test=1)
    # a demo is replaced
    assert write_demo("mosei", tmp_path, n_train=4, n_valid=1, n_test=1) == path


def test_unpublished_pair_is_refused(tmp_path):
    with pytest.raises(DataError, match=r"no 'magbert' demo for iemocap"):
        write_demo("iemocap", tmp_path, "magbert")


def pooled(split, m):
    mask = split[f"{m}_mask"][..., None].float()
    return ((split[m] * mask).sum(1) / mask.sum(1)).numpy()


@pytest.mark.parametrize(
    "name, fmt", [("mosi", "mult"), ("mosei", "mmsa"), ("mosi", "magbert"), ("iemocap", "mult")]
)
def test_every_modality_carries_a_learnable_signal(demo_bundle, name, fmt):
    bundle = demo_bundle(name, fmt, n_train=200, n_valid=2, n_test=100, seq_len=10)
    tr, te = bundle.train.tensors, bundle.test.tensors
    modalities = ["audio", "vision"] + (["text"] if fmt == "mult" else [])
    for m in modalities:
        if name == "iemocap":
            clf = LogisticRegression(max_iter=300).fit(pooled(tr, m), tr["label"].argmax(1).numpy())
            # chance 0.25
            assert (clf.predict(pooled(te, m)) == te["label"].argmax(1).numpy()).mean() > 0.5, m
        else:
            pred = Ridge(alpha=10.0).fit(pooled(tr, m), tr["label"].numpy()).predict(pooled(te, m))
            assert np.corrcoef(pred, te["label"].numpy())[0, 1] > 0.5, m
    if fmt != "mult":  # token formats: sentiment words follow the score
        pos = [DEMO_VOCAB.index(w) for w in POSITIVE]
        neg = [DEMO_VOCAB.index(w) for w in NEGATIVE]
        ids = te["text_ids"]
        lean = torch.isin(ids, torch.tensor(pos)).sum(1) - torch.isin(ids, torch.tensor(neg)).sum(1)
        assert np.corrcoef(lean.numpy(), te["label"].numpy())[0, 1] > 0.5
