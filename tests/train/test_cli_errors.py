"""train/main.py refuses every bad flag, data file and checkpoint with exit status 2 and one line
on stderr that names it (no traceback), and saves its results before optional extras."""

import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from train import checkpoint
from train.checks import check_args
from train.data import write_demo
from train.main import (
    build_parser,
    cli,
    format_table,
    main,
    ordered_metrics,
    summarise,
    write_results,
)
from train.metrics import emotion_columns

TINY = dict(n_train=48, n_valid=16, n_test=16, seq_len=8)


def run_cli(monkeypatch, capsys, argv):
    """(exit status, stderr) of train/main.py with argv, in this process."""
    monkeypatch.setattr(sys, "argv", ["train/main.py"] + argv)
    with pytest.raises(SystemExit) as exc:
        cli()
    return exc.value.code, capsys.readouterr().err


def assert_one_line_error(code, err, *parts):
    assert code == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    for part in parts:
        assert part in err, (part, err)


@pytest.mark.parametrize(
    "flags, parts",
    [
        (["--heads", "0"], ["--heads: expected a divisor of --d 50"]),
        (["--heads", "3"], ["--heads: expected a divisor of --d 50", "got 3"]),
        (["--d", "0", "--heads", "1"], ["--d: expected a representation size >= 1, got 0"]),
        (["--layers", "-1"], ["--layers: expected", ">= 0, got -1"]),
        (["--dropout", "1"], ["--dropout: expected a probability in [0, 1), got 1.0"]),
        (["--dropout", "nan"], ["--dropout: expected"]),
        (["--batch-size", "0"], ["--batch-size: expected at least 1", "got 0"]),
        (["--epochs", "0"], ["--epochs: expected at least 1, got 0"]),
        (["--epochs", "-2"], ["--epochs: expected at least 1, got -2"]),
        (["--lr", "-1"], ["--lr: expected a finite number > 0, got -1.0"]),
        (["--lr", "0"], ["--lr: expected a finite number > 0"]),
        (["--lr", "nan"], ["--lr: expected a finite number > 0, got nan"]),
        (["--lr", "inf"], ["--lr: expected a finite number > 0, got inf"]),
        (["--text-lr=-1e-5"], ["--text-lr: expected a finite number > 0"]),
        (["--alpha", "-5"], ["--alpha: expected a number in (0, 1]", "got -5.0"]),
        (["--alpha", "nan"], ["--alpha: expected a number in (0, 1]", "got nan"]),
        (["--alpha", "1.5"], ["--alpha: expected a number in (0, 1]"]),
        (["--beta", "0"], ["--beta: expected a number in (0, 1]"]),
        (["--beta", "1.5"], ["--beta: expected a number in (0, 1]"]),
        (["--gamma", "0"], ["--gamma: expected a number > 0 and finite"]),
        (["--gamma", "inf"], ["--gamma: expected a number > 0 and finite"]),
        (["--lambdas", "nan,1,1"], ["--lambdas: expected three finite numbers >= 0", "nan"]),
        (["--lambdas", "1,inf,1"], ["--lambdas: expected three finite numbers >= 0"]),
        (["--lambdas", "1,1,-1"], ["--lambdas: expected three finite numbers >= 0"]),
        (["--lambdas", "1,2"], ["--lambdas: expected three comma-separated numbers"]),
        (["--seeds", "1,1"], ["--seeds: expected each seed once", "1 more than once"]),
        (["--seeds", "1,x"], ["--seeds: expected comma-separated integers"]),
        (["--seeds", ","], ["--seeds: expected at least one seed"]),
        (["--device", "tpu"], ["--device: expected auto, cpu, cuda or cuda:N, got 'tpu'"]),
        (["--device", "meta"], ["--device: expected auto, cpu, cuda or cuda:N, got 'meta'"]),
        (["--device", "cuda:x"], ["--device: expected auto, cpu, cuda or cuda:N"]),
        (
            ["--text-encoder", "bert", "--pretrained", "/nonexistent"],
            ["--pretrained /nonexistent: the path does not exist"],
        ),
        (["--max-seq-len", "0"], ["--max-seq-len: expected at least 1"]),
        (["--num-workers", "-1"], ["--num-workers: expected 0 or more"]),
        (["--no-negative-selection"], ["need --pair-selection (HyCon-v2)"]),
        (["--memory-size", "-3"], ["--memory-size: expected an integer >= 0 (0 = off), got -3"]),
        (["--memory-size", "8", "--no-contrastive"], ["--memory-size: applies to the hycon"]),
        (["--triplet-margin", "0.5"], ["--triplet-margin: applies to --contrastive-loss"]),
    ],
)
def test_bad_flags_end_in_one_line_naming_the_flag(monkeypatch, capsys, tmp_path, flags, parts):
    out = tmp_path / "out"
    code, err = run_cli(
        monkeypatch, capsys, ["--dataset", "mosi", "--demo", "--out", str(out)] + flags
    )
    assert_one_line_error(code, err, *parts)
    assert not out.exists()  # refused before any work


