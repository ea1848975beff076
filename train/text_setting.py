"""Which text encoder a run uses, on which file: the paper's setting unless that is impossible.

The paper encodes MOSI/MOSEI text with BERT (§3.2; 768-d language input, §4.4) and IEMOCAP text
with a Transformer over GloVe features (§4.5.2). So without --text-encoder, mosi/mosei use BERT
(bert-base-uncased) over a file that carries words or token ids (magbert, mmsa; --format auto
looks for those first), and iemocap the feature Transformer. Where the files or the weights make
BERT impossible, one line says that this is not the paper's setting and why, and the run goes on
with the feature Transformer; an explicit --text-encoder bert|xlnet that cannot be honoured is an
error naming the model and how to get it.

Weights come through transformers' from_pretrained: the Hugging Face cache first, then a
download into it where the network allows (HF_HUB_OFFLINE=1 skips the download attempt, which
otherwise retries for about a minute without a network).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from train.data.errors import DataError
from train.data.locate import find_file

PAPER_MODELS = {
    "bert": "bert-base-uncased",
    "xlnet": "xlnet-base-cased",
}  # MAG-BERT / MAG-XLNet's choices
TOKEN_FORMATS = ("magbert", "mmsa")  # files that carry words or token ids
FEATURE_FORMATS = ("mmsa", "mult", "poria")  # files that carry text features
TEXT_POOLS = ("last", "cls")
DEMO_BERT = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    max_position_embeddings=128,
)


@dataclass
class TextSetting:
    encoder: str  # "transformer" | "bert" | "xlnet"
    pretrained: str | None  # model name or folder for bert/xlnet
    fmt: str  # the format to read
    text: str  # what to read from an MMSA file: "auto" | "features"
    tokenizer: object = None
    explicit: bool = False  # the user named --text-encoder
    note: str | None = None  # one line when this is not the paper's setting


def load_pretrained(cls, name):
    """cls.from_pretrained(name): the local cache or folder first (no network round trip), then
    the normal download into the Hugging Face cache. OSError/ValueError when neither works."""
    from huggingface_hub.utils import logging as hub_logging
    from transformers.utils import logging

    logging.disable_progress_bar()  # a local load is quick; a download keeps its progress bar
    try:
        return cls.from_pretrained(name, local_files_only=True)
    except (OSError, ValueError):
        if Path(name).expanduser().exists() or os.environ.get("HF_HUB_OFFLINE", "0") not in (
            "0",
            "",
        ):
            raise
    finally:
        logging.enable_progress_bar()
    # Without a network, huggingface_hub logs each failed request before the OSError that the
    # caller turns into one line naming the model and how to get it: keep stderr to that line.
    verbosity = hub_logging.get_verbosity()
    hub_logging.set_verbosity_error()
    try:
        return cls.from_pretrained(name)
    finally:
        hub_logging.set_verbosity(verbosity)


def how_to_get(name):
    return (
        f'get it with network access: python -c "from transformers import AutoModel, '
        f"AutoTokenizer; AutoModel.from_pretrained('{name}'); "
        f"AutoTokenizer.from_pretrained('{name}')\" (fills the Hugging Face cache, "
        f"~/.cache/huggingface, which can be copied here), or pass --pretrained with a folder "
        f"written by save_pretrained"
    )


def _short(err):
    return str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__


def _note(why, path, fmt):
    return (
        f"note: not the paper's setting (BERT over the words of each utterance): {why}; "
        f"training the feature Transformer over the text features of {Path(path).name} ({fmt}) "
        f"instead"
    )


def _fallback(dataset, data_dir, fmt, why):
    """The feature Transformer on a file with text features, with the one-line note; DataError if
    there is no such file."""
    try:
        found, path = find_file(dataset, data_dir, fmt, prefer=FEATURE_FORMATS)
    except DataError:
        found = None
    if found not in FEATURE_FORMATS:
        raise DataError(
            f"{dataset}: {why}, and no file with text features (formats {list(FEATURE_FORMATS)}) "
            f"is in {data_dir} for the feature Transformer"
        )
    return TextSetting("transformer", None, found, "features", note=_note(why, path, found))


def resolve(dataset, data_dir, fmt="auto", encoder=None, pretrained=None):
    """The TextSetting of a run (before its data is read). encoder None: the paper's choice."""
    data_dir = Path(data_dir)
    explicit = encoder is not None
    if not explicit:
        encoder = "bert" if dataset in ("mosi", "mosei") else "transformer"
    if encoder == "transformer":
        return TextSetting("transformer", None, fmt, "features", explicit=explicit)
    name = pretrained or PAPER_MODELS[encoder]
    found, path = find_file(dataset, data_dir, fmt, prefer=TOKEN_FORMATS)
    if found not in TOKEN_FORMATS:
        why = (
            f"{path.name} ({found}) holds text features, not the words or token ids {encoder} needs"
        )
        if explicit:
            raise DataError(f"--text-encoder {encoder}: {why}; use a magbert or mmsa file")
        return _fallback(dataset, data_dir, fmt, why)
    from transformers import AutoTokenizer

    try:
        tokenizer = load_pretrained(AutoTokenizer, name)
    except (OSError, ValueError) as err:
        if explicit:
            raise DataError(
                f"--text-encoder {encoder}: cannot load the tokenizer of {name!r} ({_short(err)}); "
                f"{how_to_get(name)}"
            ) from None
        return _fallback(
            dataset,
            data_dir,
            fmt,
            f"{name} is not in the Hugging Face cache and could not be "
            f"downloaded ({_short(err)}); {how_to_get(name)}",
        )
    return TextSetting(encoder, name, found, "auto", tokenizer, explicit)


