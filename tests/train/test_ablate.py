"""train/ablate.py: the paper's tables as data, runs through main.py, resuming, outputs, errors."""

import json
from pathlib import Path

import numpy as np
import pytest

from train import ablate
from train import main as train_main
from train.data import write_demo
from train.paper_tables import PAPER_COLUMNS, TABLES

REAL = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "real"
FAST = ["--epochs", "1", "--batch-size", "16", "--lr", "1e-3", "--backend", "reference"]


@pytest.mark.parametrize("number", sorted(TABLES))
def test_every_row_is_valid_main_flags_with_the_papers_numbers(number, tmp_path):
    table = TABLES[number]
    keys = [r.key for r in table.rows]
    assert len(set(keys)) == len(keys)
    for row in table.rows:
        argv = ablate.row_argv(
            ablate.build_parser().parse_args(["--dataset", "mosi", "--table", str(number)]),
            row,
            [],
            1,
            tmp_path,
        )
        ablate.check_row_flags(argv)  # raises for unknown or contradictory flags
        if not row.paper:  # only the memory table, which is not the paper's, has such rows
            assert number == 9, row
            continue
        assert len(row.paper) == len(PAPER_COLUMNS)
        acc7, acc2, f1, mae, corr = row.paper
        assert (
            40 < acc7 < 50
            and 80 < acc2 < 90
            and 80 < f1 < 90
            and 0.6 < mae < 0.8
            and 0.7 < corr < 0.9
        )


def test_table4_rows_make_the_ablation_loss_settings(tmp_path):
    args = ablate.build_parser().parse_args(["--dataset", "mosi", "--table", "4"])
    settings = {}
    for row in TABLES[4].rows:
        parsed = train_main.build_parser().parse_args(ablate.row_argv(args, row, [], 1, tmp_path))
        settings[row.key] = (parsed.no_contrastive, train_main.loss_settings(parsed))
    assert settings["no-contrastive"][0] and not settings["hycon"][0]
    assert settings["no-margin"][1]["alpha"] == 1.0 and settings["hycon"][1]["alpha"] == 0.8
    assert settings["no-refinement"][1]["refinement"] is False
    assert [settings[k][1]["lambdas"] for k in ("no-iamcl", "no-iemcl", "no-scl")] == [
        (0.0, 1.0, 1.0),
        (1.0, 0.0, 1.0),
        (1.0, 1.0, 0.0),
    ]
    v2, no_pos, no_neg = (
        settings[k][1] for k in ("v2", "v2-no-positive-selection", "v2-no-negative-selection")
    )
    assert v2["pair_selection"] and v2["select_positives"] and v2["select_negatives"]
    assert (
        not no_pos["select_positives"] and no_pos["select_negatives"] and no_pos["pair_selection"]
    )
    assert no_neg["select_positives"] and not no_neg["select_negatives"]


def test_runs_rows_resumes_and_writes_the_papers_layout(tmp_path, monkeypatch, capsys):
    data = tmp_path / "data"
    write_demo("mosi", data, seed=0, n_train=48, n_valid=16, n_test=16, seq_len=6)
    out = tmp_path / "abl"
    argv = [
        "--dataset",
        "mosi",
        "--table",
        "4",
        "--seeds",
        "1,2",
        "--rows",
        "no-contrastive,hycon",
        "--data-dir",
        str(data),
        "--out",
        str(out),
    ] + FAST
    entries = ablate.main(argv)
    assert [e["key"] for e in entries] == ["no-contrastive", "hycon"]
    for e in entries:
        assert e["seeds"] == [1, 2] and len(e["per_seed"]) == 2
        acc2 = [s["Acc2"] for s in e["per_seed"]]
        assert e["mean"]["Acc2"] == pytest.approx(np.mean(acc2))
        assert e["std"]["Acc2"] == pytest.approx(np.std(acc2, ddof=1))
        assert (out / e["key"] / "seed2" / "results.json").exists() and (
            out / e["key"] / "seed1" / "run.log"
        ).exists()
    saved = json.loads((out / "ablation.json").read_text())
    assert saved["table"] == 4 and saved["rows"][1]["paper"]["Acc2"] == 85.2
    md = (out / "ablation.md").read_text()
    lines = [line for line in md.splitlines() if line.startswith("| HyCon")]
    assert lines[0].startswith("| HyCon (W/O Contrast Learning) |") and "(82.7)" in lines[0]
    assert lines[1].startswith("| HyCon |") and "(0.713)" in lines[1] and " ± " in lines[1]
    assert "python train/ablate.py --dataset mosi --table 4" in md
    assert "epoch" not in capsys.readouterr().out  # main.py's printout went into the run logs

    def no_training(argv):
        raise AssertionError(f"a finished row was rerun: {argv}")

    monkeypatch.setattr(train_main, "main", no_training)
    again = ablate.main(argv)
    assert [e["mean"] for e in again] == [e["mean"] for e in entries]
    with pytest.raises(ValueError, match="finished with other settings.*epochs"):
        ablate.main(argv + ["--epochs", "2"])


def test_memory_rows_have_no_paper_numbers_in_the_table(tmp_path):
    data = tmp_path / "data"
    write_demo("mosi", data, seed=0, n_train=48, n_valid=16, n_test=16, seq_len=6)
    out = tmp_path / "abl"
    argv = ["--dataset", "mosi", "--table", "9", "--seeds", "1", "--rows", "memory-256"]
    entries = ablate.main(argv + ["--data-dir", str(data), "--out", str(out)] + FAST)
    assert entries[0]["flags"] == ["--memory-size", "256"] and entries[0]["paper"] == {}
    (line,) = [x for x in (out / "ablation.md").read_text().splitlines() if "Q = 256" in x]
    assert " ± " in line and "(" not in line.split("|", 2)[2]


@pytest.mark.parametrize(
    "extra, match",
    [
        (["--seed", "3"], "--seed: set by train/ablate.py"),
        (["--resume"], "--resume: set by"),
        (["--rows", "hycon,nope"], "--rows: unknown row"),
        (["--seeds", "1,1"], "--seeds"),
        (["--epochz", "2"], "--epochz: not a train/main.py flag"),
        (["--contrastive-loss", "npair"], "hycon only"),  # contradicts the v2 rows
    ],
)
def test_bad_flags_fail_before_training(extra, match, tmp_path):
    with pytest.raises(ValueError, match=match):
        ablate.main(["--dataset", "mosi", "--table", "4", "--out", str(tmp_path)] + extra)
    assert not (tmp_path / "ablation.md").exists()


def test_runs_on_the_real_mosi_features(tmp_path):
    # CI has ../shared/data/real (Poria et al. 2017's utterance features): a missing copy is a
    # failure
    if not (REAL / "mosi_utterance_2way.npz").is_file():
        pytest.fail(
            f"{REAL / 'mosi_utterance_2way.npz'} is missing: the real MOSI utterance features are "
            f"expected in ../shared/data/real relative to the repository"
        )
    entries = ablate.main(
        [
            "--dataset",
            "mosi",
            "--table",
            "4",
            "--seeds",
            "1",
            "--rows",
            "no-contrastive,hycon",
            "--data-dir",
            str(REAL),
            "--format",
            "poria",
            "--epochs",
            "2",
            "--batch-size",
            "64",
            "--lr",
            "1e-3",
            "--backend",
            "reference",
            "--out",
            str(tmp_path),
        ]
    )
    for e in entries:
        assert e["format"] == "poria" and e["epochs"] == 2
        # chance is about 50%; text alone gets about 79% on these features
        assert e["mean"]["Acc2"] > 0.6, e
