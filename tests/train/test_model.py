"""Model output shapes for every fusion and text encoder; task/pair-class helpers; the
comparison losses of eqs. 18-20 against hand-computed float64 values."""

import math
from types import SimpleNamespace

import pytest
import torch

from train.engine import TrainSettings, make_optimizer
from train.fusion import FUSIONS
from train.model import HyConModel, ModelConfig, count_parameters, last_real_step
from train.objectives import comparison_loss, hybrid_loss, pair_classes, task_loss

B, T = 5, 7
DIMS = {"text": 12, "audio": 5, "vision": 6}


def fake_info(task="regression", text_kind="features"):
    return SimpleNamespace(
        name="mosi" if task == "regression" else "iemocap",
        fmt="mult",
        task=task,
        text_kind=text_kind,
        dims=dict(DIMS, text=DIMS["text"] if text_kind == "features" else None),
        emotions=["Neutral", "Happy", "Sad", "Angry"] if task == "emotion" else [],
    )


def left_padded_mask(lengths, t=T):
    return torch.arange(t)[None, :] >= (t - torch.tensor(lengths))[:, None]


def fake_batch(text_kind="features", vocab=30):
    g = torch.Generator().manual_seed(0)
    batch = {
        "audio": torch.randn(B, T, DIMS["audio"], generator=g),
        "audio_mask": left_padded_mask([7, 3, 1, 0, 5]),
        "vision": torch.randn(B, T, DIMS["vision"], generator=g),
        "vision_mask": left_padded_mask([2, 7, 7, 4, 1]),
        "text_mask": left_padded_mask([7, 6, 5, 4, 3]),
        "label": torch.tensor([-2.0, 0.0, 1.5, 3.0, -0.4]),
    }
    if text_kind == "features":
        batch["text"] = torch.randn(B, T, DIMS["text"], generator=g)
    else:  # BERT-style: right padding, segment ids
        batch["text_mask"] = ~left_padded_mask([7, 6, 5, 4, 3]).flip(1)
        batch["text_ids"] = torch.randint(1, vocab, (B, T), generator=g) * batch["text_mask"]
        batch["text_segment"] = torch.zeros(B, T, dtype=torch.long)
    return batch


def test_last_real_step_follows_masks_left_and_right_padding():
    seq = torch.arange(2 * 4, dtype=torch.float32).view(2, 4, 1)
    mask = torch.tensor([[False, False, True, True], [True, True, False, False]])
    assert last_real_step(seq, mask).flatten().tolist() == [3.0, 5.0]
    # a row with no real step falls back to its last step instead of failing
    assert last_real_step(seq, torch.zeros(2, 4, dtype=torch.bool)).flatten().tolist() == [3.0, 7.0]


@pytest.mark.parametrize("fusion", FUSIONS)
@pytest.mark.parametrize("task", ["regression", "emotion"])
def test_output_shapes_every_fusion(fusion, task):
    torch.manual_seed(0)
    model = HyConModel(fake_info(task), ModelConfig(d=10, heads=2, fusion=fusion)).eval()
    out = model(fake_batch())
    assert all(x.shape == (B, 10) for x in out.unimodal)
    assert out.fused.shape == (B, model.fusion.out_dim)
    assert out.output.shape == ((B,) if task == "regression" else (B, 4, 2))
    assert torch.isfinite(out.output).all()  # including the sample with an empty audio sequence
    loss = task_loss(
        out.output,
        fake_batch()["label"] if task == "regression" else torch.tensor([[1, 0, 0, 0]] * B),
        task,
    )
    loss.backward()
    assert all(p.grad is not None for p in model.head.parameters())


def test_padding_steps_do_not_change_the_representation():
    torch.manual_seed(0)
    model = HyConModel(fake_info(), ModelConfig(d=10, heads=2)).eval()
    batch = fake_batch()
    ref = model(batch).unimodal
    # garbage in padding
    batch["audio"] = batch["audio"].masked_fill(~batch["audio_mask"][..., None], 123.0)
    # row 3 has no real audio step, so its (all-padding) input legitimately changes
    torch.testing.assert_close(model(batch).unimodal[1][[0, 1, 2, 4]], ref[1][[0, 1, 2, 4]])


