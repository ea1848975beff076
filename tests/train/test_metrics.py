"""Metrics: hand-computed cases, round-half-to-even, F1 argument order, the three conventions."""

import math
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import f1_score

from train.metrics import emotion_columns, emotion_metrics, multiclass_acc, sentiment_metrics

FOLDS = (
    Path(__file__).resolve().parents[3]
    / "shared"
    / "data"
    / "real"
    / "mosi_labels_standard_folds.npz"
)

LABELS = np.array([-2.0, -1.0, 0.0, 0.0, 1.0, 2.5])
PREDS = np.array([-1.0, 0.5, -0.5, 0.0, 2.0, 2.5])


def test_hand_computed_mult_and_mmsa():
    for conv in ("mult", "mmsa"):
        m = sentiment_metrics(PREDS, LABELS, conv)
        # round: preds -> -1, 0 (0.5 to even), -0 , 0, 2, 2 ; labels -> -2, -1, 0, 0, 1, 2
        assert m["Acc7"] == pytest.approx(3 / 6)
        assert m["MAE"] == pytest.approx((1 + 1.5 + 0.5 + 0 + 1 + 0) / 6)
        assert m["Corr"] == pytest.approx(np.corrcoef(PREDS, LABELS)[0, 1])
        # non0: samples 0, 1, 4, 5; labels > 0: F F T T; preds > 0: F T T T -> 3 of 4
        assert m["Acc2_non0"] == pytest.approx(3 / 4) and m["Acc2"] == m["Acc2_non0"]
        # has0: labels >= 0: F F T T T T; preds >= 0: F T F T T T -> 4 of 6
        assert m["Acc2_has0"] == pytest.approx(4 / 6)


def test_hand_computed_magbert():
    m = sentiment_metrics(PREDS, LABELS, "magbert")
    assert m["Acc7"] == pytest.approx(3 / 6)  # all samples
    assert m["MAE"] == pytest.approx((1 + 1.5 + 1 + 0) / 4)  # non-zero labels only
    nz = LABELS != 0
    assert m["Corr"] == pytest.approx(np.corrcoef(PREDS[nz], LABELS[nz])[0, 1])
    assert m["Acc2"] == pytest.approx(3 / 4)
    # both MAE/Corr variants are always there, whatever the headline
    assert m["MAE_non0"] == m["MAE"] and m["Corr_non0"] == m["Corr"]
    assert m["MAE_all"] == pytest.approx(np.abs(PREDS - LABELS).mean())
    assert m["Corr_all"] == pytest.approx(np.corrcoef(PREDS, LABELS)[0, 1])
    mult = sentiment_metrics(PREDS, LABELS, "mult")
    assert mult["MAE"] == mult["MAE_all"] == pytest.approx(m["MAE_all"])
    assert mult["MAE_non0"] == pytest.approx(m["MAE"]) and mult["Corr_non0"] == pytest.approx(
        m["Corr"]
    )
    # >= 0 on the predictions: a prediction of exactly 0 on a positive label counts as positive
    z = sentiment_metrics(np.array([0.0, -1.0]), np.array([1.0, -1.0]), "magbert")
    assert z["Acc2"] == 1.0
    assert (
        sentiment_metrics(np.array([0.0, -1.0]), np.array([1.0, -1.0]), "mmsa")["Acc2_non0"] == 0.5
    )


def test_round_half_to_even_in_acc7():
    truth = np.array([0.5, 1.5, 2.5, -0.5, -2.5])
    assert multiclass_acc(np.array([0.0, 2.0, 2.0, 0.0, -2.0]), truth) == 1.0
    # only 1.5 -> 2
    assert multiclass_acc(np.array([1.0, 2.0, 3.0, -1.0, -3.0]), truth) == pytest.approx(1 / 5)


def test_acc7_clips_to_the_label_range():
    assert sentiment_metrics(np.array([5.0, -4.0]), np.array([3.0, -3.0]), "mult")["Acc7"] == 1.0
    # Acc5 clips to [-2, 2]: 3 and 2 are the same class there
    assert sentiment_metrics(np.array([2.0, -2.0]), np.array([3.0, -3.0]), "mult")["Acc5"] == 1.0


