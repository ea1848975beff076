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
