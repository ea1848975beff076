"""Shared fixtures for train/ tests: tiny demo bundles and a tiny local BERT tokenizer."""
import pickle

import pytest

from train.data import load_dataset, write_demo, write_demo_vocab

TINY = {"n_train": 32, "n_valid": 8, "n_test": 8, "seq_len": 8}


@pytest.fixture(scope="session")
def demo_tokenizer(tmp_path_factory):
    """transformers.BertTokenizer over the demo vocabulary (no download)."""
    from transformers import BertTokenizer

    return BertTokenizer(str(write_demo_vocab(tmp_path_factory.mktemp("vocab"))))


@pytest.fixture
def demo_bundle(tmp_path, demo_tokenizer):
    """demo_bundle(name, fmt="auto", **write_demo_kwargs) -> DataBundle of a tiny demo file in tmp_path."""

    def make(name, fmt="auto", **kwargs):
        path = write_demo(name, tmp_path, fmt, **{**TINY, **kwargs})
        return load_dataset(name, path, fmt, tokenizer=demo_tokenizer, max_seq_len=kwargs.get("seq_len", 8) + 4)

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
