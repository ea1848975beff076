"""train/main.py under torchrun: 2 gloo processes on CPU vs 1 process with the same global batch.

The 2-process run trains on exactly the batches the 1-process run draws with twice the batch
size (train.distributed.ShardedBatchSampler), with --dropout 0 so no per-process randomness
differs. What remains is float32 rounding: the ranks' GEMMs have other shapes than the single
process's, DDP sums gradients in another order, and the losses are all-reduced. Over a few
steps that moves losses and MAE/Corr by ~1e-6 here; TOL (1e-4) leaves room for other BLAS
builds. Accuracies and F1 would differ only if a prediction sat within rounding of a decision
threshold, which these seeds do not produce.
"""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from train import distributed
from train import main as main_module
from train.data import write_demo
from train.main import main
from train.objectives import hybrid_loss

REPO = Path(__file__).resolve().parents[2]
TOL = 1e-4
# 61 training samples: global batches of 16 end with one of 13, split 7/6 over the ranks
COMMON = ["--epochs", "2", "--lr", "3e-3", "--dropout", "0", "--backend", "auto"]
# Every run here trains on the CPU (gloo under torchrun): with --device auto, a machine with
# fewer GPUs than processes refuses to start, and 1-GPU vs 2-process results would differ by device.
CPU = ["--device", "cpu"]


