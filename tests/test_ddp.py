"""torchrun with two CPU processes (gloo), as the README writes it (no accumulation flag): identical
replicas, one set of outputs, and the same learning as one process with the same global batch."""
import json
import os
import subprocess
import sys

from helpers import SCRIPT, TINY, in_process


def losses(out_dir):
    rows = [json.loads(line) for line in open(os.path.join(out_dir, "metrics.jsonl"))]
    return [r["val_loss"] for r in rows if "val_loss" in r]


def test_torchrun_two_processes_with_the_defaults_accumulation(tmp_path, monkeypatch, capsys):
    common = ["--data-source", "offline", "--num-articles", "300", "--max-iters", "60", "--eval-interval", "30",
              "--learning-rate", "3e-3", *TINY]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          SCRIPT, *common, "--out-dir", "ddp"], cwd=tmp_path, capture_output=True, text=True,
                         timeout=240, env=env)
    assert ddp.returncode == 0, ddp.stdout[-2000:] + ddp.stderr[-2000:]
    assert "weights identical on all 2 ranks: True" in ddp.stdout
    assert ddp.stdout.count("best val loss") == 1 and ddp.stdout.count("round 1/1") == 1  # only rank 0 prints
    assert "60 steps of 512 tokens" in ddp.stdout  # global batch = 8 sequences x 32 characters x 2 processes
    assert sorted(os.listdir(tmp_path)) == ["ddp"]  # and only rank 0 writes, once
    assert sorted(f for f in os.listdir(tmp_path / "ddp") if not f.startswith(".")) == [
        "ckpt.pt", "config.json", "lock", "loss.png", "metrics.jsonl", "model.pt", "model.safetensors", "samples.txt"]
    rc, out, err = in_process([*common, "--gradient-accumulation-steps", "2", "--out-dir", "one"], tmp_path,
                              monkeypatch, capsys)
    assert rc == 0 and "60 steps of 512 tokens" in out, err[-2000:]
    d, s = losses(tmp_path / "ddp"), losses(tmp_path / "one")
    assert d[-1] < d[0] - 0.5  # it learned
    assert abs(d[-1] - s[-1]) < 0.15 * s[-1], (d, s)  # as much as one process with the same global batch
