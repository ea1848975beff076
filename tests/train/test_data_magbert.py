import numpy as np
import pytest
import torch

from train.data import DataError, load_dataset


def example(words, label, dv=3, da=2):
    n = len(words)
    visual = np.arange(1, n + 1, dtype=np.float64)[:, None] * np.ones((1, dv))  # row i holds i + 1
    acoustic = -np.arange(1, n + 1, dtype=np.float64)[:, None] * np.ones((1, da))
    return (words, visual, acoustic), np.array([[label]]), "vid[0]"


def magbert_file():
    split = [example(["the", "goodness", "was", "great"], 2.0), example(["sadly"], -1.5)]
    return {"train": split, "dev": split, "test": split}


def test_bert_layout_repeats_word_features_over_sub_tokens(write_pickle, demo_tokenizer):
    path = write_pickle(magbert_file(), "mosi.pkl")
    bundle = load_dataset("mosi", path.parent, tokenizer=demo_tokenizer, max_seq_len=8)
    assert (bundle.info.fmt, bundle.info.text_kind, bundle.info.dims) == (
        "magbert",
        "tokens",
        {"text": None, "audio": 2, "vision": 3},
    )
    t = bundle.train.tensors
    tokens = demo_tokenizer.convert_ids_to_tokens(t["text_ids"][0].tolist())
    assert tokens == ["[CLS]", "the", "good", "##ness", "was", "great", "[SEP]", "[PAD]"]
    assert t["text_mask"][0].tolist() == [True] * 7 + [False]
    assert t["vision"][0, :, 0].tolist() == [
        0,
        1,
        2,
        2,
        3,
        4,
        0,
        0,
    ]  # [CLS]/[SEP]/pad are zero rows
    assert t["audio"][0, :, 1].tolist() == [0, -1, -2, -2, -3, -4, 0, 0]
    assert t["audio_mask"][0].tolist() == [False] + [True] * 5 + [False, False]
    assert torch.equal(t["audio_mask"], t["vision_mask"]) and t["text_segment"].eq(0).all()
    assert demo_tokenizer.convert_ids_to_tokens(t["text_ids"][1].tolist())[:4] == [
        "[CLS]",
        "sad",
        "##ly",
        "[SEP]",
    ]
    assert torch.allclose(t["label"], torch.tensor([2.0, -1.5]))


def test_truncation_to_max_seq_len(write_pickle, demo_tokenizer):
    t = load_dataset(
        "mosi", write_pickle(magbert_file(), "mosi.pkl"), tokenizer=demo_tokenizer, max_seq_len=4
    ).train.tensors
    assert demo_tokenizer.convert_ids_to_tokens(t["text_ids"][0].tolist()) == [
        "[CLS]",
        "the",
        "good",
        "[SEP]",
    ]
    assert t["vision"][0, :, 0].tolist() == [0, 1, 2, 0] and t["audio_mask"][0].tolist() == [
        False,
        True,
        True,
        False,
    ]


class XLNetStubTokenizer:
    """Stub for transformers' XLNetTokenizer (needs a sentencepiece model): one piece per word."""

    pad_token, sep_token, cls_token = "<pad>", "<sep>", "<cls>"

    def tokenize(self, word):
        return [word]

    def convert_tokens_to_ids(self, tokens):
        return [{"<pad>": 5, "<sep>": 4, "<cls>": 3}.get(t, 10) for t in tokens]


def test_xlnet_layout_is_left_padded_with_cls_last(write_pickle):
    t = load_dataset(
        "mosi",
        write_pickle(magbert_file(), "mosi.pkl"),
        tokenizer=XLNetStubTokenizer(),
        max_seq_len=7,
    ).train.tensors
    assert t["text_ids"][1].tolist() == [5, 5, 5, 5, 10, 4, 3]
    assert t["text_segment"][1].tolist() == [3, 3, 3, 3, 0, 0, 2]
    assert t["text_mask"][1].tolist() == [False] * 4 + [True] * 3
    assert t["vision"][1, :, 0].tolist() == [0, 0, 0, 0, 1, 0, 0]
    assert t["vision_mask"][1].tolist() == [False] * 4 + [True, False, False]


def test_needs_a_tokenizer(write_pickle):
    with pytest.raises(DataError, match="--pretrained"):
        load_dataset("mosi", write_pickle(magbert_file(), "mosi.pkl"))


@pytest.mark.parametrize(
    "bad, message",
    [
        (
            ((["a", "b"], np.zeros((3, 3)), np.zeros((2, 2))), 1.0, "s"),
            "sample 0 visual: expected shape (2, *), got (3, 3)",
        ),
        ((["a"], 1.0, "s"), "sample 0: expected ((words, visual, acoustic), label, segment)"),
        (((["a"], np.zeros((1, 3)), np.zeros((1, 2))), 5.0, "s"), "in [-3, 3]"),
    ],
)
def test_malformed(write_pickle, demo_tokenizer, bad, message):
    data = magbert_file()
    data["dev"] = [bad]
    with pytest.raises(DataError) as err:
        load_dataset("mosi", write_pickle(data, "mosi.pkl"), tokenizer=demo_tokenizer)
    assert message in str(err.value) and "[dev]" in str(err.value)


def test_wrong_split_names(write_pickle, demo_tokenizer):
    data = magbert_file()
    data["valid"] = data.pop("dev")
    with pytest.raises(DataError, match=r"missing split\(s\) \['dev'\]"):
        load_dataset("mosi", write_pickle(data, "mosi.pkl"), tokenizer=demo_tokenizer)
