"""The paper's text setting by default (BERT for MOSI/MOSEI over words or token ids), the one-line
fallback to the feature Transformer, clear errors for an explicit BERT, --text-pool, and the
offline demo BERT. No test downloads anything: HF_HUB_OFFLINE=1 and tiny local models."""

import json
import types

import pytest
import torch

from train import text_setting
from train.data import DataError, load_dataset, write_demo
from train.main import main
from train.model import PretrainedTextEncoder


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    # bert-base-uncased is not in the cache here: fail fast
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _files(tmp_path, *fmts):
    for fmt in fmts:
        write_demo("mosi", tmp_path, fmt, n_train=24, n_valid=8, n_test=8, seq_len=6)
    return tmp_path


def test_default_mosi_prefers_a_word_file_and_loads_bert(tmp_path):
    data = _files(tmp_path / "d", "mult", "magbert")
    bert = text_setting.write_demo_bert(tmp_path / "bert")
    s = text_setting.resolve("mosi", data, "auto", None, str(bert))
    assert (s.encoder, s.fmt, s.pretrained, s.note, s.explicit) == (
        "bert",
        "magbert",
        str(bert),
        None,
        False,
    )
    assert s.tokenizer.tokenize("goodness") == ["good", "##ness"]
    # with the same two files the feature Transformer keeps MulT's file, as before
    assert text_setting.resolve("mosi", data, "auto", "transformer").fmt == "auto"
    assert text_setting.resolve("iemocap", data, "auto").encoder == "transformer"


def test_without_weights_one_line_says_it_is_not_the_papers_setting(tmp_path):
    data = _files(tmp_path, "mult", "magbert")
    s = text_setting.resolve("mosi", data, "auto")
    assert s.encoder == "transformer" and s.fmt == "mult" and s.pretrained is None
    assert s.note.startswith("note: not the paper's setting") and "\n" not in s.note
    assert "bert-base-uncased" in s.note and "mosi_data.pkl (mult)" in s.note


def test_a_feature_file_alone_gives_the_note_without_loading_weights(tmp_path, monkeypatch):
    data = _files(tmp_path, "mult")
    monkeypatch.setattr(
        text_setting, "load_pretrained", lambda *a: pytest.fail("weights need not be loaded")
    )
    s = text_setting.resolve("mosi", data, "auto")
    assert s.encoder == "transformer" and "holds text features" in s.note


def test_words_without_weights_or_features_is_an_error(tmp_path):
    data = _files(tmp_path, "magbert")
    with pytest.raises(DataError, match="bert-base-uncased.*no file with text features"):
        text_setting.resolve("mosi", data, "auto")


@pytest.mark.parametrize(
    "fmts, match",
    [
        (
            ("magbert",),
            r"--text-encoder bert: cannot load the tokenizer of 'bert-base-uncased'.*"
            r"AutoModel.from_pretrained\('bert-base-uncased'\).*--pretrained",
        ),
        (("mult",), "--text-encoder bert: mosi_data.pkl \\(mult\\) holds text features"),
    ],
)
def test_explicit_bert_that_cannot_run_is_a_clear_error(tmp_path, fmts, match):
    with pytest.raises(DataError, match=match):
        text_setting.resolve("mosi", _files(tmp_path, *fmts), "auto", "bert")


def test_mmsa_without_token_ids_falls_back_after_reading(tmp_path):
    info = types.SimpleNamespace(text_kind="features", fmt="mmsa", path=tmp_path / "aligned_50.pkl")
    default = text_setting.TextSetting("bert", "x", "mmsa", "auto")
    s = text_setting.after_loading(default, info)
    assert s.encoder == "transformer" and "aligned_50.pkl has no token ids" in s.note
    with pytest.raises(DataError, match="--text-encoder bert: aligned_50.pkl has no token ids"):
        text_setting.after_loading(
            text_setting.TextSetting("bert", "x", "mmsa", "auto", explicit=True), info
        )


def test_mmsa_reads_features_for_the_transformer_and_ids_for_bert(tmp_path):
    path = write_demo("mosi", tmp_path, "mmsa", n_train=16, n_valid=8, n_test=8, seq_len=6)
    assert load_dataset("mosi", path.parent, "mmsa", text="features").info.text_kind == "features"
    assert load_dataset("mosi", path.parent, "mmsa", text="auto").info.text_kind == "tokens"


def test_text_pool_cls_and_last(tmp_path):
    bert = text_setting.write_demo_bert(tmp_path / "bert")
    torch.manual_seed(0)
    last = PretrainedTextEncoder(str(bert), 4, "last").eval()
    cls = PretrainedTextEncoder(str(bert), 4, "cls").eval()
    cls.load_state_dict(last.state_dict())
    ids = torch.tensor([[2, 20, 21, 3, 0], [2, 22, 3, 0, 0]])  # [CLS] words [SEP] [PAD]
    mask = ids != 0
    with torch.no_grad():
        hidden = last.backbone(input_ids=ids, attention_mask=mask.long()).last_hidden_state
        torch.testing.assert_close(cls(ids, torch.zeros_like(ids), mask), cls.proj(hidden[:, 0]))
        torch.testing.assert_close(
            last(ids, torch.zeros_like(ids), mask), last.proj(hidden[[0, 1], [3, 2]])
        )
    with pytest.raises(ValueError, match="text_pool"):
        PretrainedTextEncoder(str(bert), 4, "mean")


@pytest.mark.slow
def test_demo_trains_the_small_random_bert_offline(tmp_path, capsys):
    summary = main(
        [
            "--dataset",
            "mosi",
            "--demo",
            "--epochs",
            "1",
            "--batch-size",
            "64",
            "--text-pool",
            "cls",
            "--backend",
            "reference",
            "--out",
            str(tmp_path),
        ]
    )
    printed = capsys.readouterr().out
    assert (
        "a small randomly initialised BERT-architecture model" in printed
        and "not the pretrained" in printed
    )
    saved = json.loads((tmp_path / "results.json").read_text())
    assert summary["format"] == "magbert" and saved["args"]["text_encoder"] == "bert"
    assert saved["args"]["pretrained"] == str(tmp_path / "demo-data" / "tiny-bert")


def test_cli_explicit_transformer_with_cls_pool_is_an_error(tmp_path):
    data = _files(tmp_path / "d", "mult")
    with pytest.raises(ValueError, match="--text-pool cls: applies to bert/xlnet"):
        main(
            [
                "--dataset",
                "mosi",
                "--data-dir",
                str(data),
                "--text-encoder",
                "transformer",
                "--text-pool",
                "cls",
                "--out",
                str(tmp_path / "o"),
            ]
        )


def test_a_failed_download_leaves_stderr_to_the_one_line_error(monkeypatch, caplog):
    """huggingface_hub logs each failed request; the caller's one-line error says it all."""
    from huggingface_hub.utils import logging as hub_logging

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)

    class Model:
        @staticmethod
        def from_pretrained(name, local_files_only=False):
            if not local_files_only:
                hub_logging.get_logger("huggingface_hub.file_download").warning("request failed")
            raise OSError(f"{name} is not in the cache")

    verbosity = hub_logging.get_verbosity()
    with pytest.raises(OSError, match="not in the cache"):
        text_setting.load_pretrained(Model, "some/model")
    assert "request failed" not in caplog.text
    assert hub_logging.get_verbosity() == verbosity
