"""Shared fixtures for train/ tests: tiny demo bundles and a tiny local BERT tokenizer."""

import pickle
import types

import pytest

from train.data import load_dataset, write_demo, write_demo_vocab

TINY = {"n_train": 32, "n_valid": 8, "n_test": 8, "seq_len": 8}


@pytest.fixture(scope="session")
def demo_tokenizer(tmp_path_factory):
    """transformers.BertTokenizer over the demo vocabulary (no download)."""
    from transformers import BertTokenizer

    return BertTokenizer(str(write_demo_vocab(tmp_path_factory.mktemp("vocab"))))


@pytest.fixture
def tiny_bert_magbert(tmp_path, demo_tokenizer):
    """A 1-layer BERT saved with the demo tokenizer (bert, its config) and MOSI demo files in
    MAG-BERT format (data), for the --text-encoder bert runs."""
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(
        vocab_size=demo_tokenizer.vocab_size,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
    )
    bert = tmp_path / "tiny-bert"
    transformers.BertModel(config).save_pretrained(bert)
    demo_tokenizer.save_pretrained(bert)
    data = tmp_path / "data"
    write_demo("mosi", data, "magbert", n_train=48, n_valid=16, n_test=16, seq_len=8)
    return types.SimpleNamespace(bert=bert, config=config, data=data)


@pytest.fixture
def demo_bundle(tmp_path, demo_tokenizer):
    """demo_bundle(name, fmt="auto", **write_demo_kwargs) -> DataBundle of a tiny demo file.

    The file is written in tmp_path.
    """

    def make(name, fmt="auto", **kwargs):
        path = write_demo(name, tmp_path, fmt, **{**TINY, **kwargs})
        return load_dataset(
            name, path, fmt, tokenizer=demo_tokenizer, max_seq_len=kwargs.get("seq_len", 8) + 4
        )

    return make


@pytest.fixture(scope="session")
def mosi_flags():
    """mosi_flags(data, out=None, lr="3e-3", batch_size="16") -> train/main.py flags of a tiny
    MOSI run on the demo files in data, with the reference backend (the same run with or without
    the built kernels).

    lr=None leaves --lr at its default; out adds --out. The list ends with --backend reference
    (then --out): callers may slice or extend it.
    """

    def flags(data, out=None, lr="3e-3", batch_size="16"):
        argv = ["--dataset", "mosi", "--data-dir", str(data)]
        if lr is not None:
            argv += ["--lr", str(lr)]
        argv += ["--batch-size", str(batch_size), "--backend", "reference"]
        if out is not None:
            argv += ["--out", str(out)]
        return argv

    return flags


@pytest.fixture
def write_pickle(tmp_path):
    """write_pickle(obj, relative_name) -> Path of obj pickled under tmp_path."""

    def write(obj, name):
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as f:
            pickle.dump(obj, f)
        return path

    return write
