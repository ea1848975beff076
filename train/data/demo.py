"""--demo: small synthetic files in each dataset's own published format, read by the same loaders.

A latent per sample (a sentiment score in [-3, 3] on the 1/3 grid, or one of the four IEMOCAP
emotions) drives a fixed direction in every modality's features (and, for token formats, the
choice of sentiment words), under Gaussian noise. Each format keeps its quirks: MulT left-pads
with zeros, sprinkles -inf into audio padding and loses the face on some last steps; MMSA
right-pads with lengths; MAG-BERT stores raw words with per-word features.
Token ids and words come from DEMO_VOCAB, which a tiny local BertTokenizer can load
(write_demo_vocab); the MulT demo needs no tokenizer at all.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np

from .errors import DataError
from .locate import FILES, check_name_fmt

DEMO_FORMATS = {
    "iemocap": ("mult",),
    "mosi": ("mult", "mmsa", "magbert"),
    "mosei": ("mult", "mmsa", "magbert"),
}
DEFAULT_FMT = "mult"  # GloVe-feature text: the demo trains without a pretrained BERT

# Feature sizes of the published files (text, audio, vision).
DIMS = {
    ("mult", "mosi"): (300, 5, 20),
    ("mult", "mosei"): (300, 74, 35),
    ("mult", "iemocap"): (300, 74, 35),
    ("mmsa", "mosi"): (768, 5, 20),
    ("mmsa", "mosei"): (768, 74, 35),
    ("magbert", "mosi"): (None, 74, 47),
    ("magbert", "mosei"): (None, 74, 35),
}
SIGNAL = {
    "text": 1.0,
    "audio": 0.7,
    "vision": 0.7,
}  # signal strength per modality; noise std is 0.5

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
NEUTRAL = [
    "the",
    "movie",
    "was",
    "it",
    "a",
    "and",
    "i",
    "this",
    "really",
    "so",
    "film",
    "plot",
    "actor",
    "scene",
]
POSITIVE = ["good", "great", "love", "happy", "nice", "fun", "best", "enjoy"]
NEGATIVE = ["bad", "awful", "hate", "sad", "boring", "worst", "poor", "dull"]
SUFFIXES = ["##ness", "##ly", "##s"]
DEMO_VOCAB = SPECIAL + NEUTRAL + POSITIVE + NEGATIVE + SUFFIXES
# Words outside the vocabulary that WordPiece splits into sub-tokens (exercises feature repetition).
DERIVED = {
    "goodness": ["good", "##ness"],
    "nicely": ["nice", "##ly"],
    "sadly": ["sad", "##ly"],
    "badly": ["bad", "##ly"],
    "movies": ["movie", "##s"],
}
WORDS = {
    1: POSITIVE + ["goodness", "nicely"],
    -1: NEGATIVE + ["sadly", "badly"],
    0: NEUTRAL + ["movies"],
}


def write_demo_vocab(directory) -> Path:
    """Write DEMO_VOCAB as directory/vocab.txt, loadable by transformers.BertTokenizer."""
    path = Path(directory) / "vocab.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(DEMO_VOCAB) + "\n")
    return path


def write_demo(
    name: str,
    data_dir,
    fmt: str = "auto",
    *,
    seed: int = 0,
    n_train: int = 600,
    n_valid: int = 150,
    n_test: int = 150,
    seq_len: int = 20,
    aligned: bool = True,
) -> Path:
    """Write a synthetic `name` file (format `fmt`, standard name) under data_dir; return its path.

    aligned=False writes the unaligned variant (MulT *_noalign.pkl, MMSA unaligned_50.pkl) whose
    audio/visual sequences are twice as long as the text. A sidecar <file>.demo.json marks the
    file as a demo; an existing file without one is never overwritten (it may be real data).
    """
    name = check_name_fmt(name, "auto")
    fmt = DEFAULT_FMT if fmt == "auto" else fmt
    if fmt not in DEMO_FORMATS[name]:
        raise DataError(
            f"fmt: no {fmt!r} demo for {name}; {name} is published as {list(DEMO_FORMATS[name])}"
        )
    if seq_len < 4:
        raise DataError(f"seq_len must be >= 4 (room for special tokens and words), got {seq_len}")
    sizes = {"train": n_train, "valid": n_valid, "test": n_test}
    if min(sizes.values()) < 1:
        raise DataError(f"n_train, n_valid and n_test must be >= 1, got {sizes}")
    files = FILES[fmt][name]
    file = files[0] if aligned or len(files) == 1 else files[1]
    path = Path(data_dir) / (name.upper() if fmt == "mmsa" else "") / file
    marker = path.with_name(path.name + ".demo.json")
    if path.exists() and not marker.exists():
        raise DataError(
            f"{path} exists and is not a demo file (no {marker.name}); not overwriting it"
        )

    rng = np.random.default_rng(seed)
    dims = DIMS[(fmt, name)]
    directions = {
        m: _directions(rng, 4 if name == "iemocap" else 1, d)
        for m, d in zip(("text", "audio", "vision"), dims)
        if d is not None
    }
    writer = {"mult": _mult_split, "mmsa": _mmsa_split, "magbert": _magbert_split}[fmt]
    data = {}
    for split, n in sizes.items():
        latent = _latent(rng, name, n)
        data["dev" if fmt == "magbert" and split == "valid" else split] = writer(
            rng, name, latent, directions, seq_len, aligned, split
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(data, f, protocol=4)
    marker.write_text(
        json.dumps(
            {
                "name": name,
                "fmt": fmt,
                "seed": seed,
                "sizes": sizes,
                "seq_len": seq_len,
                "aligned": aligned,
            }
        )
    )
    return path


def _directions(rng, k: int, d: int) -> np.ndarray:
    w = rng.standard_normal((k, d))
    return w / np.linalg.norm(w, axis=1, keepdims=True)


def _latent(rng, name: str, n: int) -> dict:
    if name == "iemocap":
        emotion = rng.integers(0, 4, n)
        return {"emotion": emotion, "code": np.eye(4)[emotion]}
    score = rng.integers(-9, 10, n) / 3.0
    return {"score": score, "code": score[:, None] / 3.0}


def _features(rng, latent, direction, modality: str, n: int, seq_len: int) -> np.ndarray:
    """(n, seq_len, d): the sample's signal at every step plus noise (the caller zeroes padding)."""
    signal = SIGNAL[modality] * latent["code"] @ direction
    noise = 0.5 * rng.standard_normal((n, seq_len, direction.shape[1]))
    return (signal[:, None, :] + noise).astype(np.float32)