@pytest.mark.parametrize("kind", ["bert", "xlnet"])
def test_pretrained_text_encoders(tmp_path, kind):
    transformers = pytest.importorskip("transformers")
    if kind == "bert":
        cfg = transformers.BertConfig(
            vocab_size=30,
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=32,
            max_position_embeddings=16,
        )
        transformers.BertModel(cfg).save_pretrained(tmp_path)
    else:
        cfg = transformers.XLNetConfig(vocab_size=30, d_model=16, n_layer=1, n_head=2, d_inner=32)
        transformers.XLNetModel(cfg).save_pretrained(tmp_path)
    torch.manual_seed(0)
    model = HyConModel(
        fake_info(text_kind="tokens"),
        ModelConfig(d=10, heads=2, text_encoder=kind, pretrained=str(tmp_path)),
    ).eval()
    out = model(fake_batch("tokens"))
    assert out.unimodal[0].shape == (B, 10) and out.output.shape == (B,)
    n_text = sum(p.numel() for p in model.text_parameters())
    assert 0 < n_text < count_parameters(model)
    opt = make_optimizer(model, TrainSettings(epochs=1, batch_size=2, lr=1e-3, text_lr=2e-5))
    assert [g["lr"] for g in opt.param_groups] == [
        1e-3,
        2e-5,
    ]  # --text-lr for the pretrained encoder
    assert sum(p.numel() for p in opt.param_groups[1]["params"]) == n_text


def test_clear_errors_for_mismatched_text_encoder(tmp_path):
    with pytest.raises(ValueError, match="needs token ids"):
        HyConModel(fake_info(), ModelConfig(text_encoder="bert", pretrained="x"))
    with pytest.raises(FileNotFoundError, match="--pretrained"):
        HyConModel(
            fake_info(text_kind="tokens"),
            ModelConfig(text_encoder="bert", pretrained=str(tmp_path)),
        )
    with pytest.raises(ValueError, match="heads"):
        HyConModel(fake_info(), ModelConfig(d=10, heads=3))


def test_pair_classes():
    y = torch.tensor([-3.0, -0.5, 0.0, 0.5, 1.5, 2.5])
    assert pair_classes(y, "regression", "sign").tolist() == [0, 0, 1, 1, 1, 1]
    assert pair_classes(y, "regression", "sign-nonzero").tolist() == [0, 0, 2, 1, 1, 1]
    assert pair_classes(y, "regression", "7class").tolist() == [0, 3, 3, 3, 5, 5]  # half to even
    emo = torch.tensor([[0, 1, 0, 0], [0, 0, 0, 1], [0, 0, 0, 0]])
    assert pair_classes(emo, "emotion").tolist() == [1, 3, 4]  # no emotion present: own class


def test_task_losses():
    assert task_loss(
        torch.tensor([1.0, -1.0]), torch.tensor([0.0, 1.0]), "regression"
    ).item() == pytest.approx(1.5)
    logits = torch.tensor([[[0.0, math.log(3.0)]]])  # p(present) = 3/4
    assert task_loss(logits, torch.tensor([[1]]), "emotion").item() == pytest.approx(
        -math.log(0.75)
    )


# ---- comparison losses: K = 2 samples, classes equal, 3 modalities; rows r = m*K + i


def _tiny():
    g = torch.Generator().manual_seed(3)
    xs = [torch.randn(3, 4, generator=g, dtype=torch.float64) for _ in range(3)]
    return xs, torch.tensor([0, 0, 1])


def _sim(xs):
    z = torch.softmax(torch.cat(xs), -1)
    return z, z @ z.T


def test_hard_triplet_matches_hand_computation():
    xs, cls = _tiny()
    z, s = _sim(xs)
    intra, inter = comparison_loss("hard-triplet", *xs, cls)

    def d2(a, b):
        return float(((z[a] - z[b]) ** 2).sum())

    # intra: anchors 0,1 (class 0) of each modality have one positive (the other) and one
    # negative (2)
    want = [
        d2(m * 3 + i, m * 3 + (1 - i)) - d2(m * 3 + i, m * 3 + 2) + 1
        for m in range(3)
        for i in range(2)
    ]
    assert intra.item() == pytest.approx(sum(want) / len(want))
    # inter: hardest positive = lowest similarity among the other sample's other modalities
    vals = []
    for m in range(3):
        for i in range(2):
            a = m * 3 + i
            pos = [n * 3 + (1 - i) for n in range(3) if n != m]
            neg = [n * 3 + 2 for n in range(3) if n != m]
            p = min(pos, key=lambda c: (s[a, c].item(), c))
            n = max(neg, key=lambda c: (s[a, c].item(), -c))
            vals.append(d2(a, p) - d2(a, n) + 1)
    assert inter.item() == pytest.approx(sum(vals) / len(vals))