@pytest.mark.skipif(not FOLDS.exists(), reason=f"{FOLDS} not present")
def test_rounding_on_the_real_mosi_labels():
    labels = np.load(FOLDS)["label"].astype(np.float64)
    half_up = np.floor(labels + 0.5)  # what a naive implementation would compare against
    got = sentiment_metrics(half_up, labels, "mult")["Acc7"]
    # Python's round() is round-half-to-even too: an independent count of the agreeing samples
    want = sum(round(float(v)) == h for v, h in zip(np.clip(labels, -3, 3), half_up)) / len(labels)
    assert got == pytest.approx(want)
    halves = np.isclose(labels % 1, 0.5)
    assert halves.sum() > 0 and got < 1.0  # the x.5 labels with an odd ceiling disagree
    assert sentiment_metrics(labels, labels, "mmsa")["Acc7"] == 1.0


def test_f1_argument_order_mult_vs_mmsa():
    truth = np.array([1.0, 1.0, 1.0, 1.0, -1.0])
    preds = np.array([1.0, 1.0, -1.0, -1.0, -1.0])
    swapped = f1_score(preds > 0, truth > 0, average="weighted")
    correct = f1_score(truth > 0, preds > 0, average="weighted")
    assert not math.isclose(swapped, correct)  # the case really tells the orders apart
    assert sentiment_metrics(preds, truth, "mult")["F1"] == pytest.approx(swapped)
    assert sentiment_metrics(preds, truth, "mmsa")["F1"] == pytest.approx(correct)
    assert sentiment_metrics(preds, truth, "magbert")["F1"] == pytest.approx(correct)


def test_sklearn_cross_check_random():
    rng = np.random.default_rng(0)
    truth = np.round(rng.uniform(-3, 3, 200) * 3) / 3
    truth[:20] = 0.0
    preds = truth + rng.normal(0, 1, 200)
    m = sentiment_metrics(preds, truth, "mmsa")
    nz = truth != 0
    assert m["F1_has0"] == pytest.approx(f1_score(truth >= 0, preds >= 0, average="weighted"))
    assert m["F1_non0"] == pytest.approx(f1_score(truth[nz] > 0, preds[nz] > 0, average="weighted"))
    assert m["Acc2_has0"] == pytest.approx(np.mean((truth >= 0) == (preds >= 0)))
    assert m["MAE"] == pytest.approx(np.abs(preds - truth).mean())


def test_constant_predictions_give_nan_corr_not_an_exception():
    assert math.isnan(sentiment_metrics(np.zeros(4), np.array([1.0, -1.0, 2.0, 0.5]))["Corr"])


def test_sentiment_errors_name_the_argument():
    with pytest.raises(ValueError, match="convention"):
        sentiment_metrics(PREDS, LABELS, "misa")
    with pytest.raises(ValueError, match="same length"):
        sentiment_metrics(PREDS[:3], LABELS)
    with pytest.raises(ValueError, match="preds"):
        sentiment_metrics([], [])


def test_emotion_metrics_hand_computed():
    names = ["Neutral", "Happy"]
    truth = np.array([[1, 0], [0, 1], [0, 0], [1, 0]])
    preds = np.array([[1, 0], [0, 0], [0, 0], [0, 0]])
    m = emotion_metrics(preds, truth, names)
    assert m["Neutral_Acc"] == pytest.approx(3 / 4) and m["Happy_Acc"] == pytest.approx(3 / 4)
    # Neutral: class 1 (2 samples) F1 = 2/3, class 0 (2 samples) F1 = 0.8 -> weighted 0.7333
    assert m["Neutral_F1"] == pytest.approx(0.5 * 2 / 3 + 0.5 * 0.8)
    assert m["Avg_Acc"] == pytest.approx(3 / 4)
    assert m["Avg_F1"] == pytest.approx((m["Neutral_F1"] + m["Happy_F1"]) / 2)
    with pytest.raises(ValueError, match="pred_classes"):
        emotion_metrics(preds[:, :1], truth, names)


def test_table3_column_order():
    cols = emotion_columns(["Neutral", "Happy", "Sad", "Angry"])
    assert cols[:2] == ["Happy_Acc", "Happy_F1"] and cols[6:] == [
        "Neutral_Acc",
        "Neutral_F1",
        "Avg_Acc",
        "Avg_F1",
    ]
