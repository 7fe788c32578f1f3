"""What the user sees: metrics, the plot (and its absence without matplotlib), samples, W&B."""
import json
import os
import sys

import pytest

import gpty2_wiki as g
from helpers import TINY, in_process, run


def test_metrics_and_samples_content(tmp_path, monkeypatch, capsys):
    rc, stdout, _ = in_process(["--data-source", "offline", "--num-articles", "300", "--max-iters", "20",
                                "--eval-interval", "10", *TINY], tmp_path, monkeypatch, capsys)
    assert rc == 0
    rows = [json.loads(line) for line in open(tmp_path / "out" / "metrics.jsonl")]
    evals = [m for m in rows if "val_loss" in m]
    steps = [m for m in rows if "tokens_per_s" in m]
    assert [m["iter"] for m in evals] == [0, 10, 20] and [m["iter"] for m in steps] == [5, 10, 15, 20]
    for m in evals:
        assert set(m) >= {"iter", "train_loss", "val_loss", "val_bpc", "val_answer_loss", "lr", "elapsed"}
        assert abs(m["val_bpc"] - m["val_loss"] / 0.6931471805599453) < 1e-9
    for m in steps:
        assert set(m) >= {"iter", "train_loss", "lr", "tokens_per_s", "elapsed"} and m["tokens_per_s"] > 0
    samples = (tmp_path / "out" / "samples.txt").read_text()
    assert samples.count("--- step") == 3 and samples.count("\nQ: ") + samples.startswith("Q: ") >= 3
    assert "step 20: train loss" in stdout and "Q: " in stdout  # printed too
    png = (tmp_path / "out" / "loss.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10000


def test_plot_is_skipped_with_one_notice_without_matplotlib(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now fails
    monkeypatch.delattr(g.plot_losses, "warned", raising=False)
    rows = [{"iter": 0, "train_loss": 4.0, "val_loss": 4.1, "val_answer_loss": 4.2}]
    g.plot_losses(rows, str(tmp_path / "loss.png"))
    g.plot_losses(rows, str(tmp_path / "loss.png"))
    assert not (tmp_path / "loss.png").exists()
    assert capsys.readouterr().out.count("pip install matplotlib") == 1


def test_wandb_offline(tmp_path):
    pytest.importorskip("wandb")
    r = run(["--data-source", "offline", "--num-articles", "300", "--max-iters", "10", "--eval-interval", "5",
             "--wandb-log", *TINY], cwd=tmp_path, env={"WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path)})
    assert r.returncode == 0, r.stderr[-2000:]
    runs = [d for d in os.listdir(tmp_path / "wandb") if d.startswith("offline-run")]
    assert len(runs) == 1


def test_wandb_missing_is_one_line(tmp_path, monkeypatch, capsys):
    if "wandb" in sys.modules or __import__("importlib").util.find_spec("wandb"):
        pytest.skip("wandb is installed")
    rc, _, err = in_process(["--data-source", "offline", "--num-articles", "300", "--max-iters", "2", "--wandb-log",
                             *TINY], tmp_path, monkeypatch, capsys)
    assert rc == 1 and "pip install wandb" in err and len(err.strip().splitlines()) == 1