def after_loading(setting, info):
    """The setting once the data is read: an MMSA file without token ids (read as its features)
    cannot feed BERT."""
    if setting.encoder == "transformer" or info.text_kind == "tokens":
        return setting
    why = f"{Path(info.path).name} has no token ids"
    if setting.explicit:
        raise DataError(f"--text-encoder {setting.encoder}: {why}")
    return TextSetting(
        "transformer", None, info.fmt, "features", note=_note(why, info.path, info.fmt)
    )


def write_demo_bert(directory, seed=0):
    """A small randomly initialised BERT (DEMO_BERT sizes) with the demo vocabulary's tokenizer,
    saved in `directory` for from_pretrained: the demo's offline stand-in for bert-base-uncased."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizer

    from train.data import DEMO_VOCAB, write_demo_vocab

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = BertTokenizer(str(write_demo_vocab(directory)))
    from transformers.utils import logging

    with torch.random.fork_rng():  # the run's own seeding stays untouched
        torch.manual_seed(seed)
        logging.disable_progress_bar()
        try:
            BertModel(BertConfig(vocab_size=len(DEMO_VOCAB), **DEMO_BERT)).save_pretrained(
                directory
            )
        finally:
            logging.enable_progress_bar()
    tokenizer.save_pretrained(directory)
    return directory


def demo_plan(dataset, data_dir, fmt, encoder, pretrained, write):
    """--demo: (fmt, encoder, pretrained, log lines) of the synthetic data under data_dir, written
    when `write` (rank 0). MOSI/MOSEI with the default (BERT) text encoder get a MAG-BERT-format
    file of words and write_demo_bert's small random BERT, so the demo runs the paper's code path
    offline; anything else gets the file write_demo picks for fmt."""
    from train.data import write_demo

    data_dir = Path(data_dir)
    bert_demo = (
        dataset in ("mosi", "mosei")
        and encoder in (None, "bert")
        and fmt in ("auto", "magbert")
        and not pretrained
    )
    if bert_demo:
        fmt, encoder, pretrained = "magbert", "bert", str(data_dir / "tiny-bert")
    if not write:
        return fmt, encoder, pretrained, []
    lines = [
        f"demo: wrote synthetic {dataset} data to {write_demo(dataset, data_dir, fmt, seed=0)}"
    ]
    if bert_demo:
        write_demo_bert(pretrained)
        lines.append(
            f"demo: text encoder: a small randomly initialised BERT-architecture model "
            f"({DEMO_BERT['num_hidden_layers']} layers, hidden {DEMO_BERT['hidden_size']}; "
            f"{pretrained}), not the pretrained {PAPER_MODELS['bert']} of the paper: the demo "
            f"stays offline"
        )
    return fmt, encoder, pretrained, lines
