"""GPU check: every CUDA-only path of gpty2_wiki in one script, under 5 minutes on one H100/H200.

    python tests/gpu_check.py            # on a machine without CUDA: one line, exit 0
    python tests/gpu_check.py --smoke    # the same checks at toy size on the CPU (gloo for NCCL): tests this script

Not collected by pytest. Prints one line per check and a summary table; exits 1 if a check fails.
1. The full default model (6 x 384, block 256, batch 64, 5,000-step defaults) for 300 steps through
   gpty2_wiki.train: torch.compile, the measured precision (bf16), flash attention, fused AdamW and
   batched Muon, pinned-memory batches. Tokens/s, MFU and the projected time of the default run.
2. fp16 autocast with the gradient scaler: a falling, finite loss and the scaler's scale.
3. KV-cache sampling equals recomputation on the GPU: greedy in fp32 (TF32 off), and in bf16.
4. Pinned-memory batches equal the CPU ones.
5. Kill and --resume on the GPU: a run SIGKILLed after a checkpoint resumes and finishes near an
   uninterrupted run (GPU kernels are not bit-reproducible, so: within 2% in val loss).
6. torchrun with one NCCL process (the README's command shape): DDP over NCCL.
"""
import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "gpty2_wiki.py")
sys.path.insert(0, ROOT)
import gpty2_wiki as g  # noqa: E402

RESULTS = []


def check(name, ok, detail=""):
    RESULTS.append((name, bool(ok), detail))
    print(f"{'ok  ' if ok else 'FAIL'} {name}: {detail}", flush=True)


def metrics(out_dir):
    return [json.loads(line) for line in open(os.path.join(out_dir, "metrics.jsonl"))]


def run_script(args, cwd, env=None, timeout=300):
    return subprocess.run([sys.executable, SCRIPT, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, PYTHONUNBUFFERED="1", **(env or {})))


