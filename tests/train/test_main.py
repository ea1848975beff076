"""train/main.py end to end on demo data: learning above chance, resume, results files, flags."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from train.checks import check_args
from train.data import write_demo
from train.main import build_parser, cli, loss_settings, main

FAST = [
    "--epochs",
    "8",
    "--lr",
    "3e-3",
    "--batch-size",
    "32",
]  # backend auto: the kernels where built


def _demo(tmp_path, name, n_train=240, n_eval=80):
    data = tmp_path / "data"
    write_demo(name, data, seed=0, n_train=n_train, n_valid=n_eval, n_test=n_eval, seq_len=8)
    return data


@pytest.mark.slow
def test_iemocap_learns_above_chance(tmp_path, capsys):
    data = _demo(tmp_path, "iemocap")
    summary = main(
        ["--dataset", "iemocap", "--data-dir", str(data), "--out", str(tmp_path / "out")] + FAST
    )
    # chance = always predicting each emotion's majority class on the test split
    from train.data import load_dataset

    labels = np.stack([load_dataset("iemocap", data).test[i]["label"].numpy() for i in range(80)])
    chance = np.maximum(labels.mean(0), 1 - labels.mean(0)).mean()
    assert summary["mean"]["Avg_Acc"] > chance + 0.15, (summary["mean"], chance)
    out = capsys.readouterr().out
    assert "Table 3 layout" in out and "Happy_Acc" in out and "Parameters:" in out


@pytest.mark.slow
def test_mosi_learns_above_chance_and_writes_results(tmp_path, capsys):
    data = _demo(tmp_path, "mosi")
    out = tmp_path / "out"
    summary = main(
        [
            "--dataset",
            "mosi",
            "--data-dir",
            str(data),
            "--out",
            str(out),
            "--tsne",
            "--metrics-convention",
            "mult",
        ]
        + FAST
    )
    test = summary["mean"]
    assert test["Acc2"] > 0.75 and test["Corr"] > 0.5, test
    printed = capsys.readouterr().out
    assert "Table 1 layout" in printed and "convention mult" in printed
    assert all(c in printed for c in ("Acc7", "Acc2", "F1", "MAE", "Corr"))
    saved = json.loads((out / "results.json").read_text())
    assert saved["convention"] == "mult" and saved["params"] > 0 and saved["train_time_s"] > 0
    assert saved["test_inference_s"] > 0 and saved["seeds"][0]["test_samples"] == 80
    assert "validation passes excluded" in printed and "over the 80 test samples" in printed
    assert saved["seeds"][0]["test"]["Acc2"] == pytest.approx(test["Acc2"])
    csv = (out / "results.csv").read_text().splitlines()
    assert csv[0].startswith("row,Acc7") and [r.split(",")[0] for r in csv[1:]] == [
        "seed1",
        "mean",
        "std",
    ]
    assert (out / "tsne_seed1.png").stat().st_size > 1000
    assert (out / "seed1" / "best.pt").exists() and (out / "seed1" / "last.pt").exists()


@pytest.mark.slow
def test_resume_continues_exactly(tmp_path, mosi_flags):
    data = _demo(tmp_path, "mosi", n_train=64, n_eval=32)
    common = mosi_flags(data) + ["--seeds", "1,2"]
    straight = main(common + ["--out", str(tmp_path / "a"), "--epochs", "3"])
    main(common + ["--out", str(tmp_path / "b"), "--epochs", "2"])
    resumed = main(common + ["--out", str(tmp_path / "b"), "--epochs", "3", "--resume"])
    for seed in (1, 2):
        a = torch.load(tmp_path / "a" / f"seed{seed}" / "last.pt", weights_only=False)
        b = torch.load(tmp_path / "b" / f"seed{seed}" / "last.pt", weights_only=False)
        assert a["epoch"] == b["epoch"] == 3
        for k in a["model"]:  # same weights as the uninterrupted run: RNG and optimizer restored
            torch.testing.assert_close(a["model"][k], b["model"][k])
    assert resumed["mean"] == pytest.approx(straight["mean"], nan_ok=True)
    assert set(resumed["std"]) == set(resumed["mean"])  # two seeds: mean and std of every metric


@pytest.mark.slow
def test_resume_continues_with_the_cross_batch_memory(tmp_path, mosi_flags):
    # The memory (60 samples > one epoch's 48: never wraps within an epoch) is in last.pt: a resumed
    # run pairs its first batch with the same memory as the uninterrupted run, so both end equal.
    data = _demo(tmp_path, "mosi", n_train=48, n_eval=16)
    common = mosi_flags(data) + ["--memory-size", "60", "--pair-selection", "--dropout", "0"]
    main(common + ["--out", str(tmp_path / "a"), "--epochs", "2"])
    main(common + ["--out", str(tmp_path / "b"), "--epochs", "1"])
    main(common + ["--out", str(tmp_path / "b"), "--epochs", "2", "--resume"])
    a, b = (torch.load(tmp_path / run / "seed1" / "last.pt", weights_only=False) for run in "ab")
    assert a["loss_memory"]["memory.count"].item() == 60
    for key in a["loss_memory"]:
        assert torch.equal(a["loss_memory"][key], b["loss_memory"][key]), key
    for key in a["model"]:
        torch.testing.assert_close(a["model"][key], b["model"][key])
    with pytest.raises(Exception, match="--memory-size"):  # the resume check compares the flag
        main(
            [("30" if flag == "60" else flag) for flag in common]
            + ["--out", str(tmp_path / "b"), "--epochs", "3", "--resume"]
        )


@pytest.mark.slow
@pytest.mark.parametrize(
    "flags",
    [
        ["--fusion", "graph", "--contrastive-loss", "npair"],
        [
            "--fusion",
            "tensor",
            "--pair-selection",
            "--no-negative-selection",
            "--d",
            "8",
            "--heads",
            "2",
        ],
        [
            "--fusion",
            "concat",
            "--contrastive-loss",
            "hard-triplet",
            "--pair-classes",
            "sign-nonzero",
        ],
        ["--contrastive-loss", "triplet", "--no-scl", "--metrics-convention", "mmsa"],
        ["--contrastive-loss", "classical", "--pair-classes", "7class", "--layers", "2"],
        ["--no-contrastive"],
        ["--no-refinement", "--no-margin", "--no-iamcl", "--pair-selection", "--beta", "0.5"],
    ],
)
def test_flag_combinations_train(tmp_path, mosi_flags, flags):
    data = _demo(tmp_path, "mosi", n_train=48, n_eval=16)
    summary = main(mosi_flags(data, out=tmp_path / "o", lr=None) + ["--epochs", "1"] + flags)
    assert np.isfinite(summary["mean"]["MAE"])


@pytest.mark.slow
def test_demo_flag_writes_its_own_data_and_trains(tmp_path, capsys):
    main(
        [
            "--dataset",
            "mosi",
            "--demo",
            "--epochs",
            "1",
            "--out",
            str(tmp_path),
            "--backend",
            "reference",
        ]
    )
    printed = capsys.readouterr().out
    assert "demo: lr" in printed and "demo: wrote synthetic mosi data" in printed
    # MAG-BERT's words, for the demo's small BERT
    assert (tmp_path / "demo-data" / "mosi.pkl").exists()


def test_loss_settings_map_the_ablation_flags():
    parse = build_parser().parse_args
    kw = loss_settings(parse(["--dataset", "mosi"]))
    assert kw == dict(
        alpha=0.8,
        beta=0.2,
        gamma=1.0,
        lambdas=(1.0, 1.0, 1.0),
        reduction="mean",
        backend="auto",
        pair_selection=False,
        select_positives=True,
        select_negatives=True,
        refinement=True,
    )
    assert (
        loss_settings(parse(["--dataset", "mosi", "--hybrid-reduction", "sum"]))["reduction"]
        == "sum"
    )
    kw = loss_settings(
        parse(
            [
                "--dataset",
                "mosi",
                "--no-margin",
                "--no-iemcl",
                "--lambdas",
                "2,3,4",
                "--pair-selection",
                "--no-positive-selection",
                "--no-refinement",
            ]
        )
    )
    assert kw["alpha"] == 1.0 and kw["lambdas"] == (2.0, 0.0, 4.0)
    assert (
        kw["pair_selection"]
        and not kw["select_positives"]
        and kw["select_negatives"]
        and not kw["refinement"]
    )
    assert "pair_selection" not in loss_settings(
        parse(["--dataset", "mosi", "--contrastive-loss", "npair"])
    )
    assert "triplet_margin" not in loss_settings(
        parse(["--dataset", "mosi", "--contrastive-loss", "triplet"])
    )
    kw = loss_settings(
        parse(["--dataset", "mosi", "--contrastive-loss", "triplet", "--triplet-margin", "0.2"])
    )
    assert kw["triplet_margin"] == 0.2


@pytest.mark.parametrize(
    "argv, match",
    [
        (["--no-positive-selection"], "need --pair-selection"),
        (["--lambdas", "1,2"], "--lambdas"),
        (["--contrastive-loss", "triplet", "--pair-selection"], "hycon only"),
        (["--triplet-margin", "0.5"], "--triplet-margin: applies to --contrastive-loss triplet"),
        (
            ["--contrastive-loss", "hard-triplet", "--triplet-margin", "-1"],
            "--triplet-margin: expected a finite",
        ),
        (["--memory-size", "-1"], "--memory-size: expected an integer >= 0"),
        (
            ["--memory-size", "64", "--contrastive-loss", "npair"],
            "--memory-size: applies to the hycon loss only",
        ),
        (
            ["--memory-size", "64", "--no-contrastive"],
            "--memory-size: applies to the hycon loss only",
        ),
    ],
)
def test_contradictory_flags_are_errors(argv, match):
    with pytest.raises(ValueError, match=match):
        check_args(build_parser().parse_args(["--dataset", "mosi"] + argv))


def test_cli_reports_a_missing_file_clearly(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(
        sys,
        "argv",
        [
            "main.py",
            "--dataset",
            "mosi",
            "--data-dir",
            str(tmp_path / "none"),
            "--out",
            str(tmp_path / "o"),
        ],
    )
    with pytest.raises(SystemExit) as exc:
        cli()
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "none" in err


def test_every_documented_flag_exists():
    flags = set(build_parser()._option_string_actions)
    for f in (
        "--text-encoder",
        "--pretrained",
        "--fusion",
        "--pair-classes",
        "--no-contrastive",
        "--no-refinement",
        "--no-margin",
        "--no-iamcl",
        "--no-iemcl",
        "--no-scl",
        "--pair-selection",
        "--no-positive-selection",
        "--no-negative-selection",
        "--alpha",
        "--beta",
        "--gamma",
        "--lambdas",
        "--contrastive-loss",
        "--lr",
        "--text-lr",
        "--epochs",
        "--batch-size",
        "--seed",
        "--seeds",
        "--out",
        "--resume",
        "--tsne",
        "--demo",
        "--data-dir",
        "--format",
        "--metrics-convention",
        "--device",
        "--num-workers",
        "--backend",
        "--triplet-margin",
        "--text-pool",
    ):
        assert f in flags, f


@pytest.mark.slow
def test_bert_text_encoder_on_magbert_demo(tmp_path, tiny_bert_magbert, mosi_flags):
    import transformers

    summary = main(
        mosi_flags(tiny_bert_magbert.data, out=tmp_path / "o", lr="1e-3")
        + ["--format", "magbert", "--text-encoder", "bert"]
        + ["--pretrained", str(tiny_bert_magbert.bert), "--max-seq-len", "12"]
        + ["--text-lr", "1e-5", "--epochs", "1"]
    )
    assert summary["format"] == "magbert" and np.isfinite(summary["mean"]["MAE"])
    bert_params = sum(
        p.numel() for p in transformers.BertModel(tiny_bert_magbert.config).parameters()
    )
    assert summary["params"] > bert_params


REAL = Path(__file__).resolve().parents[3] / "shared" / "data" / "real"


@pytest.mark.slow
@pytest.mark.skipif(
    not (REAL / "mosi_utterance_2way.npz").exists(), reason="real MOSI utterance data not present"
)
def test_learns_on_real_mosi_utterances(tmp_path, mosi_flags):
    # an MLP over the concatenated modalities reaches about 80% test accuracy on this split
    summary = main(
        mosi_flags(REAL, out=tmp_path, lr="1e-3", batch_size="64")
        + ["--format", "poria", "--epochs", "6"]
    )
    assert summary["mean"]["Acc2"] > 0.72, summary["mean"]
