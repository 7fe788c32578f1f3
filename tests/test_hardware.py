"""Choices that depend on the machine are measured on it: precision, Muon or AdamW, the time budget."""
import json
import math
import os
import subprocess
import sys

import pytest
import torch

import gpty2_wiki as g
from helpers import ROOT, TINY, in_process

AVX2 = {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}  # imitate a CPU without native bf16


def test_without_native_bf16_everything_runs_in_float32():
    code = ("import torch, gpty2_wiki as g\n"
            "p = g.measure_precision(torch.device('cpu'), g.GPTConfig(n_embd=256, n_head=4, n_layer=4), 4096)\n"
            "print(p['train'], p['muon'], p['sample']); print(p['why'])\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                       env=dict(os.environ, PYTHONPATH=ROOT, **AVX2))
    assert r.returncode == 0, r.stderr
    dtypes, why = r.stdout.splitlines()
    assert dtypes == "torch.float32 torch.float32 torch.float32"
    assert why.startswith("float32: bfloat16") and "slower here" in why


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_freed_memory_stays_in_the_heap_so_a_step_does_not_page_fault_it_in_again():
    code = ("import resource, sys, torch, gpty2_wiki as g\n"
            "kept = len(sys.argv) > 1 and g.keep_freed_memory()\n"
            "torch.manual_seed(0)\n"
            "config = g.GPTConfig(block_size=64, n_embd=256, n_head=4, n_layer=1, dropout=0.0)\n"
            "model, x = g.GPTLanguageModel(config), torch.randint(0, config.vocab_size, (256, 64))\n"
            "opt, faults = torch.optim.AdamW(model.parameters()), []\n"
            "for _ in range(4):  # fp32 activations of 64 MB, over glibc's 32 MB mmap limit, as at the full shape\n"
            "    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
            "    model(x, x)[1].backward()\n"
            "    opt.step()\n"
            "    opt.zero_grad(set_to_none=True)\n"
            "    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)\n"
            "print(kept, sum(faults[2:]), faults)\n")  # two steps after the heap has grown to what a step needs
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1")  # the two run side by side
    procs = {keep: subprocess.Popen([sys.executable, "-c", code] + ["keep"] * keep, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True, env=env) for keep in (False, True)}
    out = {}
    for keep, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 0, stderr
        kept, faults, each = stdout.split(" ", 2)
        out[keep] = (kept, int(faults), each.strip())
    if out[True][0] != "True":
        pytest.skip("not glibc")
    assert out[False][1] > 10_000, out  # without it, every step faults its large activations in afresh
    assert out[True][1] * 4 < out[False][1], out  # glibc still moves some blocks: 0-18,000 seen, not 150,000


def test_dtype_forces_every_use_and_still_measures_rates():
    p = g.measure_precision(torch.device("cpu"), g.GPTConfig(n_embd=32, n_head=2, n_layer=1), 256, "float32")
    assert (p["train"], p["muon"], p["sample"]) == (torch.float32,) * 3 and "(--dtype)" in p["why"]
    assert p["rates"]["train"] > 0 and p["rates"]["muon"] > 0


def test_optimizer_follows_the_measured_cost_of_newton_schulz():
    config, cfg = g.GPTConfig(n_embd=256, n_head=4, n_layer=4), {"OPTIMIZER": "auto"}
    fast = dict(rates=dict(train=1e11, muon=1e11))
    slow = dict(rates=dict(train=1e11, muon=1e9))  # small products 100x slower than the model's
    assert g.choose_optimizer(cfg, config, fast, 4096, 3_200_000)[0] == "muon"
    assert g.choose_optimizer(cfg, config, slow, 4096, 3_200_000)[0] == "adamw"
    assert g.choose_optimizer({"OPTIMIZER": "muon"}, config, slow, 4096, 3_200_000)[0] == "muon"


def reference_orthogonalize(G, steps=5):  # one matrix at a time, as Muon's reference code does
    a, b, c = 3.4445, -4.7750, 2.0315
    X = G / (G.norm() + 1e-7)
    X = X.T if G.size(0) > G.size(1) else X
    for _ in range(steps):
        A = X @ X.T
        X = a * X + (b * A + c * A @ A) @ X
    return X.T if G.size(0) > G.size(1) else X


@pytest.mark.parametrize("shape", [(4, 48, 16), (4, 16, 64), (3, 32, 32), (2, 16, 40)])  # Gram form: n >= 3m
def test_batched_newton_schulz_equals_one_matrix_at_a_time(shape):
    G = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    batched = g.orthogonalize(G, torch.float32)
    for i in range(shape[0]):
        assert torch.allclose(batched[i], reference_orthogonalize(G[i]), atol=1e-5)
    s = torch.linalg.svdvals(batched[0])
    assert 0.5 < s.min() and s.max() < 1.5  # roughly semi-orthogonal: every direction learns at one rate


def test_muon_updates_each_matrix_as_the_reference_would():
    torch.manual_seed(0)
    ps = [torch.nn.Parameter(torch.randn(16, 48)) for _ in range(3)] + [torch.nn.Parameter(torch.randn(48, 16))]
    ref = [p.detach().clone() for p in ps]
    opt, bufs = g.Muon(ps, lr=0.02), [torch.zeros_like(p) for p in ps]
    for step in range(3):
        grads = [torch.randn_like(p) for p in ps]
        for p, gr in zip(ps, grads):
            p.grad = gr.clone()
        opt.step()
        for r, buf, gr in zip(ref, bufs, grads):
            buf.mul_(0.95).add_(gr)
            r.add_(reference_orthogonalize(gr + 0.95 * buf), alpha=-0.02 * max(1, r.size(0) / r.size(1)) ** 0.5)
    for p, r in zip(ps, ref):
        assert torch.allclose(p.detach(), r, atol=1e-5)


def test_time_budget_fixes_the_steps_and_resume_keeps_them(tmp_path, monkeypatch, capsys):
    args = ["--data-source", "offline", "--num-articles", "200", "--time-budget", "0.1", "--max-iters", "1000",
            "--eval-interval", "250", *TINY]
    rc, out, err = in_process(args, tmp_path, monkeypatch, capsys)
    assert rc == 0, out + err
    assert "steps to fit 0.1 minutes" in out and "time budget 0.1 minutes:" in out
    ck = torch.load(tmp_path / "out" / "ckpt.pt", weights_only=True)
    plan = ck["plan"]
    assert ck["iter"] == plan["MAX_ITERS"] > 30
    evals = [m["iter"] for m in map(json.loads, open(tmp_path / "out" / "metrics.jsonl")) if "val_loss" in m]
    assert evals[0] == 0 and evals[-1] == plan["MAX_ITERS"] and len(set(evals)) == len(evals)  # last step: once
    assert all(it % plan["EVAL_INTERVAL"] == 0 for it in evals[:-1])  # planned 4 + 1; re-fits move the end
    assert len(evals) == math.ceil(plan["MAX_ITERS"] / plan["EVAL_INTERVAL"]) + 1
    rows = [json.loads(line) for line in open(tmp_path / "out" / "metrics.jsonl")]
    assert rows[-1]["elapsed"] < 1.5 * 6  # seconds: the plan fitted the budget (with room for a busy machine)
    rc, out, _ = in_process(args + ["--resume"], tmp_path, monkeypatch, capsys)
    assert rc == 0 and "time budget 0.1 minutes:" not in out  # no new plan
    assert torch.load(tmp_path / "out" / "ckpt.pt", weights_only=True)["iter"] == plan["MAX_ITERS"]


def test_a_planned_run_is_refitted_to_the_speed_it_meets():
    cfg = dict(g.config_defaults(), TIME_BUDGET=10, MAX_ITERS=1000, EVAL_INTERVAL=200, CHECKPOINT_INTERVAL=100)
    plan = g.plan_steps(cfg, 30, 0.5, 10.0, 20.0)  # (552 s - 20 s - 5 evaluations of 10 s) / 0.5 s: 964 more
    assert plan["MAX_ITERS"] == 5 * plan["EVAL_INTERVAL"] and 30 + 482 / 0.5 <= plan["MAX_ITERS"] < 30 + 482 / 0.5 + 5
    cfg.update(plan)
    at = 2 * plan["EVAL_INTERVAL"]  # the second evaluation; three to come
    slower = g.replan_steps(cfg, at, 0.6, 10.0, 240.0)
    assert slower["MAX_ITERS"] == at + int((552 - 240 - 3 * 10) / 0.6) < plan["MAX_ITERS"]
    faster = g.replan_steps(cfg, at, 0.3, 10.0, 240.0)["MAX_ITERS"]  # more steps, and the evaluations they bring
    assert faster == at + int((552 - 240 - 5 * 10) / 0.3) > plan["MAX_ITERS"]
    assert g.replan_steps(cfg, at, 0.5, 10.0, 900.0)["MAX_ITERS"] == at + 1  # past the budget: stop now
    assert slower["EVAL_INTERVAL"] == plan["EVAL_INTERVAL"]


def test_bench_speed_ceiling_times_the_products_the_model_counts():
    """tests/bench_speed.py's 'products alone' row must be the step's FLOPs: 6N + attention, less
    the embeddings' share of 6N (lookups, not products); biases and gains are the rest, under 1%."""
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    import bench_speed
    config = g.GPTConfig(len(g.VOCAB), dropout=0.0, **bench_speed.SHAPE)
    counted = g.flops_per_token(config, g.GPTLanguageModel(config).num_params()) * config.block_size
    timed = sum(2 * a.numel() * b.shape[-1] for a, b in bench_speed.step_products(torch.device("cpu"), torch.float32, 1))
    embeddings = 6 * (len(g.VOCAB) + config.block_size) * config.n_embd * config.block_size
    assert abs(timed - (counted - embeddings)) < 0.01 * counted


def test_rival_timings_take_turns():
    """best_times alternates its functions, so that load from elsewhere cannot land on one alone."""
    calls = []
    times = g.best_times([lambda: calls.append("a"), lambda: calls.append("b")], torch.device("cpu"), reps=3)
    assert calls == ["a", "b"] * 4 and len(times) == 2 and all(0 <= t < 1 for t in times)
