"""The command line end to end, in subprocesses: train, load in a fresh process, ask, bad input."""
import os
import subprocess
import sys

import pytest
import torch

from helpers import ROOT, SCRIPT, TINY, run


def test_import_has_no_side_effects(tmp_path):
    r = subprocess.run([sys.executable, "-c", "import gpty2_wiki"], cwd=tmp_path, capture_output=True, text=True,
                       env=dict(os.environ, PYTHONPATH=ROOT), timeout=60)
    assert r.returncode == 0 and r.stdout == "" and r.stderr == "" and os.listdir(tmp_path) == []


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny training run from the command line, shared by the tests below."""
    d = tmp_path_factory.mktemp("run")
    r = run(["--data-source", "offline", "--num-articles", "300", "--max-iters", "40", "--eval-interval", "20",
             "--checkpoint-interval", "10", *TINY], cwd=d)
    assert r.returncode == 0, r.stdout + r.stderr
    return d, r


def test_training_writes_every_output(trained):
    d, r = trained
    for name in ("model.pt", "ckpt.pt", "metrics.jsonl", "loss.png", "samples.txt"):
        assert (d / "out" / name).stat().st_size > 0, name
    assert "parameters" in r.stdout and "step 40: train loss" in r.stdout and "ETA" in r.stdout
    assert "Traceback" not in r.stderr


def test_fresh_process_loads_the_model_safely_and_asks(trained):
    d, _ = trained
    code = ("import torch, gpty2_wiki as g\n"
            "ck = torch.load('out/model.pt', weights_only=True)\n"
            "assert set(ck) >= {'model', 'config', 'vocab', 'iter', 'val_loss'}, ck.keys()\n"
            "m = g.GPTLanguageModel(g.GPTConfig(**ck['config']))\n"
            "m.load_state_dict(ck['model'])\n"
            "m2 = g.load_model('out/model.pt')\n"
            "assert not m2.training\n"
            "a = g.ask(m2, 'Who is Ada Lovelace?', temperature=0)\n"
            "assert isinstance(a, str) and '\\n\\n' not in a\n"
            "print('ok', ck['iter'], len(a))\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=d, capture_output=True, text=True,
                       env=dict(os.environ, PYTHONPATH=ROOT), timeout=60)
    assert r.returncode == 0 and r.stdout.startswith("ok"), r.stderr


def test_ask_from_the_command_line(trained):
    d, _ = trained
    r = run(["--ask", "Who is Ada Lovelace?", "--temperature", "0"], cwd=d)
    assert r.returncode == 0 and r.stdout.strip() and "Traceback" not in r.stderr
    r2 = run(["--ask", "Who is Ada Lovelace?", "--temperature", "0"], cwd=d)
    assert r2.stdout == r.stdout  # greedy is deterministic
    loop = run(["--ask"], cwd=d, input="Who is Ada Lovelace?\nWhat is a cat?\n")
    assert loop.returncode == 0 and len([line for line in loop.stdout.splitlines() if line.strip()]) >= 2


@pytest.mark.parametrize("args, needle", [
    (["--no-such-flag"], "unrecognized arguments"),
    (["--n-layer", "two"], "invalid int value"),
    (["--dtype", "float8"], "invalid choice"),
    (["--preset", "huge"], "invalid choice"),
    (["--learning-rate", "-1"], "must be positive"),
    (["--dropout", "1.5"], "must be in [0, 1)"),
    (["--n-embd", "30", "--n-head", "4"], "must be a multiple"),
    (["--device", "cuda:7"] if not torch.cuda.is_available() else ["--device", "nonsense"], "device"),
    (["--ask", "Who?", "--out-dir", "missing"], "no checkpoint"),
    (["--data-source", "offline", "--num-articles", "2", "--max-iters", "1", *TINY], "too few"),
])
def test_bad_input_is_one_line_and_nonzero(tmp_path, args, needle):
    r = run(args, cwd=tmp_path)
    assert r.returncode != 0
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert needle in r.stderr


def test_help_lists_every_constant_with_its_comment(tmp_path):
    r = run(["--help"], cwd=tmp_path)
    assert r.returncode == 0
    import gpty2_wiki as g
    for name in g.config_defaults():
        assert "--" + name.lower().replace("_", "-") in r.stdout, name
    assert "context length, in characters" in r.stdout
