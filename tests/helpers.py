"""Shared bits of the tests: where the program is, and how to run it in a subprocess."""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "gpty2_wiki.py")
DATA = os.path.join(ROOT, "tests", "data")

# A model small enough to train in seconds on two cores.
# The measured choices are pinned, so that two runs compare bit for bit on any machine.
TINY = ["--n-layer", "2", "--n-head", "2", "--n-embd", "32", "--block-size", "32", "--batch-size", "8",
        "--eval-iters", "2", "--log-interval", "5", "--dropout", "0", "--qa-eval", "4", "--qa-chars", "60",
        "--dtype", "float32", "--optimizer", "adamw", "--attention", "sdpa"]


def run(args, cwd, timeout=120, env=None, **kw):
    """Run gpty2_wiki.py with args in cwd; returns the CompletedProcess (text)."""
    e = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
    return subprocess.run([sys.executable, SCRIPT, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=e, **kw)


def in_process(args, cwd, monkeypatch, capsys):
    """Run main(args) in this process (no second import of torch: seconds saved per run); (rc, out, err)."""
    import gpty2_wiki
    monkeypatch.chdir(cwd)
    capsys.readouterr()
    rc = gpty2_wiki.main(args)
    out, err = capsys.readouterr()
    return rc, out, err


def read_tsv(name):
    with open(os.path.join(DATA, name), encoding="utf-8") as f:
        rows = [line.rstrip("\n").split("\t") for line in f][1:]
    return [r for r in rows if r and r[0]]
