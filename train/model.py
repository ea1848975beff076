"""The HyCon model (paper 3.2): unimodal networks, x^m = last real step (eq. 1), fusion, heads.

Batch keys (train/ contract): "text" (B, T, dt) features or "text_ids"/"text_segment" (B, T)
tokens, "audio" (B, Ta, da), "vision" (B, Tv, dv) and bool masks "<m>_mask", True where a step
is real. Sequences may be padded on either side; the masks say which steps are real.
"""

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn

from train.fusion import build_fusion

TEXT_ENCODERS = ("transformer", "bert", "xlnet")


@dataclass
class ModelConfig:
    d: int = 50  # size of every x^m (paper 4.4)
    layers: int = 1  # Transformer layers per modality
    heads: int = 5  # attention heads (must divide d)
    dropout: float = 0.1
    fusion: str = "add"
    text_encoder: str = "transformer"
    pretrained: str = None  # model name (Hugging Face cache / download) or folder for bert/xlnet
    text_pool: str = "last"  # bert/xlnet: x^l from the last real token (eq. 1) or the [CLS] token


class ModelOutput(NamedTuple):
    unimodal: tuple  # (x_l, x_a, x_v), each (B, d): the inputs of the contrastive loss
    fused: torch.Tensor
    output: torch.Tensor  # (B,) sentiment, or (B, E, 2) emotion logits


def last_real_step(seq, mask):
    """seq (B, T, d), mask (B, T) bool -> (B, d): the last step whose mask is True.
    A row without any real step (an empty sequence) takes its last step."""
    steps = torch.arange(seq.shape[1], device=seq.device).expand_as(mask)
    last = torch.where(mask, steps, torch.full_like(steps, -1)).max(1).values
    last = torch.where(last < 0, torch.full_like(last, seq.shape[1] - 1), last)
    return seq[torch.arange(seq.shape[0], device=seq.device), last]


def sinusoidal_positions(length, dim, device):
    pos = torch.arange(length, device=device, dtype=torch.float32)[:, None]
    freq = torch.exp(
        torch.arange(0, dim, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / dim)
    )
    table = torch.zeros(length, dim, device=device)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq[: dim // 2])
    return table


class SequenceEncoder(nn.Module):
    """Transformer encoder over a feature sequence with a key-padding mask; returns x^m (B, d)."""

    def __init__(self, in_dim, cfg):
        super().__init__()
        self.inp = nn.Linear(in_dim, cfg.d)
        layer = nn.TransformerEncoderLayer(
            cfg.d, cfg.heads, dim_feedforward=2 * cfg.d, dropout=cfg.dropout, batch_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, cfg.layers, enable_nested_tensor=False)
        self.out = nn.Linear(cfg.d, cfg.d)

    def forward(self, seq, mask):
        # an all-padding row would make attention NaN: let it attend to its (zero) steps
        mask = mask | ~mask.any(1, keepdim=True)
        h = self.inp(seq) + sinusoidal_positions(seq.shape[1], self.inp.out_features, seq.device)
        h = self.encoder(h, src_key_padding_mask=~mask)
        return self.out(last_real_step(h, mask))


class PretrainedTextEncoder(nn.Module):
    """BERT/XLNet (transformers AutoModel.from_pretrained: the Hugging Face cache, else a download)
    projected to d. pool "last": x^l is the last real token's state, as eq. 1 takes the last step
    of every modality (BERT's [SEP]); "cls": the [CLS] token's state, the usual BERT sentence
    summary (MAG-BERT's). XLNet puts <cls> last, so both pools take the same token there."""

    def __init__(self, name_or_path, d, pool="last"):
        super().__init__()
        from transformers import AutoModel

        from train.text_setting import TEXT_POOLS, how_to_get, load_pretrained

        if pool not in TEXT_POOLS:
            raise ValueError(f"text_pool: expected one of {TEXT_POOLS}, got {pool!r}")
        try:
            self.backbone = load_pretrained(AutoModel, name_or_path)
        except (OSError, ValueError) as err:  # missing files, or a folder without a model config
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise FileNotFoundError(
                f"--pretrained {name_or_path}: cannot load the model ({first}); "
                f"{how_to_get(name_or_path)}"
            ) from None
        self.pool = "last" if self.backbone.config.model_type == "xlnet" else pool
        self.proj = nn.Linear(self.backbone.config.hidden_size, d)

    def forward(self, ids, segment, mask):
        hidden = self.backbone(
            input_ids=ids, attention_mask=mask.long(), token_type_ids=segment
        ).last_hidden_state
        return self.proj(hidden[:, 0] if self.pool == "cls" else last_real_step(hidden, mask))


class HyConModel(nn.Module):
    def __init__(self, info, cfg):
        super().__init__()
        if cfg.d % cfg.heads:
            raise ValueError(f"heads: expected a divisor of d={cfg.d}, got {cfg.heads}")
        if cfg.text_encoder not in TEXT_ENCODERS:
            raise ValueError(
                f"text_encoder: expected one of {TEXT_ENCODERS}, got {cfg.text_encoder!r}"
            )
        self.task = info.task
        self.pretrained_text = cfg.text_encoder != "transformer"
        if self.pretrained_text:
            if info.text_kind != "tokens":
                raise ValueError(
                    f"text_encoder {cfg.text_encoder!r} needs token ids, but the {info.fmt} "
                    f"data was loaded as text features; use --text-encoder transformer"
                )
            if not cfg.pretrained:
                raise ValueError(
                    f"text_encoder {cfg.text_encoder!r}: --pretrained NAME_OR_PATH is required"
                )
            self.text = PretrainedTextEncoder(cfg.pretrained, cfg.d, cfg.text_pool)
        else:
            if info.text_kind != "features":
                raise ValueError(
                    "text_encoder 'transformer' needs text features, but the data holds token ids; "
                    "use --text-encoder bert|xlnet with --pretrained"
                )
            self.text = SequenceEncoder(info.dims["text"], cfg)
        self.audio = SequenceEncoder(info.dims["audio"], cfg)
        self.vision = SequenceEncoder(info.dims["vision"], cfg)
        self.fusion = build_fusion(cfg.fusion, cfg.d)
        n_out = 1 if self.task == "regression" else 2 * len(info.emotions)
        self.head = nn.Sequential(
            nn.Linear(self.fusion.out_dim, cfg.d),
            nn.ReLU(),
            nn.Dropout(cfg.dropout),
            nn.Linear(cfg.d, n_out),
        )

    def text_parameters(self):
        """Parameters of a pretrained text encoder (they get --text-lr); empty otherwise."""
        return list(self.text.backbone.parameters()) if self.pretrained_text else []

    def forward(self, batch):
        if self.pretrained_text:
            x_l = self.text(batch["text_ids"], batch["text_segment"], batch["text_mask"])
        else:
            x_l = self.text(batch["text"], batch["text_mask"])
        x_a = self.audio(batch["audio"], batch["audio_mask"])
        x_v = self.vision(batch["vision"], batch["vision_mask"])
        fused = self.fusion(x_l, x_a, x_v)
        out = self.head(fused)
        out = out.squeeze(-1) if self.task == "regression" else out.view(out.shape[0], -1, 2)
        return ModelOutput((x_l, x_a, x_v), fused, out)


def count_parameters(model):
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