def full_default_run(tmp, smoke):
    """1. The default model and settings, 300 steps, everything the GPU path does by default."""
    shape = dict(N_LAYER=2, N_HEAD=2, N_EMBD=64, BLOCK_SIZE=64, BATCH_SIZE=8) if smoke else {}
    steps = 30 if smoke else 300
    cfg = dict(g.config_defaults(), **shape, DATA_SOURCE="offline", NUM_ARTICLES=2000 if smoke else 10000,
               MAX_ITERS=steps, EVAL_INTERVAL=steps, LOG_INTERVAL=max(1, steps // 6), CHECKPOINT_INTERVAL=steps,
               QA_EVAL=20, OUT_DIR=os.path.join(tmp, "full"), DEVICE="cpu" if smoke else "auto")
    t = time.perf_counter()
    row = g.train(cfg)
    wall = time.perf_counter() - t
    rows = [m for m in metrics(cfg["OUT_DIR"]) if "tokens_per_s" in m][1:]  # the first interval compiles
    tok_s = statistics.median(m["tokens_per_s"] for m in rows)
    mfu = statistics.median(m.get("mfu", float("nan")) for m in rows)
    tokens = cfg["BATCH_SIZE"] * cfg["BLOCK_SIZE"] * cfg["GRADIENT_ACCUMULATION_STEPS"]
    projected = g.config_defaults()["MAX_ITERS"] * tokens / tok_s
    ck = torch.load(os.path.join(cfg["OUT_DIR"], "ckpt.pt"), weights_only=True)
    check("full default model, compiled", row["val_loss"] < (3.5 if smoke else 2.5) and ck["iter"] == steps,
          f"{steps} steps in {wall:.0f} s wall, {tok_s:,.0f} tokens/s, MFU {mfu:.1%}, val loss {row['val_loss']:.3f}; "
          f"{ck['choice']['why']}; the default {g.config_defaults()['MAX_ITERS']}-step run: ~{projected / 60:.1f} min")
    return dict(tokens_per_s=tok_s, mfu=mfu, projected_minutes=projected / 60, wall=wall)


def fp16_with_scaler(tmp, smoke):
    """2. fp16 autocast needs the gradient scaler: loss finite and falling, a scale recorded."""
    out = os.path.join(tmp, "fp16")
    r = run_script(["--data-source", "offline", "--num-articles", "2000", "--n-layer", "2", "--n-embd", "128",
                    "--n-head", "4", "--block-size", "128", "--batch-size", "32", "--max-iters", "100",
                    "--eval-interval", "50", "--qa-eval", "8", "--compile", "off", "--out-dir", out,
                    "--dtype", "float32" if smoke else "float16", "--device", "cpu" if smoke else "cuda"], tmp)
    if r.returncode:
        return check("fp16 with the gradient scaler", False, r.stderr[-500:])
    evals = [m["val_loss"] for m in metrics(out) if "val_loss" in m]
    ck = torch.load(os.path.join(out, "ckpt.pt"), weights_only=True)
    scale = (ck.get("scaler") or {}).get("scale")
    check("fp16 with the gradient scaler", all(v == v for v in evals) and evals[-1] < evals[0] - 1
          and (smoke or scale), f"val loss {evals[0]:.3f} -> {evals[-1]:.3f}, scaler scale {scale}")


def kv_cache_equals_recompute(device):
    """3. Greedy sampling with the KV cache (flash attention with a cache) equals recomputing."""
    torch.manual_seed(0)
    m = g.GPTLanguageModel(g.GPTConfig(len(g.VOCAB), 256, 384, 6, 6, 0.0, False)).to(device).eval()
    idx = torch.randint(0, len(g.VOCAB), (4, 5), device=device)
    torch.backends.cuda.matmul.allow_tf32 = False
    cached = m.generate(idx, 300, temperature=0, use_cache=True)
    full = m.generate(idx, 300, temperature=0, use_cache=False)
    torch.backends.cuda.matmul.allow_tf32 = True
    check("KV cache = recompute, fp32", torch.equal(cached, full), "300 characters x 4 rows past block_size")
    with g.autocast_context(device, torch.bfloat16):
        cached = m.generate(idx, 300, temperature=0, use_cache=True)
        full = m.generate(idx, 300, temperature=0, use_cache=False)
    agree = (cached == full).float().mean().item()
    check("KV cache vs recompute, bf16", agree > 0.9, f"{agree:.1%} of characters agree (bf16 rounding differs by path)")
    qs = ["Who is Ada Lovelace?", "What is the Eiffel Tower?", "Where is Paris?"]
    check("batched answers = ask()", g.answer_batch(m, qs, 60) == [g.ask(m, q, 0, max_chars=60) for q in qs], "fp32")


def pinned_batches(device):
    """4. get_batch's pinned-memory, non-blocking copies bring the same windows as on the CPU."""
    ids = torch.randint(0, 96, (10_000,), dtype=torch.uint8)
    mask = torch.rand(10_000) > 0.5
    a = g.get_batch(ids, 64, 256, torch.Generator().manual_seed(0), device, mask)
    b = g.get_batch(ids, 64, 256, torch.Generator().manual_seed(0), torch.device("cpu"), mask)
    check("pinned-memory batches", all(x.device.type == device.type and torch.equal(x.cpu(), y) for x, y in zip(a, b)),
          f"on {a[0].device}")


def kill_and_resume(tmp, smoke):
    """5. SIGKILL after a checkpoint, --resume, finish; compare with a run never interrupted."""
    args = ["--data-source", "offline", "--num-articles", "2000", "--n-layer", "4", "--n-embd", "256", "--n-head", "4",
            "--block-size", "128", "--batch-size", "32", "--max-iters", "400", "--eval-interval", "200",
            "--checkpoint-interval", "50", "--qa-eval", "8", "--compile", "off", "--device", "cpu" if smoke else "cuda",
            "--optimizer", "muon"]  # pinned: the two runs measure their choices apart, and a tiny model's is a toss-up
    if smoke:
        args += ["--n-layer", "2", "--n-embd", "32", "--n-head", "2", "--block-size", "32", "--batch-size", "8"]
    whole = run_script(args + ["--out-dir", "whole"], tmp)
    p = subprocess.Popen([sys.executable, SCRIPT, *args, "--out-dir", "killed"], cwd=tmp, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    ckpt, deadline = os.path.join(tmp, "killed", "ckpt.pt"), time.time() + 240
    while time.time() < deadline and p.poll() is None:
        try:
            if torch.load(ckpt, weights_only=True)["iter"] >= 100:
                break
        except Exception:
            pass
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL)
    p.wait()
    killed_at = torch.load(ckpt, weights_only=True)["iter"]
    r = run_script(args + ["--out-dir", "killed", "--resume"], tmp)
    a, b = metrics(os.path.join(tmp, "whole"))[-1], metrics(os.path.join(tmp, "killed"))[-1]
    ok = whole.returncode == 0 and r.returncode == 0 and a["iter"] == b["iter"] == 400 and 0 < killed_at < 400
    check("kill -9 and --resume", ok and abs(a["val_loss"] - b["val_loss"]) < 0.02 * a["val_loss"],
          f"killed at step {killed_at}; val loss {b['val_loss']:.4f} resumed vs {a['val_loss']:.4f} uninterrupted")


def torchrun_one_process(tmp, smoke):
    """6. The README's torchrun command shape, one process: DDP over NCCL."""
    args = ["--data-source", "offline", "--num-articles", "2000", "--max-iters", "50", "--eval-interval", "50",
            "--qa-eval", "8", "--out-dir", "ddp"]
    if smoke:
        args += ["--n-layer", "2", "--n-embd", "32", "--n-head", "2", "--block-size", "32", "--batch-size", "8"]
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1", SCRIPT,
                        *args], cwd=tmp, capture_output=True, text=True, timeout=300)
    backend = "gloo" if smoke else "nccl"
    first = r.stdout.splitlines()[0] if r.stdout else r.stderr[-300:]
    check("torchrun, one process", r.returncode == 0 and f"DDP over {backend}" in r.stdout, first)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="toy sizes on the CPU, to test this script itself")
    a = ap.parse_args()
    if not torch.cuda.is_available() and not a.smoke:
        print(f"gpu_check: skipped: no CUDA GPU here (torch {torch.__version__})")
        return 0
    device = torch.device("cpu" if a.smoke else "cuda")
    name = "CPU smoke test" if a.smoke else torch.cuda.get_device_name(device)
    print(f"gpu_check on {name}, torch {torch.__version__}", flush=True)
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        speed = full_default_run(tmp, a.smoke)
        fp16_with_scaler(tmp, a.smoke)
        kv_cache_equals_recompute(device)
        pinned_batches(device)
        kill_and_resume(tmp, a.smoke)
        torchrun_one_process(tmp, a.smoke)
    print(f"\n| {name} | tokens/s | MFU | default 5,000-step run | checks | wall |\n| --- | --- | --- | --- | --- | --- |\n"
          f"| full default model, compiled, 300 steps | {speed['tokens_per_s']:,.0f} | {speed['mfu']:.1%} | "
          f"~{speed['projected_minutes']:.1f} min | {sum(ok for _, ok, _ in RESULTS)}/{len(RESULTS)} passed | "
          f"{time.time() - t0:.0f} s |")
    return 0 if all(ok for _, ok, _ in RESULTS) else 1


if __name__ == "__main__":
    sys.exit(main())
