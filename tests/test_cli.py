"""The command line end to end, in subprocesses: train, load in a fresh process, ask, bad input."""
import os
import subprocess
import sys

import pytest
import torch

import gpty2_wiki as g
from helpers import ROOT, TINY, in_process, run


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
    assert r.stdout.startswith("cpu: precision float32 everywhere (--dtype); optimizer adamw (--optimizer); "
                               "attention sdpa (--attention)")  # the first line says what was chosen, and why
    assert "parameters" in r.stdout and "step 40: train loss" in r.stdout and "ETA" in r.stdout and "recall" in r.stdout
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


def test_ask_from_the_command_line_says_whether_the_subject_was_trained_on(trained, monkeypatch, capsys):
    d, _ = trained
    ck = torch.load(d / "out" / "model.pt", weights_only=True)
    title = ck["train_titles"][0]
    rc, out, _ = in_process(["--ask", f"What is {title}?", "--temperature", "0"], d, monkeypatch, capsys)
    recall = f"it recalled {ck['recall']:.0%} of those it was tested on"
    assert rc == 0 and out.rstrip().endswith(f"[among the {len(ck['train_titles']):,} training articles: {recall}]")
    assert in_process(["--ask", f"What is {title}?", "--temperature", "0"], d, monkeypatch, capsys)[1] == out  # greedy
    loop = run(["--ask"], cwd=d, input=f"Who is {ck['val_titles'][0]}?\nWhat is a cat?\n")  # a real process, stdin
    assert loop.returncode == 0 and loop.stdout.count("[not among the") == 2 and "Traceback" not in loop.stderr


def test_eval_prints_the_table_and_answers_beside_the_truth(trained, monkeypatch, capsys):
    d, _ = trained
    rc, out, _ = in_process(["--eval"], d, monkeypatch, capsys)
    assert rc == 0
    for needle in ("recall: train questions, first 40 characters exact", "val similarity", "val loss on the",
                   "bits/char"):
        assert needle in out, needle
    assert out.count("(train article)\nA: ") == 3 and out.count("(val article)\nA: ") == 3
    assert out.count("\nTrue: ") == 6


def test_an_older_model_file_without_titles_still_loads_and_asks(trained, tmp_path, monkeypatch, capsys):
    d, _ = trained
    ck = torch.load(d / "out" / "model.pt", weights_only=True)
    old = {k: ck[k] for k in ("model", "config", "vocab", "iter", "val_loss")}  # what 0.1.0 wrote
    torch.save(old, tmp_path / "old.pt")
    rc, out, _ = in_process(["--ask", "Who is Ada Lovelace?", "--model", "old.pt"], tmp_path, monkeypatch, capsys)
    assert rc == 0 and out.strip() and "training articles" not in out
    rc, _, err = in_process(["--eval", "--model", "old.pt"], tmp_path, monkeypatch, capsys)
    assert rc == 1 and "no evaluation questions" in err and len(err.strip().splitlines()) == 1


BAD = [
    (["--no-such-flag"], "unrecognized arguments"),
    (["--n-layer", "two"], "invalid int value"),
    (["--dtype", "float8"], "invalid choice"),
    (["--optimizer", "sgd"], "invalid choice"),
    (["--preset", "huge"], "invalid choice"),
    (["--learning-rate", "-1"], "must be positive"),
    (["--time-budget", "-1"], "must not be negative"),
    (["--dropout", "1.5"], "must be in [0, 1)"),
    (["--qa-windows", "2"], "must be in [0, 1]"),
    (["--n-embd", "30", "--n-head", "4"], "must be a multiple"),
    (["--device", "cuda:7"] if not torch.cuda.is_available() else ["--device", "nonsense"], "device"),
    (["--ask", "Who?", "--out-dir", "missing"], "no checkpoint"),
    (["--eval", "--out-dir", "missing"], "no checkpoint"),
    (["--data-source", "offline", "--num-articles", "2", "--max-iters", "1", *TINY], "too few"),
]


@pytest.mark.parametrize("args, needle", BAD)
def test_bad_input_is_one_line_and_nonzero(tmp_path, monkeypatch, capsys, args, needle):
    monkeypatch.chdir(tmp_path)
    try:
        rc = g.main(args)
    except SystemExit as e:  # argparse's own errors
        rc = e.code
    err = capsys.readouterr().err
    assert rc != 0 and len(err.strip().splitlines()) == 1 and needle in err, err


def test_bad_input_in_a_real_process_has_no_traceback(tmp_path):
    for args, needle in (BAD[1], BAD[-3]):  # an argparse error and one of ours
        r = run(args, cwd=tmp_path)
        assert r.returncode != 0 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
        assert needle in r.stderr


def test_help_lists_every_constant_with_its_comment(tmp_path):
    r = run(["--help"], cwd=tmp_path)
    assert r.returncode == 0
    import gpty2_wiki as g
    for name in g.config_defaults():
        assert "--" + name.lower().replace("_", "-") in r.stdout, name
    assert "context length, in characters" in r.stdout