def test_triplet_margin_is_a_hinge_and_none_is_eq19():
    xs, cls = _tiny()
    z, s = _sim(xs)
    printed = comparison_loss("hard-triplet", *xs, cls)
    assert (
        comparison_loss("hard-triplet", *xs, cls, triplet_margin=None)[0].item()
        == printed[0].item()
    )
    # squared distances of softmax rows are below 2: a margin of 10 never clips, so it is eq. 19 + 9
    wide = comparison_loss("hard-triplet", *xs, cls, triplet_margin=10.0)
    assert [w.item() for w in wide] == pytest.approx([p.item() + 9 for p in printed])
    zero = comparison_loss("hard-triplet", *xs, cls, triplet_margin=0.0)[0]

    def d2(a, b):
        return float(((z[a] - z[b]) ** 2).sum())

    gaps = [
        d2(m * 3 + i, m * 3 + (1 - i)) - d2(m * 3 + i, m * 3 + 2)
        for m in range(3)
        for i in range(2)
    ]
    assert zero.item() == pytest.approx(sum(max(0.0, g) for g in gaps) / len(gaps))
    # the hinge really clips some anchors
    assert any(g < 0 for g in gaps) and any(g > 0 for g in gaps)


def test_classical_and_npair_with_a_single_positive():
    # with one positive per anchor, the "random" positive is determined: exact values
    xs, cls = _tiny()
    _, s = _sim(xs)
    intra_c, _ = comparison_loss("classical", *xs, cls)
    intra_n, _ = comparison_loss("npair", *xs, cls)
    anchors = [(m * 3 + i, m * 3 + 1 - i, m * 3 + 2) for m in range(3) for i in range(2)]
    want_c = [-s[a, p] / (s[a, p] + s[a, n]) for a, p, n in anchors]
    want_n = [torch.log1p(torch.exp(s[a, n] - s[a, p])) for a, p, n in anchors]
    assert intra_c.item() == pytest.approx(torch.stack(want_c).mean().item())
    assert intra_n.item() == pytest.approx(torch.stack(want_n).mean().item())


@pytest.mark.parametrize("kind", ["classical", "triplet", "hard-triplet", "npair"])
def test_comparison_losses_without_positives_are_zero_with_gradient(kind):
    xs = [torch.randn(3, 4, dtype=torch.float64, requires_grad=True) for _ in range(3)]
    intra, inter = comparison_loss(kind, *xs, torch.tensor([0, 1, 2]))  # every sample its own class
    assert intra.item() == 0.0 and inter.item() == 0.0
    (intra + inter).backward()
    assert all(x.grad is not None for x in xs)


def test_triplet_draws_from_the_right_pairs():
    # all samples share a class: no negatives, so no anchor qualifies for triplet; npair is
    # log(1) = 0
    xs = [torch.randn(4, 3, dtype=torch.float64) for _ in range(3)]
    same = torch.zeros(4, dtype=torch.long)
    assert comparison_loss("triplet", *xs, same)[0].item() == 0.0
    assert comparison_loss("npair", *xs, same)[1].item() == pytest.approx(0.0)
    assert comparison_loss("classical", *xs, same)[1].item() == pytest.approx(-1.0)


def test_hybrid_loss_dispatch():
    pytest.importorskip("hycon_ext")
    xs = [torch.randn(6, 5, dtype=torch.float64, requires_grad=True) for _ in range(3)]
    cls = torch.tensor([0, 0, 1, 1, 0, 1])
    h = hybrid_loss(*xs, cls, backend="reference")
    assert h.total.item() == pytest.approx((h.iamcl + h.iemcl + h.scl).item())
    z = torch.softmax(torch.cat(xs), -1).detach()
    k = 6  # SCL (eq. 6) by a loop: each anchor against its own sample's two other modalities
    scl = sum(
        0.5 * float(z[m * k + i] @ z[n * k + i] - 0.8) ** 2
        for m in range(3)
        for i in range(k)
        for n in range(3)
        if n != m
    ) / (3 * k)
    assert h.scl.item() == pytest.approx(scl)
    c = hybrid_loss(*xs, cls, loss="hard-triplet", lambdas=(1.0, 0.5, 2.0), backend="reference")
    intra, inter = comparison_loss("hard-triplet", *xs, cls)
    assert c.scl.item() == pytest.approx(h.scl.item())  # SCL is kept as in HyCon
    assert c.total.item() == pytest.approx((intra + 0.5 * inter + 2.0 * h.scl).item())
    c.total.backward()
    assert all(x.grad is not None and torch.isfinite(x.grad).all() for x in xs)
    with pytest.raises(ValueError, match="loss"):
        hybrid_loss(*xs, cls, loss="infonce")
