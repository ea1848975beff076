"""MAG-BERT pickles (Rahman et al. 2020): mosi.pkl, mosei.pkl.

From github.com/WasifurRahman/BERT_multimodal_transformer.
dict train/dev/test -> list of
  ((words, visual (n_words, dv), acoustic (n_words, da)), label, segment).
Tokenised as MAG-BERT's convert_to_features does: each word's visual/acoustic rows repeated
over its sub-tokens, truncated to max_seq_len - 2 tokens, then
  BERT:  [CLS] tokens [SEP], zero features on [CLS]/[SEP], right-padded;
  XLNet: tokens <sep> <cls>, zero features on <sep>/<cls>, left-padded
         (pad segment 3, <cls> segment 2).
text_mask covers the special tokens (the attention mask); audio_mask/vision_mask cover the word
steps only, so the last real audio/visual step is the last word's, not a zero [SEP] row.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from . import checks
from .bundle import DataBundle, DataInfo, TensorDictDataset
from .errors import DataError

SPLITS = {"train": "train", "valid": "dev", "test": "test"}  # bundle split -> file split


def read_magbert(path: Path, name: str, tokenizer, max_seq_len: int) -> DataBundle:
    if tokenizer is None:
        raise DataError(
            f"{path} is a MAG-BERT file of raw words: it needs a pretrained text encoder and its "
            "tokenizer (--text-encoder bert|xlnet, optionally --pretrained NAME_OR_PATH)"
        )
    if max_seq_len < 3:
        raise DataError(
            f"max_seq_len must be >= 3 (two special tokens and a word), got {max_seq_len}"
        )
    data = checks.load_pickle(path)
    checks.require_splits(data, tuple(SPLITS.values()), str(path))
    xlnet = "xlnet" in type(tokenizer).__name__.lower()
    splits, dims = {}, {"audio": {}, "vision": {}}
    for split, key in SPLITS.items():
        tensors = _read_split(data[key], f"{path} [{key}]", tokenizer, max_seq_len, xlnet)
        for m in dims:
            dims[m][split] = tensors[m].shape[-1]
        splits[split] = TensorDictDataset(tensors)
    dims = {"text": None, **{m: checks.same_dims(d, m, path) for m, d in dims.items()}}
    info = DataInfo(
        name=name, fmt="magbert", task="regression", text_kind="tokens", dims=dims, path=path
    )
    return DataBundle(**splits, info=info)


def _read_split(
    examples, where: str, tokenizer, max_len: int, xlnet: bool
) -> dict[str, torch.Tensor]:
    if not isinstance(examples, (list, tuple)) or not examples:
        raise DataError(
            f"{where}: expected a non-empty list of ((words, visual, acoustic), label, segment)"
        )
    rows = [
        _example(ex, f"{where} sample {i}", tokenizer, max_len, xlnet)
        for i, ex in enumerate(examples)
    ]
    out = {k: torch.stack([r[k] for r in rows]) for k in rows[0] if k != "label"}
    out["label"] = torch.tensor([r["label"] for r in rows], dtype=torch.float32)
    checks.check_sentiment_range(out["label"], f"{where} labels")
    return out


def _example(example, where: str, tokenizer, max_len: int, xlnet: bool) -> dict:
    try:
        (words, visual, acoustic), label, _segment = example
    except (TypeError, ValueError):
        raise DataError(f"{where}: expected ((words, visual, acoustic), label, segment)") from None
    if isinstance(words, str) or not all(isinstance(w, str) for w in words):
        raise DataError(f"{where}: words must be a list of str")
    n = len(words)
    visual = checks.features(visual, f"{where} visual", ndim=2, n=n)
    acoustic = checks.features(acoustic, f"{where} acoustic", ndim=2, n=n, allow_neg_inf=True)
    if np.asarray(label).size != 1:
        raise DataError(f"{where}: label must be one sentiment score, got shape {np.shape(label)}")

    tokens, word_of_token = [], []
    for i, word in enumerate(words):
        pieces = tokenizer.tokenize(word)
        tokens += pieces
        word_of_token += [i] * len(pieces)
    tokens, word_of_token = tokens[: max_len - 2], word_of_token[: max_len - 2]
    k, pad = len(tokens), max_len - len(tokens) - 2

    if xlnet:
        tokens = [tokenizer.pad_token] * pad + tokens + [tokenizer.sep_token, tokenizer.cls_token]
        segment = [3] * pad + [0] * (k + 1) + [2]
        text_mask = [0] * pad + [1] * (k + 2)
        word_start = pad
    else:
        tokens = (
            [tokenizer.cls_token] + tokens + [tokenizer.sep_token] + [tokenizer.pad_token] * pad
        )
        segment = [0] * max_len
        text_mask = [1] * (k + 2) + [0] * pad
        word_start = 1
    word_steps = slice(word_start, word_start + k)
    feats = {}
    for m, x in (("audio", acoustic), ("vision", visual)):
        f = torch.zeros(max_len, x.shape[1])
        f[word_steps] = x[word_of_token]
        feats[m] = f
    word_mask = torch.zeros(max_len, dtype=torch.bool)
    word_mask[word_steps] = True
    if k == 0:  # no word survived tokenisation: the separator step (zero features) stands in
        word_mask[word_start] = True
    return {
        "text_ids": torch.tensor(tokenizer.convert_tokens_to_ids(tokens)),
        "text_segment": torch.tensor(segment),
        "text_mask": torch.tensor(text_mask, dtype=torch.bool),
        **feats,
        "audio_mask": word_mask,
        "vision_mask": word_mask.clone(),
        "label": float(np.asarray(label).reshape(())),
    }
