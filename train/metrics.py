"""Evaluation metrics as the community's evaluation code computes them.

Sentiment (MOSI/MOSEI, labels in [-3, 3]) comes in three conventions that papers mix up:

- "mult"    MulT's eval_mosei_senti: MAE, Corr, Acc7, Acc5 on all samples; Acc2/F1 positive (> 0)
            vs negative with zero labels excluded. MulT calls f1_score(preds, truth): the
            predictions are passed as y_true, which changes the *weighted* F1. Kept as published.
- "mmsa"    MMSA's regression metrics: MAE, Corr, Acc7, Acc5 on all samples; Has0 (>= 0 vs < 0 on
            all samples) and Non0 (> 0 vs < 0, zero labels excluded); f1_score(truth, preds).
- "magbert" the conventions of MAG-BERT's evaluation code (test_score_model in
            github.com/WasifurRahman/BERT_multimodal_transformer; the HyCon paper uses MAG-BERT's
            data layout and compares with it, but does not say which evaluation code it ran):
            MAE, Corr and Acc2/F1 (>= 0 vs < 0) on the samples whose label is non-zero; Acc7 (and
            Acc5) on all.

Every convention reports Acc2/F1 both ways (has0 = all samples, >= 0 vs < 0; non0 = zero labels
excluded) and MAE/Corr both ways (MAE_all/Corr_all on all samples, MAE_non0/Corr_non0 without
zero labels), plus its headline "Acc2", "F1", "MAE", "Corr" (the columns of the paper's tables).
Acc7/Acc5 use np.round (round half to even) after clipping to [-3, 3] / [-2, 2].
"""

import numpy as np

CONVENTIONS = {
    "mult": "MulT: all samples; Acc2/F1 non0 (>0 vs <0, zero labels dropped), "
    "f1_score(preds, truth)",
    "mmsa": "MMSA: all samples; Acc2/F1 headline non0, has0 = >=0 vs <0 on all samples",
    "magbert": "MAG-BERT's evaluation code conventions: Acc7/Acc5 all samples; MAE, Corr, "
    "Acc2/F1 (>=0) on non-zero labels",
}
SENTIMENT_COLUMNS = ["Acc7", "Acc2", "F1", "MAE", "Corr"]  # Tables 1/2 of the paper


def _as_1d(name, x):
    arr = np.asarray(x, dtype=np.float64).reshape(-1)
    if arr.size == 0:
        raise ValueError(f"{name}: expected at least one value, got an empty array")
    return arr


def multiclass_acc(preds, truth):
    """Fraction of equal classes after np.round (round half to even, as the reference code)."""
    return float(np.sum(np.round(preds) == np.round(truth)) / float(len(truth)))


def _corr(preds, truth):
    # np.corrcoef of a constant vector is NaN (with a warning); report NaN without the warning.
    if np.std(preds) == 0 or np.std(truth) == 0:
        return float("nan")
    return float(np.corrcoef(preds, truth)[0][1])


def _binary(preds, truth, *, swap_f1):
    """Accuracy and weighted F1 of two boolean arrays (swap_f1: MulT's f1_score(preds, truth))."""
    if len(truth) == 0:
        return float("nan"), float("nan")
    from sklearn.metrics import accuracy_score, f1_score  # here: --help needs no sklearn

    acc = accuracy_score(truth, preds)
    f1 = (
        f1_score(preds, truth, average="weighted")
        if swap_f1
        else f1_score(truth, preds, average="weighted")
    )
    return float(acc), float(f1)


def sentiment_metrics(preds, labels, convention="magbert"):
    """Dict of Acc7, Acc5, Acc2_has0, F1_has0, Acc2_non0, F1_non0, MAE_all, Corr_all, MAE_non0,
    Corr_non0 and the convention's headline Acc2, F1, MAE, Corr."""
    if convention not in CONVENTIONS:
        raise ValueError(f"convention: expected one of {sorted(CONVENTIONS)}, got {convention!r}")
    preds, truth = _as_1d("preds", preds), _as_1d("labels", labels)
    if preds.shape != truth.shape:
        raise ValueError(
            f"preds and labels: expected the same length, got {len(preds)} and {len(truth)}"
        )
    non0 = truth != 0
    out = {
        "Acc7": multiclass_acc(np.clip(preds, -3.0, 3.0), np.clip(truth, -3.0, 3.0)),
        "Acc5": multiclass_acc(np.clip(preds, -2.0, 2.0), np.clip(truth, -2.0, 2.0)),
    }
    swap = convention == "mult"
    out["Acc2_has0"], out["F1_has0"] = _binary(preds >= 0, truth >= 0, swap_f1=swap)
    if convention == "magbert":
        # MAG-BERT thresholds at >= 0 after dropping zero labels
        out["Acc2_non0"], out["F1_non0"] = _binary(
            preds[non0] >= 0, truth[non0] >= 0, swap_f1=False
        )
    else:
        out["Acc2_non0"], out["F1_non0"] = _binary(preds[non0] > 0, truth[non0] > 0, swap_f1=swap)
    for part, keep in (("all", slice(None)), ("non0", non0)):
        p, t = preds[keep], truth[keep]
        out[f"MAE_{part}"] = float(np.mean(np.abs(p - t))) if len(t) else float("nan")
        out[f"Corr_{part}"] = _corr(p, t) if len(t) > 1 else float("nan")
    headline = "non0" if convention == "magbert" else "all"
    out["MAE"], out["Corr"] = out[f"MAE_{headline}"], out[f"Corr_{headline}"]
    out["Acc2"], out["F1"] = out["Acc2_non0"], out["F1_non0"]
    return out


def emotion_metrics(pred_classes, labels, names):
    """Per-emotion accuracy and weighted F1 (MulT's eval_iemocap) and their averages.

    pred_classes, labels: (N, E) in {0, 1} (emotion present or not); names: E emotion names.
    Returns {"<name>_Acc", "<name>_F1" for each emotion, "Avg_Acc", "Avg_F1"}.
    """
    preds, truth = np.asarray(pred_classes), np.asarray(labels)
    if preds.ndim != 2 or preds.shape != truth.shape or preds.shape[1] != len(names):
        raise ValueError(
            f"pred_classes and labels: expected two (N, {len(names)}) arrays, "
            f"got {preds.shape} and {truth.shape}"
        )
    from sklearn.metrics import accuracy_score, f1_score  # here: --help needs no sklearn

    out = {}
    for e, name in enumerate(names):
        out[f"{name}_Acc"] = float(accuracy_score(truth[:, e], preds[:, e]))
        out[f"{name}_F1"] = float(f1_score(truth[:, e], preds[:, e], average="weighted"))
    out["Avg_Acc"] = float(np.mean([out[f"{n}_Acc"] for n in names]))
    out["Avg_F1"] = float(np.mean([out[f"{n}_F1"] for n in names]))
    return out


def emotion_columns(names):
    """Table 3 order: the paper lists Happy, Sad, Angry, Neutral, then the average."""
    paper = ["Happy", "Sad", "Angry", "Neutral"]
    ordered = [n for n in paper if n in names] + [n for n in names if n not in paper]
    return [f"{n}_{m}" for n in ordered for m in ("Acc", "F1")] + ["Avg_Acc", "Avg_F1"]