def _torchrun(args, nproc=2):
    """Run train/main.py under torchrun (free port picked by --standalone); returns its stdout."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        str(REPO / "train" / "main.py"),
    ] + args
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def _results(out):
    return json.loads((out / "results.json").read_text())["seeds"][0]


def _assert_close_results(got, expected, tol):
    assert got["best_epoch"] == expected["best_epoch"]
    for key in ("valid_loss", "test_loss"):
        assert got[key] == pytest.approx(expected[key], rel=tol, abs=tol), key
    for split in ("valid", "test"):
        assert got[split].keys() == expected[split].keys()
        for key, value in expected[split].items():
            assert got[split][key] == pytest.approx(value, abs=tol), (split, key)


@pytest.mark.slow
@pytest.mark.parametrize(
    "dataset, extra",
    [
        # the cross-batch memory holds the global batches on both ranks; the terms summed over the
        # global batch
        ("mosi", ["--memory-size", "24", "--hybrid-reduction", "sum"]),
        ("iemocap", ["--pair-selection"]),  # h = floor(0.2 * 16) = 3 from the global batch of 16
    ],
)
def test_two_processes_match_one_process_with_the_global_batch(tmp_path, dataset, extra):
    data = tmp_path / "data"
    # valid: shards of 9 and 8 samples, so 2 and 1 evaluation batches of 8
    write_demo(dataset, data, seed=0, n_train=61, n_valid=17, n_test=20, seq_len=8)
    args = ["--dataset", dataset, "--data-dir", str(data)] + COMMON + CPU + extra
    printed = _torchrun(args + ["--out", str(tmp_path / "ddp"), "--batch-size", "8"])
    single = main(args + ["--out", str(tmp_path / "one"), "--batch-size", "16"])

    ddp = _results(tmp_path / "ddp")
    _assert_close_results(ddp, single["seeds"][0], TOL)
    assert json.loads((tmp_path / "ddp" / "results.json").read_text())["world_size"] == 2
    # rank 0 alone prints (and writes) the results; rank 1 stays silent
    assert printed.count("results: ") == 1 and printed.count("epoch 2: train") == 1
    assert "global batch 16" in printed

    # control: the per-process batch in one process trains on other batches and misses TOL
    other = main(args + ["--out", str(tmp_path / "other"), "--batch-size", "8"])["seeds"][0]
    assert abs(other["test_loss"] - ddp["test_loss"]) > 10 * TOL


@pytest.mark.slow
def test_demo_written_by_rank0_and_resume_continues_exactly(tmp_path):
    """--demo (rank 0 writes, the others wait) and --resume with dropout on: the per-rank RNG
    states in last.pt make 1 + 1 resumed epochs equal 2 uninterrupted ones."""
    # the feature transformer: the demo's small BERT would only make this test slower (its DDP
    # path is test_pretrained_text_encoder_under_ddp)
    args = [
        "--dataset",
        "mosi",
        "--demo",
        "--text-encoder",
        "transformer",
        "--batch-size",
        "16",
        "--backend",
        "auto",
    ] + CPU
    full = _torchrun(args + ["--epochs", "2", "--out", str(tmp_path / "full")])
    assert full.count("demo: wrote") == 1
    _torchrun(args + ["--epochs", "1", "--out", str(tmp_path / "part")])
    resumed = _torchrun(args + ["--epochs", "2", "--resume", "--out", str(tmp_path / "part")])
    assert resumed.count("resumed from") == 1
    got, expected = _results(tmp_path / "part"), _results(tmp_path / "full")
    assert got["test"] == expected["test"] and got["test_loss"] == expected["test_loss"]


@pytest.mark.slow
def test_ctrl_c_under_torchrun_keeps_finished_epochs_and_says_how_to_resume(tmp_path):
    """Ctrl-C in a terminal signals torchrun and every worker: rank 0 alone says how to continue
    (the launcher's own options are not visible to a worker), and --resume continues."""
    out = tmp_path / "out"
    args = ["--dataset", "iemocap", "--demo", "--out", str(out), "--batch-size", "16"] + CPU
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    proc = subprocess.Popen(
        launcher + [str(REPO / "train" / "main.py"), *args, "--epochs", "500"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, signalled as a terminal would
    )
    try:
        for line in proc.stdout:
            if line.startswith("seed 1 epoch 2:"):  # printed after epoch 2's checkpoint
                break
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    ours = [line for line in err.splitlines() if line.startswith("interrupted: ")]
    assert len(ours) == 1, err  # rank 0 only
    assert ours[0].endswith(
        f"continue with: torchrun with the same options, and "
        f"{REPO / 'train' / 'main.py'} {' '.join(args)} --epochs 500 --resume"
    ), ours[0]
    done = torch.load(out / "seed1" / "last.pt", weights_only=True)["epoch"]
    assert 2 <= done < 500
    resumed = _torchrun(args + ["--epochs", str(done + 1), "--resume"])
    assert resumed.count(f"resumed from {out / 'seed1' / 'last.pt'} after epoch {done}") == 1


def test_comparison_losses_are_refused_under_torchrun(tmp_path, monkeypatch):
    two_ranks = distributed.DistContext(0, 2, 0, torch.device("cpu"), "gloo")
    monkeypatch.setattr(distributed, "init_from_env", lambda backend=None: two_ranks)
    with pytest.raises(ValueError, match="--contrastive-loss triplet: under torchrun only hycon"):
        main(
            ["--dataset", "mosi", "--demo", "--out", str(tmp_path), "--contrastive-loss", "triplet"]
        )
    # A GPU index is refused under torchrun (each process takes GPU LOCAL_RANK); asked of the
    # device choice itself, since on a CPU build --device cuda:1 already fails check_args.
    args = main_module.build_parser().parse_args(["--dataset", "mosi", "--device", "cuda:1"])
    with pytest.raises(ValueError, match="--device: under torchrun"):
        main_module._device(args, two_ranks)


def test_hybrid_loss_refuses_comparison_losses_on_the_global_batch():
    x = torch.randn(4, 5)
    with pytest.raises(ValueError, match="only 'hycon' pairs anchors across the global batch"):
        hybrid_loss(
            x,
            x,
            x,
            torch.tensor([0, 1, 0, 1]),
            loss="npair",
            global_batch=True,
            backend="reference",
        )


@pytest.mark.slow
def test_pretrained_text_encoder_under_ddp(tmp_path, tiny_bert_magbert):
    """BERT's pooler gets no gradient: DDP must run with find_unused_parameters (else it raises)."""
    _torchrun(
        [
            "--dataset",
            "mosi",
            "--data-dir",
            str(tiny_bert_magbert.data),
            "--format",
            "magbert",
            "--text-encoder",
            "bert",
            "--pretrained",
            str(tiny_bert_magbert.bert),
            "--max-seq-len",
            "12",
            "--epochs",
            "2",
            "--batch-size",
            "8",
            "--out",
            str(tmp_path / "out"),
        ]
        + CPU
    )
    assert _results(tmp_path / "out")["best_epoch"] in (1, 2)


def test_splits_smaller_than_the_number_of_processes_are_refused(tmp_path, demo_bundle):
    from train.engine import TrainSettings, run_seed
    from train.model import ModelConfig

    bundle = demo_bundle("mosi", n_valid=1)
    two_ranks = distributed.DistContext(1, 2, 1, torch.device("cpu"), "gloo")
    settings = TrainSettings(epochs=1, batch_size=4, lr=1e-3, text_lr=1e-3)
    with pytest.raises(ValueError, match="valid split: 1 samples for 2 processes"):
        run_seed(bundle, ModelConfig(d=10, heads=2), settings, 1, tmp_path, ctx=two_ranks)
