"""Speed benchmark: training throughput, memory and generation, against a naive reference in the same run.

    python tests/bench_speed.py              # CPU: batch 16 and 64; on a CUDA GPU: batch 64 and the full 5000-step run
    python tests/bench_speed.py --batch 16   # part 1 at one batch size only
    python tests/bench_speed.py --quick      # fewer timings, for a smoke test

Not collected by pytest. Prints one table per part. Ratios are what to quote: the absolute numbers
move with the machine and with whatever else runs on it, so timings wait for an idle CPU and the
median of several is used.

1. Training tokens/s at the original's shape (6 layers, 6 heads, 384 wide, block 256), at batch 16
   (small products, as in the issue that set the targets) and at BATCH_SIZE, 64 (what `python
   gpty2_wiki.py` runs; there Muon's fixed cost is a quarter as large a share of a step): a naive
   reference written the original's way (a Python list of per-head Linear modules, an explicit tril
   mask, fp32, eager, AdamW) vs this project's model alone (fp32, and the precision it measures as
   fastest here, AdamW) vs its default path (that precision and the optimizer it chooses here,
   Muon's Newton-Schulz products included: what `python gpty2_wiki.py` runs). MFU is training FLOPs
   per token (6N + 12 L T C) x tokens/s over the best native rate of a 2048^3 product measured in
   this run (fp32 or bf16); "MFU now" over the median rate of 2048^3 products timed between the
   steps, since a shared VM's rate moves by 2x between stretches of a minute. The step's matrix
   products are also timed alone. Dropout is 0 in all, so all compute the same function. On a CPU
   every variant keeps freed memory in the heap (gpty2_wiki.keep_freed_memory, as its training does).
2. Peak memory of one training step at batch 64, each variant in a fresh process.
3. Generating 500 characters from a one-character prompt: recompute the window every step vs the KV cache.
4. On a GPU: wall time of the original's full run (5000 steps, batch 64, block 256).
"""
import argparse
import os
import platform
import statistics
import subprocess
import sys
import time

import torch
import torch.nn as nn
from torch.nn import functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import gpty2_wiki as g  # noqa: E402

SHAPE = dict(n_layer=6, n_head=6, n_embd=384, block_size=256)


# --- the naive reference: the original lecture code's model, unchanged in what it computes ----------

class Head(nn.Module):
    def __init__(self, n_embd, head_size, block_size):
        super().__init__()
        self.key = nn.Linear(n_embd, head_size, bias=False)
        self.query = nn.Linear(n_embd, head_size, bias=False)
        self.value = nn.Linear(n_embd, head_size, bias=False)
        self.register_buffer("tril", torch.tril(torch.ones(block_size, block_size)))

    def forward(self, x):
        B, T, C = x.shape
        k, q = self.key(x), self.query(x)
        wei = q @ k.transpose(-2, -1) * k.shape[-1] ** -0.5
        wei = wei.masked_fill(self.tril[:T, :T] == 0, float("-inf"))
        return F.softmax(wei, dim=-1) @ self.value(x)