def _lengths(rng, n: int, seq_len: int, low: int) -> np.ndarray:
    return rng.integers(min(low, seq_len), seq_len + 1, n)


def _mult_split(rng, name, latent, directions, seq_len, aligned, split) -> dict:
    n = len(latent["code"])
    steps = {
        "text": seq_len,
        "audio": seq_len if aligned else 2 * seq_len,
        "vision": seq_len if aligned else 2 * seq_len,
    }
    lengths = _lengths(rng, n, seq_len, max(2, seq_len // 4))
    out = {}
    for m, t in steps.items():
        x = _features(rng, latent, directions[m], m, n, t)
        length = lengths if aligned else _lengths(rng, n, t, max(2, t // 4))
        pad = np.arange(t)[None, :] < (t - length)[:, None]  # left padding
        x[pad] = 0.0
        if m == "audio":  # silence: -inf log-energies in the padding
            x[pad[:, :, None] & (rng.random(x.shape) < 0.3)] = -np.inf
        if m == "vision":  # face lost on the last frame of some clips
            x[rng.random(n) < 0.1, -1] = 0.0
        out[m] = x
    if name == "iemocap":
        labels = np.zeros((n, 4, 2), np.float32)
        labels[:, :, 0] = 1
        labels[np.arange(n), latent["emotion"]] = (0, 1)
        out["labels"] = labels
    else:
        out["labels"] = latent["score"].astype(np.float32).reshape(n, 1, 1)
        ids = [f"demo{split}{i:04d}" for i in range(n)]
        out["id"] = np.array([s.encode() for s in ids] if name == "mosi" else ids)
    return out


def _sentence(rng, score: float, n_words: int) -> list[str]:
    """Words whose sentiment words follow the score's sign, more of them the stronger the score."""
    p = 0.2 + 0.5 * abs(score) / 3
    sign = int(np.sign(score))
    return [
        str(rng.choice(WORDS[sign])) if rng.random() < p else str(rng.choice(WORDS[0]))
        for _ in range(n_words)
    ]


def _pieces(word: str) -> list[str]:
    return DERIVED.get(word, [word])


def _mmsa_split(rng, name, latent, directions, seq_len, aligned, split) -> dict:
    n = len(latent["code"])
    vocab = {t: i for i, t in enumerate(DEMO_VOCAB)}
    text_bert = np.zeros((n, 3, seq_len), np.int64)
    raw, text_len = [], np.zeros(n, np.int64)
    for i in range(n):
        words = _sentence(rng, latent["score"][i], int(rng.integers(2, seq_len - 1)))
        tokens = ["[CLS]"] + [p for w in words for p in _pieces(w)][: seq_len - 2] + ["[SEP]"]
        text_bert[i, 0, : len(tokens)] = [vocab[t] for t in tokens]
        text_bert[i, 1, : len(tokens)] = 1
        text_len[i] = len(tokens)
        raw.append(" ".join(words))
    out = {
        "text_bert": text_bert,
        "raw_text": raw,
        "id": np.array([f"demo{split}{i:04d}" for i in range(n)]),
        "regression_labels": latent["score"].astype(np.float32),
    }
    for m in ("text", "audio", "vision"):
        t = seq_len if aligned or m == "text" else 2 * seq_len
        length = text_len if aligned or m == "text" else _lengths(rng, n, t, max(2, t // 4))
        x = _features(rng, latent, directions[m], m, n, t)
        pad = np.arange(t)[None, :] >= length[:, None]  # right padding
        x[pad] = 0.0
        if m == "audio":
            x[pad[:, :, None] & (rng.random(x.shape) < 0.3)] = -np.inf
        out[m] = x
        if m != "text":
            out[f"{m}_lengths"] = length
    return out


def _magbert_split(rng, name, latent, directions, seq_len, aligned, split) -> list:
    examples = []
    for i, score in enumerate(latent["score"]):
        words = _sentence(rng, score, int(rng.integers(2, seq_len - 1)))
        one = {k: v[i : i + 1] for k, v in latent.items()}
        visual = _features(rng, one, directions["vision"], "vision", 1, len(words))[0]
        acoustic = _features(rng, one, directions["audio"], "audio", 1, len(words))[0]
        examples.append(
            ((words, visual, acoustic), np.array([[score]], np.float32), f"demo{split}{i:04d}[0]")
        )
    return examples