def test_an_out_that_is_a_file_is_refused(monkeypatch, capsys, tmp_path):
    a_file = tmp_path / "results.txt"
    a_file.write_text("kept")
    for out, part in [
        (a_file, f"--out: expected a folder, got the file {a_file}"),
        (a_file / "run", f"--out: cannot make the folder {a_file / 'run'}"),
    ]:
        code, err = run_cli(monkeypatch, capsys, ["--dataset", "mosi", "--demo", "--out", str(out)])
        assert_one_line_error(code, err, part)
    assert a_file.read_text() == "kept"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.txt"]  # nothing written


def test_cuda_on_a_cpu_build_is_refused(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(torch.version, "cuda", None)  # what a CPU build of torch reports
    code, err = run_cli(
        monkeypatch,
        capsys,
        ["--dataset", "mosi", "--demo", "--device", "cuda", "--out", str(tmp_path)],
    )
    assert_one_line_error(code, err, "--device cuda: this torch", "is a CPU build without CUDA")


def test_a_missing_gpu_is_refused(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(torch.version, "cuda", "12.8")  # a CUDA build on a machine without a GPU
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code, err = run_cli(
        monkeypatch,
        capsys,
        ["--dataset", "mosi", "--demo", "--device", "cuda:1", "--out", str(tmp_path)],
    )
    assert_one_line_error(code, err, "--device cuda:1: no CUDA GPU is visible")


# train/main.py run as a script in a fresh interpreter; prints its exit status and which heavy
# modules it imported (torch._dynamo, sklearn: needed only to compile or score, not to parse).
HEAVY_IMPORTS = """
import sys
from train.main import cli

sys.argv = ["train/main.py"] + sys.argv[1:]
try:
    cli()
except SystemExit as stop:
    print(stop.code, [m for m in ("torch._dynamo", "sklearn") if m in sys.modules])
"""


@pytest.mark.parametrize(
    "argv, code", [(["--help"], 0), (["--dataset", "mosi", "--demo", "--lr", "-1"], 2)]
)
def test_help_and_flag_errors_import_neither_dynamo_nor_sklearn(argv, code):
    root = Path(__file__).resolve().parents[2]
    run = subprocess.run(
        [sys.executable, "-c", HEAVY_IMPORTS, *argv],
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.stdout.splitlines()[-1] == f"{code} []", (run.stdout[-500:], run.stderr)


def _hide_the_extension(monkeypatch):
    """What hycon_ext.ops reports when hycon_ext._C is not built (the real build is untouched)."""
    from hycon_ext import ops

    monkeypatch.setattr(ops, "_LOAD_ERROR", ImportError("No module named 'hycon_ext._C'"))


def test_backend_ext_without_the_built_extension_is_refused(monkeypatch, capsys, tmp_path):
    _hide_the_extension(monkeypatch)
    out = tmp_path / "out"
    code, err = run_cli(
        monkeypatch,
        capsys,
        ["--dataset", "mosi", "--demo", "--backend", "ext", "--device", "cpu", "--out", str(out)],
    )
    assert_one_line_error(
        code,
        err,
        "--backend ext: the hycon_ext C++ extension is not built or does not load",
        "No module named 'hycon_ext._C'",
        "`make setup`",
        "--backend reference",
    )
    assert not out.exists()  # refused before any work


def test_backend_ext_without_kernels_for_the_gpu_is_refused(monkeypatch, capsys, tmp_path):
    from hycon_ext import ops

    # a CUDA machine whose extension was built with the CPU kernels only
    monkeypatch.setattr(torch.version, "cuda", "12.8")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(
        ops, "is_available", lambda device="cpu": torch.device(device).type == "cpu"
    )
    out = tmp_path / "out"
    code, err = run_cli(
        monkeypatch,
        capsys,
        ["--dataset", "mosi", "--demo", "--backend", "ext", "--device", "cuda", "--out", str(out)],
    )
    assert_one_line_error(
        code,
        err,
        "--backend ext: the hycon_ext kernels are not built for cuda",
        "`make setup`",
        "--backend reference",
    )
    assert not out.exists()


@pytest.mark.parametrize("flags", [["--backend", "auto"], ["--backend", "ext", "--no-contrastive"]])
def test_runs_that_need_no_kernels_pass_the_backend_check(monkeypatch, flags):
    _hide_the_extension(monkeypatch)
    args = build_parser().parse_args(["--dataset", "mosi", "--demo", "--device", "cpu"] + flags)
    check_args(args)  # auto falls back to the reference; --no-contrastive never calls hycon_ext


def test_a_pretrained_name_missing_from_the_cache_is_one_line(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # no download attempt: the cache only
    data = tmp_path / "data"
    write_demo("mosi", data, "magbert", **TINY)
    code, err = run_cli(
        monkeypatch,
        capsys,
        [
            "--dataset",
            "mosi",
            "--data-dir",
            str(data),
            "--format",
            "magbert",
            "--text-encoder",
            "bert",
            "--pretrained",
            "no-such-model-here",
            "--out",
            str(tmp_path / "o"),
        ],
    )
    assert_one_line_error(
        code, err, "--text-encoder bert: cannot load the tokenizer of 'no-such-model-here'"
    )


@pytest.mark.parametrize("split", ["test", "valid"])
def test_an_empty_split_names_the_file_and_the_split(monkeypatch, capsys, tmp_path, split):
    path = write_demo("mosi", tmp_path / "data", **TINY)
    with open(path, "rb") as f:
        data = pickle.load(f)
    data[split] = {key: value[:0] for key, value in data[split].items()}
    with open(path, "wb") as f:
        pickle.dump(data, f)
    code, err = run_cli(
        monkeypatch,
        capsys,
        ["--dataset", "mosi", "--data-dir", str(path.parent), "--out", str(tmp_path / "o")],
    )
    assert_one_line_error(code, err, str(path), f"the {split} split has no samples")


@pytest.mark.slow
def test_results_are_written_before_a_failing_tsne(monkeypatch, capsys, tmp_path, mosi_flags):
    data = tmp_path / "data"
    write_demo("mosi", data, n_train=32, n_valid=8, n_test=2, seq_len=8)  # t-SNE needs 3 samples
    out = tmp_path / "o"
    monkeypatch.setattr(
        sys,
        "argv",
        ["train/main.py"] + mosi_flags(data, out=out, lr=None) + ["--epochs", "1", "--tsne"],
    )
    cli()  # returns: the run succeeded
    err = capsys.readouterr().err
    assert err.startswith("warning: --tsne: no plot for seed 1") and err.count("\n") == 1, err
    assert json.loads((out / "results.json").read_text())["seeds"][0]["seed"] == 1
    assert (out / "results.csv").read_text().startswith("row,Acc7,Acc2,F1,MAE,Corr,")
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*.tmp"))


def test_table_cells_never_run_together():
    table = format_table(
        ["Acc7", "MAE"],
        [
            ("seed 1", {"Acc7": -123456.7, "MAE": 98765.4321}),
            ("a long row name", {"Acc7": 0.5, "MAE": 0.1}),
        ],
    )
    header, first, second = table.splitlines()
    assert first.split() == ["seed", "1", "-12345670.0", "98765.432"]
    assert second.split()[-2:] == ["50.0", "0.100"]
    assert len({len(line) for line in (header, first, second)}) == 1


def test_results_csv_json_and_printout_share_one_column_order(tmp_path):
    emotions = ["Neutral", "Happy", "Sad", "Angry"]  # the file's order; Table 3 starts with Happy
    columns = emotion_columns(emotions)
    raw = {f"{e}_{m}": 0.5 for e in emotions for m in ("Acc", "F1")} | {
        "Avg_Acc": 0.5,
        "Avg_F1": 0.5,
    }
    result = {
        "seed": 1,
        "test": ordered_metrics(raw, columns),
        "params": 1,
        "train_time_s": 1.0,
        "test_inference_s": 0.1,
        "best_epoch": 1,
    }
    mean, std = summarise([result])
    write_results(tmp_path, {"seeds": [result], "mean": mean, "std": std, "columns": columns})
    header = (tmp_path / "results.csv").read_text().splitlines()[0].split(",")
    saved = json.loads((tmp_path / "results.json").read_text())
    assert (
        header[1 : 1 + len(columns)]
        == columns
        == list(saved["seeds"][0]["test"])
        == list(saved["mean"])
    )
    assert format_table(columns, [("mean", mean)]).split()[: len(columns)] == columns


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, mosi_flags):
    """A finished two-epoch run on tiny MOSI demo data.

    Its value: (its flags without --out and --epochs, its out).
    """
    root = tmp_path_factory.mktemp("trained")
    data = root / "data"
    write_demo("mosi", data, **TINY)
    flags = mosi_flags(data)
    main(flags + ["--epochs", "2", "--out", str(root / "out")])
    return flags, root / "out"


def _copy(run, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(run, out)
    return out


def _other_data(tmp_path):
    data = tmp_path / "other"
    write_demo("mosi", data, **{**TINY, "n_train": 40})
    return data


@pytest.mark.parametrize(
    "change, parts",
    [
        (["--lr", "0.01"], ["--lr 0.003 in the checkpoint, 0.01 now"]),
        (
            ["--batch-size", "8"],
            ["--batch-size x processes (the global batch) 16 in the checkpoint, 8 now"],
        ),
        (["--pair-selection"], ["--pair-selection False in the checkpoint, True now"]),
        (["--fusion", "concat"], ["--fusion 'add' in the checkpoint, 'concat' now"]),
        (
            ["--d", "10", "--heads", "2"],
            ["--d 50 in the checkpoint, 10 now", "--heads 5 in the checkpoint, 2 now"],
        ),
        (
            ["--lambdas", "1,0.5,1"],
            ["--lambdas [1.0, 1.0, 1.0] in the checkpoint, [1.0, 0.5, 1.0] now"],
        ),
        ("other data", ["the data (--dataset/--data-dir/--format)", "train 48", "train 40"]),
        (
            ["--epochs", "1"],
            ["--epochs 1:", "has already trained 2 epochs; expected --epochs >= 2"],
        ),
    ],
)
def test_resume_refuses_another_configuration(
    monkeypatch, capsys, tmp_path, trained_run, change, parts
):
    flags, run = trained_run
    out = _copy(run, tmp_path)
    if change == "other data":
        change = ["--data-dir", str(_other_data(tmp_path))]
    code, err = run_cli(
        monkeypatch, capsys, flags + ["--out", str(out), "--epochs", "3", "--resume"] + change
    )
    assert_one_line_error(code, err, *parts)
    if "--epochs" not in change:
        assert str(out / "seed1" / "last.pt") in err and "drop --resume" in err


def test_resume_compares_what_the_ablation_switches_set(tmp_path):
    """--no-margin is --alpha 1 and --no-iamcl a zero first lambda, whichever way a run says it."""
    base = dict(alpha=0.8, no_margin=False, lambdas=[1.0, 1.0, 1.0], no_iamcl=False, lr=0.003)
    saved = {"config": dict(base, no_margin=True, no_iamcl=True), "epoch": 2}
    path = tmp_path / "last.pt"
    checkpoint.check_resume(path, saved, dict(base, alpha=1.0, lambdas=[0.0, 1.0, 1.0]), 3)
    with pytest.raises(checkpoint.CheckpointError, match="--alpha 1.0 in the checkpoint, 0.8 now"):
        checkpoint.check_resume(path, saved, dict(base, lambdas=[0.0, 1.0, 1.0]), 3)
    with pytest.raises(checkpoint.CheckpointError, match=r"--lambdas \[0.0, 1.0, 1.0\] in the"):
        checkpoint.check_resume(path, saved, dict(base, alpha=1.0), 3)


@pytest.mark.parametrize("damage", ["truncated", "empty", "random", "not a checkpoint"])
def test_resume_refuses_a_damaged_checkpoint(monkeypatch, capsys, tmp_path, trained_run, damage):
    flags, run = trained_run
    out = _copy(run, tmp_path)
    last = out / "seed1" / "last.pt"
    if damage == "truncated":
        last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    elif damage == "empty":
        last.write_bytes(b"")
    elif damage == "random":
        last.write_bytes(
            torch.randint(
                0, 256, (4096,), generator=torch.Generator().manual_seed(0), dtype=torch.uint8
            )
            .numpy()
            .tobytes()
        )
    else:
        torch.save({"weights": torch.zeros(3)}, last)
    code, err = run_cli(
        monkeypatch, capsys, flags + ["--out", str(out), "--epochs", "3", "--resume"]
    )
    assert_one_line_error(code, err, str(last), f"delete {last}", "drop --resume")


@pytest.mark.slow
def test_resume_may_grow_epochs_and_records_what_was_used(tmp_path, trained_run):
    flags, run = trained_run
    out = _copy(run, tmp_path)
    # --device, --backend, --metrics-convention may change: they change neither model, data nor
    # optimisation
    summary = main(
        flags[:-2]
        + [
            "--backend",
            "auto",
            "--device",
            "cpu",
            "--metrics-convention",
            "mult",
            "--out",
            str(out),
            "--epochs",
            "3",
            "--resume",
        ]
    )
    saved = json.loads((out / "results.json").read_text())
    assert saved["seeds"][0]["resumed_after_epoch"] == 2 and saved["epochs"] == 3
    assert saved["lr"] == summary["lr"] == 3e-3  # the optimizer's learning rate
    assert checkpoint.load(out / "seed1" / "last.pt")["epoch"] == 3


def test_atomic_writes_leave_the_old_file_when_interrupted(tmp_path):
    path = tmp_path / "results.json"
    checkpoint.write_text(path, "old")

    def fail_midway(f):
        f.write(b"half of the new cont")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        checkpoint._write_atomic(path, fail_midway)
    assert path.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == [
        "results.json"
    ]
    (tmp_path / ".results.json.abc.tmp").write_text("left by a killed process")
    checkpoint.write_text(path, "new")
    assert path.read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == [
        "results.json"
    ]


def test_out_of_memory_is_one_line_naming_the_batch_size(monkeypatch, capsys, tmp_path):
    from train import main as main_module

    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB\nmore")

    monkeypatch.setattr(main_module, "_train", out_of_memory)
    code, err = run_cli(
        monkeypatch, capsys, ["--dataset", "mosi", "--demo", "--out", str(tmp_path)]
    )
    assert code == 1 and err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith("error: out of memory (CUDA out of memory. Tried to allocate 2.00 GiB)")
    assert "smaller --batch-size" in err