class NaiveBlock(nn.Module):
    def __init__(self, n_embd, n_head, block_size):
        super().__init__()
        self.heads = nn.ModuleList([Head(n_embd, n_embd // n_head, block_size) for _ in range(n_head)])
        self.proj = nn.Linear(n_embd, n_embd)
        self.ffwd = nn.Sequential(nn.Linear(n_embd, 4 * n_embd), nn.ReLU(), nn.Linear(4 * n_embd, n_embd))
        self.ln1, self.ln2 = nn.LayerNorm(n_embd), nn.LayerNorm(n_embd)

    def forward(self, x):
        h = self.ln1(x)
        x = x + self.proj(torch.cat([head(h) for head in self.heads], dim=-1))
        return x + self.ffwd(self.ln2(x))


class NaiveGPT(nn.Module):
    def __init__(self, vocab_size, n_layer, n_head, n_embd, block_size):
        super().__init__()
        self.token_embedding_table = nn.Embedding(vocab_size, n_embd)
        self.position_embedding_table = nn.Embedding(block_size, n_embd)
        self.blocks = nn.Sequential(*[NaiveBlock(n_embd, n_head, block_size) for _ in range(n_layer)])
        self.ln_f = nn.LayerNorm(n_embd)
        self.lm_head = nn.Linear(n_embd, vocab_size)

    def forward(self, idx, targets=None):
        B, T = idx.shape
        x = self.token_embedding_table(idx) + self.position_embedding_table(torch.arange(T, device=idx.device))
        logits = self.lm_head(self.ln_f(self.blocks(x)))
        loss = None if targets is None else F.cross_entropy(logits.view(B * T, -1), targets.view(B * T))
        return logits, loss

    @torch.no_grad()
    def generate(self, idx, max_new_tokens):  # the original's: the whole window, every character
        for _ in range(max_new_tokens):
            logits, _ = self(idx[:, -SHAPE["block_size"]:])
            idx = torch.cat((idx, logits[:, -1].argmax(-1, keepdim=True)), dim=1)
        return idx


# --- measurement helpers -------------------------------------------------------------------------

def cpu_idle_fraction(dt=0.25):
    with open("/proc/stat") as f:
        a = list(map(int, f.readline().split()[1:]))
    time.sleep(dt)
    with open("/proc/stat") as f:
        b = list(map(int, f.readline().split()[1:]))
    return ((b[3] + b[4]) - (a[3] + a[4])) / max(1, sum(b) - sum(a))


def wait_for_idle_cpu(device, max_wait=60.0):
    """Other processes on these 2 cores slow a step 4-6x: time only when the CPU is idle."""
    if device.type != "cpu" or not os.path.exists("/proc/stat"):
        return
    t0 = time.time()
    while cpu_idle_fraction() < 0.9 and time.time() - t0 < max_wait:
        pass


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def matmul_rate(device, dtype, n=2048, reps=5):
    """GFLOP/s of an n^3 product in dtype; an emulated dtype (a probe at 512^3 runs 10x slower than
    fp32) is measured at 512 only: 2048^3 would take a minute."""
    def rate(m, dt, r):
        a = torch.randn(m, m, device=device, dtype=dt)
        b = torch.randn(m, m, device=device, dtype=dt)
        a @ b
        best = float("inf")
        for _ in range(r):
            wait_for_idle_cpu(device)
            sync(device)
            t = time.perf_counter()
            a @ b
            sync(device)
            best = min(best, time.perf_counter() - t)
        return 2 * m ** 3 / best
    if dtype != torch.float32 and rate(512, dtype, 2) * 10 < rate(512, torch.float32, 2):
        return rate(512, dtype, 1)
    return rate(n, dtype, reps)


def step_products(device, dtype, batch):
    """Operands of every matrix product in one training step at SHAPE and this batch: per Linear,
    x W^T and its two gradients (dY W, dY^T x); per layer, attention's q k^T and att v and their four
    gradients. What the step's FLOPs are made of, without anything else a step does."""
    C, T, L, V = SHAPE["n_embd"], SHAPE["block_size"], SHAPE["n_layer"], len(g.VOCAB)
    N, BH, hs = batch * T, batch * SHAPE["n_head"], SHAPE["n_embd"] // SHAPE["n_head"]
    shapes = []
    for cin, cout in [(C, 3 * C), (C, C), (C, 4 * C), (4 * C, C)] * L + [(C, V)]:
        shapes += [((N, cin), (cin, cout)), ((N, cout), (cout, cin)), ((cout, N), (N, cin))]
    shapes += ([((BH, T, hs), (BH, hs, T))] * 2 + [((BH, T, T), (BH, T, hs))] * 4) * L
    return [(torch.randn(a, device=device, dtype=dtype), torch.randn(b, device=device, dtype=dtype)) for a, b in shapes]


def default_choice(device, batch):
    """What a user's run chooses here: gpty2_wiki's own start-up measurement."""
    config = g.GPTConfig(len(g.VOCAB), dropout=0.0, **SHAPE)
    precision = g.measure_precision(device, config, batch * SHAPE["block_size"])
    n = g.GPTLanguageModel(config).num_params()
    optimizer, why = g.choose_optimizer(g.config_defaults(), config, precision, batch * SHAPE["block_size"], n)
    attention, why_attention = g.measure_attention(device, config, batch, precision["train"])
    return precision, optimizer, f"{why}; {why_attention}", attention


def make_variant(name, device, batch, choice):
    """(model, step function, optimizer-step function) for 'naive', 'fp32', 'model' (the chosen dtype,
    AdamW) or 'default' (the chosen dtype and optimizer: what `python gpty2_wiki.py` runs)."""
    torch.manual_seed(0)
    cfg = g.GPTConfig(len(g.VOCAB), dropout=0.0, **SHAPE)
    precision, optimizer, _, attention = choice
    if name == "naive":
        model = NaiveGPT(len(g.VOCAB), SHAPE["n_layer"], SHAPE["n_head"], SHAPE["n_embd"], SHAPE["block_size"])
        model = model.to(device)
        opts = [torch.optim.AdamW(model.parameters(), lr=3e-4)]
        ctx = g.nullcontext()  # fp32, eager
    else:
        model = g.GPTLanguageModel(cfg).to(device)
        for block in model.blocks:
            block.sa.attention = attention
        opts = g.make_optimizers(model, g.config_defaults(), device, optimizer if name == "default" else "adamw",
                                 precision["muon"])
        ctx = g.autocast_context(device, torch.float32 if name == "fp32" else precision["train"])
        if g.resolve_compile("auto", device):
            model = torch.compile(model)
    gen = torch.Generator().manual_seed(1)
    x = torch.randint(0, len(g.VOCAB), (batch, SHAPE["block_size"]), generator=gen).to(device)
    y = torch.randint(0, len(g.VOCAB), (batch, SHAPE["block_size"]), generator=gen).to(device)

    def opt_step():
        for opt in opts:
            opt.step()

    def step():
        with ctx:
            _, loss = model(x, y)
        loss.backward()
        opt_step()
        model.zero_grad(set_to_none=True)

    def backward_then_time_optimizer():  # the optimizer's share of a step, timed on its own
        with ctx:
            _, loss = model(x, y)
        loss.backward()
        sync(device)
        t = time.perf_counter()
        opt_step()
        sync(device)
        model.zero_grad(set_to_none=True)
        return time.perf_counter() - t
    return model, step, backward_then_time_optimizer


def n_params(model):
    return sum(p.numel() for p in model.parameters())


BIG_REPS = 16  # 2048^3 products timed together between the steps: ~0.1-0.2 s, as long as the step's products


def bench_training(device, batch, rounds, choice, warmup=2):
    """Steps of each variant, taken in turn with the step's matrix products alone and a 2048^3 product
    in the training precision: on a shared VM the matmul rate moves by 2x from minute to minute (the
    same AMX core ran 2048^3 bf16 products at 700 and at 1,900 GFLOP/s), so MFU is given both against
    the best rate seen (the rule) and against the median of those taken at the same moments."""
    precision, optimizer, why, _ = choice
    names = ["naive", "fp32", "model", "default"]
    if precision["train"] == torch.float32:
        names.remove("fp32")  # the model alone already runs in fp32 here
    variants = {n: make_variant(n, device, batch, choice) for n in names}
    pairs = step_products(device, precision["train"], batch)
    big = torch.randn(2048, 2048, device=device, dtype=precision["train"])
    probes = {"products": lambda: [a @ b for a, b in pairs], "big": lambda: [big @ big for _ in range(BIG_REPS)]}
    for fn in [step for _, step, _ in variants.values()] * warmup + list(probes.values()):
        fn()
    times = {n: [] for n in names + list(probes)}
    for _ in range(rounds):  # alternate, so drifts in the machine hit every variant alike
        for n in names + list(probes):
            wait_for_idle_cpu(device)
            sync(device)
            t = time.perf_counter()
            (variants[n][1] if n in variants else probes[n])()
            sync(device)
            times[n].append(time.perf_counter() - t)
    opt_times = [variants["default"][2]() for _ in range(rounds)]
    rates = {dt: matmul_rate(device, dt) for dt in (torch.float32, torch.bfloat16)}
    big_flops, product_flops = BIG_REPS * 2 * 2048 ** 3, sum(2 * a.numel() * b.shape[-1] for a, b in pairs)
    rates[precision["train"]] = max(rates[precision["train"]], big_flops / min(times["big"]))
    peak_dtype = max(rates, key=rates.get)
    peak, typical = rates[peak_dtype], big_flops / statistics.median(times["big"])
    n = n_params(variants["model"][0])
    fpt = g.flops_per_token(g.GPTConfig(len(g.VOCAB), **SHAPE), n)
    tokens = batch * SHAPE["block_size"]
    tr, mu = g.dtype_name(precision["train"]), g.dtype_name(precision["muon"])
    print(f"\n1. Training, original shape, batch {batch}, median of {rounds} steps ({device}, "
          f"{n / 1e6:.2f}M parameters, {fpt / 1e6:.1f} MFLOP/token)")
    print(f"   2048^3 matmul measured in this run: fp32 {rates[torch.float32] / 1e9:,.0f} GFLOP/s, bf16 "
          f"{rates[torch.bfloat16] / 1e9:,.1f} GFLOP/s at best; MFU is against the best, {g.dtype_name(peak_dtype)}; "
          f"'MFU now' against the median {tr} rate between the steps, {typical / 1e9:,.0f} GFLOP/s")
    print(f"   gpty2_wiki's choice here: {why}; precision {precision['why']}")
    print(f"   {'variant':50s} {'ms/step':>9s} {'tokens/s':>10s} {'x naive':>8s} {'MFU':>7s} {'MFU now':>8s}")
    labels = {"naive": "naive reference (per-head, tril, fp32, AdamW)", "fp32": "gpty2_wiki model alone, fp32, AdamW",
              "model": f"gpty2_wiki model alone, {tr}, AdamW",
              "default": f"gpty2_wiki default path ({tr}, {optimizer}" + (f" in {mu})" if optimizer == "muon" else ")")}
    base, result = None, {}
    for name in names:
        tps = tokens / statistics.median(times[name])
        base = base or tps
        result[name] = tps
        print(f"   {labels[name]:50s} {tokens / tps * 1e3:9.1f} {tps:10,.0f} {tps / base:8.2f} {fpt * tps / peak:7.1%} "
              f"{fpt * tps / typical:8.1%}")
    share = statistics.median(opt_times) / statistics.median(times["default"])
    ceiling = product_flops / statistics.median(times["products"])
    print(f"   the default path's optimizer step: {statistics.median(opt_times) * 1e3:.1f} ms, {share:.0%} of its step")
    print(f"   the step's matrix products alone ({tr}, nothing else a step does): {ceiling / 1e9:,.0f} GFLOP/s, "
          f"{ceiling / typical:.0%} of the 2048^3 rate at the same moments (what the model's shapes cost the rate)")
    return result


def memory_child(name, device_name, batch):
    device = torch.device(device_name)
    _, step, _ = make_variant(name, device, batch, default_choice(device, batch))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        step()
        print("PEAK", torch.cuda.max_memory_allocated() / 2 ** 20)
        return
    with open("/proc/self/status") as f:
        base = next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024
    step()
    with open("/proc/self/status") as f:
        peak = next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 1024
    print("PEAK", peak, "BASE", base)


def bench_memory(device, batch=64):
    print(f"\n2. Peak memory of one training step at batch {batch}, each in a fresh process "
          f"({'torch.cuda.max_memory_allocated' if device.type == 'cuda' else 'peak RSS, VmHWM'})")
    peaks = {}
    for name in ["naive", "model", "default"]:
        out = subprocess.run([sys.executable, __file__, "--memory-child", name, str(device), str(batch)],
                             capture_output=True, text=True).stdout
        line = [ln for ln in out.splitlines() if ln.startswith("PEAK")][0].split()
        peaks[name] = float(line[1])
        extra = f" (of which {float(line[1]) - float(line[3]):,.0f} MiB during the step)" if len(line) > 2 else ""
        print(f"   {name:10s} {peaks[name]:9,.0f} MiB  {peaks[name] / peaks['naive']:.2f}x naive{extra}")
    return peaks


def bench_generation(device, n_new=500, reps=3):
    torch.manual_seed(0)
    model = g.GPTLanguageModel(g.GPTConfig(len(g.VOCAB), dropout=0.0, **SHAPE)).to(device).eval()
    idx = torch.zeros(1, 1, dtype=torch.long, device=device)
    out, times = {}, {"recompute": [], "kv cache": []}
    for _ in range(reps):
        for name, use_cache in (("recompute", False), ("kv cache", True)):
            wait_for_idle_cpu(device)
            sync(device)
            t = time.perf_counter()
            out[name] = model.generate(idx, n_new, temperature=0, use_cache=use_cache)
            sync(device)
            times[name].append(time.perf_counter() - t)
    rec, kv = statistics.median(times["recompute"]), statistics.median(times["kv cache"])
    same = torch.equal(out["recompute"], out["kv cache"])
    print(f"\n3. Generating {n_new} characters from a 1-character prompt, greedy, fp32, median of {reps}")
    print(f"   recompute every step: {rec:.2f} s ({n_new / rec:,.0f} chars/s)")
    print(f"   KV cache:             {kv:.2f} s ({n_new / kv:,.0f} chars/s)  {rec / kv:.1f}x faster, "
          f"same characters: {same}")
    return rec / kv, same


def bench_full_run(device):
    """The original's full run through the real training loop, offline corpus, timed end to end."""
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        cfg = dict(g.config_defaults(), DATA_SOURCE="offline", OUT_DIR=os.path.join(d, "out"), MAX_ITERS=5000,
                   EVAL_INTERVAL=5000, LOG_INTERVAL=500, CHECKPOINT_INTERVAL=5000, BATCH_SIZE=64, BLOCK_SIZE=256,
                   N_LAYER=6, N_HEAD=6, N_EMBD=384)
        t = time.perf_counter()
        row = g.train(cfg)
        wall = time.perf_counter() - t
    print(f"\n4. The original's full run (5000 steps, batch 64, block 256) through gpty2_wiki.train: "
          f"{wall:.0f} s wall, final val loss {row.get('val_loss', float('nan')):.3f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer repetitions")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--batch", type=int, nargs="+", help="part 1's batch sizes (CPU: 16 and BATCH_SIZE; GPU: BATCH_SIZE)")
    ap.add_argument("--memory-child", nargs=3, help=argparse.SUPPRESS)
    a = ap.parse_args()
    device = g.resolve_device(a.memory_child[1] if a.memory_child else a.device)
    kept = device.type == "cpu" and g.keep_freed_memory()
    if a.memory_child:
        memory_child(a.memory_child[0], a.memory_child[1], int(a.memory_child[2]))
        return
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")),
               platform.processor()) if os.path.exists("/proc/cpuinfo") else platform.processor()
    text = open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else ""
    flags = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in text.split()]
    caps = {k: os.environ[k] for k in ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY") if k in os.environ}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU: {cpu} (flags: {' '.join(flags)}; "
          f"ATen capability {torch.backends.cpu.get_cpu_capability()}" + (f"; capped by {caps}" if caps else "") + ")"
          + (f", GPU: {torch.cuda.get_device_name(device)}" if device.type == "cuda" else "")
          + ("; every variant keeps freed memory in the heap, as gpty2_wiki's training does" if kept else ""))
    for batch in a.batch or ([g.BATCH_SIZE] if device.type == "cuda" else [16, g.BATCH_SIZE]):
        bench_training(device, batch, rounds=3 if a.quick else 7, choice=default_choice(device, batch))
    bench_memory(device)
    bench_generation(device, reps=1 if a.quick else 3)
    if device.type == "cuda" and not a.quick:
        bench_full_run(device)


if __name__ == "__main__":
    main()
