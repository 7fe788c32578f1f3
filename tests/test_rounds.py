"""ROUNDS: fetch fresh articles -> train -> sample -> save, carrying the model and optimizer across rounds."""
import json

import torch

from helpers import TINY, in_process
from test_fetch import big_pool
from wiki_server import WikiServer


def test_two_rounds_grow_the_corpus_and_carry_on(tmp_path, monkeypatch, capsys):
    with WikiServer(pages=big_pool(10), seed=3) as server:
        rc, out, _ = in_process(["--data-source", "wikipedia", "--wiki-api-url", server.url, "--num-articles", "40",
                                 "--rounds", "2", "--articles-per-round", "20", "--max-iters", "10",
                                 "--eval-interval", "100", "--retry-backoff", "0", *TINY], tmp_path, monkeypatch, capsys)
    assert rc == 0, out[-2000:]
    assert "round 1/2" in out and "round 2/2" in out
    lines = (tmp_path / "data" / "articles.jsonl").read_text().splitlines()
    assert len(lines) == 60 and len({json.loads(x)["pageid"] for x in lines}) == 60
    evals = [json.loads(x)["iter"] for x in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()
             if "val_loss" in x]
    assert evals == [0, 10, 20]  # a sample and a save at the end of each round
    ck = torch.load(tmp_path / "out" / "ckpt.pt", weights_only=True)
    assert ck["iter"] == 20 and all(o["state"] for o in ck["optimizer"])  # optimizers carried over 20 steps
