"""No finished work is lost: a training process killed (SIGKILL) while it writes a checkpoint
resumes to exactly the weights of an uninterrupted run, and Ctrl-C (SIGINT) keeps the finished
epochs, says how to continue in one line and exits with status 130."""

import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from train import checkpoint
from train.data import write_demo
from train.main import main

ROOT = Path(__file__).resolve().parents[2]
# Python that dies as `kill -9` would, halfway through writing the last.pt of epoch 2 (after
# best.pt of that epoch is complete): the real torch.save writes FRACTION of its bytes first.
DIE_WHILE_SAVING = """
import io, os, signal, sys
import torch

fraction = float(sys.argv.pop(1))
real_save = torch.save

def save_then_die(obj, f, *args, **kwargs):
    if isinstance(obj, dict) and obj.get("epoch") == 2 and "optimizer" in obj:
        data = io.BytesIO()
        real_save(obj, data)
        f.write(data.getvalue()[: int(fraction * len(data.getvalue()))])
        f.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    real_save(obj, f, *args, **kwargs)

torch.save = save_then_die
from train.main import cli

sys.argv[0] = "train/main.py"
cli()
"""


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    path = tmp_path_factory.mktemp("interrupts")
    write_demo("mosi", path, n_train=48, n_valid=16, n_test=16, seq_len=8)
    return path


def _env():
    # the same number of threads as this process, so that the killed run computes bit for bit
    # what an uninterrupted run in this process computes
    return {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads()), "PYTHONPATH": str(ROOT)}


@pytest.fixture(scope="module")
def uninterrupted(data, tmp_path_factory, mosi_flags):
    out = tmp_path_factory.mktemp("straight")
    summary = main(mosi_flags(data, out) + ["--epochs", "3"])
    return summary, checkpoint.load(out / "seed1" / "last.pt")


@pytest.mark.slow
def test_sigkill_while_writing_a_checkpoint_then_resume_equals_an_uninterrupted_run(
    data, tmp_path, uninterrupted, mosi_flags
):
    out = tmp_path / "out"
    killed = subprocess.run(
        [sys.executable, "-c", DIE_WHILE_SAVING, "0.5", *mosi_flags(data, out), "--epochs", "3"],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    seed_dir = out / "seed1"
    assert len(list(seed_dir.glob(".last.pt.*.tmp"))) == 1  # it died inside the write
    # the last complete checkpoint survived
    assert checkpoint.load(seed_dir / "last.pt")["epoch"] == 1

    resumed = main(mosi_flags(data, out) + ["--epochs", "3", "--resume"])
    summary, straight = uninterrupted
    last = checkpoint.load(seed_dir / "last.pt")
    assert last["epoch"] == 3 and last["best_epoch"] == straight["best_epoch"]
    for key, weights in straight["model"].items():
        assert torch.equal(weights, last["model"][key]), key
    assert resumed["mean"] == pytest.approx(summary["mean"], nan_ok=True)
    assert not list(seed_dir.glob(".*.tmp"))  # the next write cleared what the kill left


@pytest.mark.slow
def test_ctrl_c_keeps_finished_epochs_and_says_how_to_resume(data, tmp_path, mosi_flags):
    flags = mosi_flags(data, tmp_path / "out") + ["--epochs", "500"]
    proc = subprocess.Popen(
        [sys.executable, "-u", "train/main.py", *flags],
        cwd=ROOT,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        for line in proc.stdout:
            if line.startswith("seed 1 epoch 2:"):  # printed after epoch 2's checkpoint is written
                break
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert "Traceback" not in err and err.count("\n") == 1, err
    assert err.startswith(
        f"interrupted: the finished epochs are kept in {tmp_path / 'out'}/seed<N>/last.pt"
    )
    command = shlex.split(err.split("continue with: ")[1])
    assert command == ["python", "train/main.py", *flags, "--resume"]
    done = checkpoint.load(tmp_path / "out" / "seed1" / "last.pt")["epoch"]
    assert 2 <= done < 500

    # the printed command continues from there (here with a smaller --epochs, to finish quickly)
    command[command.index("--epochs") + 1] = str(done + 1)
    resumed = main(command[2:])
    assert resumed["seeds"][0]["resumed_after_epoch"] == done and resumed["epochs"] == done + 1
