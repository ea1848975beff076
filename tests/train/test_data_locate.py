import shutil

import pytest

from train.data import DataError, DataFileNotFound, load_dataset, write_demo


def test_missing_file_says_what_where_and_where_from(tmp_path):
    with pytest.raises(DataFileNotFound) as err:
        load_dataset("mosei", tmp_path)
    msg = str(err.value)
    assert isinstance(err.value, DataError) and isinstance(err.value, FileNotFoundError)
    for needle in (
        str(tmp_path / "mosei_senti_data.pkl"),
        str(tmp_path / "MOSEI" / "Processed" / "aligned_50.pkl"),
        str(tmp_path / "mosei.pkl"),
        "Multimodal-Transformer",
        "MMSA",
        "BERT_multimodal_transformer",
        "--demo",
    ):
        assert needle in msg


def test_missing_file_for_an_explicit_format_lists_only_that_format(tmp_path):
    with pytest.raises(DataFileNotFound) as err:
        load_dataset("iemocap", tmp_path, "mult")
    msg = str(err.value)
    assert "iemocap_data.pkl" in msg and "iemocap_data_noalign.pkl" in msg and "MMSA" not in msg


@pytest.mark.parametrize(
    "name, fmt, message",
    [
        ("sims", "auto", "name: unknown dataset 'sims'"),
        ("mosi", "csv", "fmt: unknown format 'csv'"),
        ("iemocap", "mmsa", "iemocap is not published in the 'mmsa' format; available: ['mult']"),
    ],
)
def test_bad_name_or_format(tmp_path, name, fmt, message):
    with pytest.raises(DataError, match=message.replace("[", r"\[").replace("(", r"\(")):
        load_dataset(name, tmp_path, fmt)


def test_auto_prefers_mult_and_accepts_a_file_path(tmp_path, demo_tokenizer):
    tiny = {"n_train": 4, "n_valid": 2, "n_test": 2, "seq_len": 6}
    magbert = write_demo("mosi", tmp_path, "magbert", **tiny)
    assert load_dataset("mosi", tmp_path, tokenizer=demo_tokenizer).info.fmt == "magbert"
    mult = write_demo("mosi", tmp_path, "mult", **tiny)
    assert load_dataset("mosi", tmp_path).info.path == mult
    assert load_dataset("MOSI", magbert, tokenizer=demo_tokenizer).info.fmt == "magbert"
    with pytest.raises(DataError, match="not a standard mosi file name"):
        load_dataset("mosi", shutil.copy(magbert, tmp_path / "renamed.pkl"))


def test_unreadable_pickle(tmp_path):
    (tmp_path / "mosi_data.pkl").write_bytes(b"not a pickle")
    with pytest.raises(DataError, match="mosi_data.pkl: cannot be unpickled"):
        load_dataset("mosi", tmp_path)
