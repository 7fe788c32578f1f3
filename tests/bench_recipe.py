"""Training-recipe benchmark: the same data, model size, wall-clock budget and seeds for three recipes.

    python tests/bench_recipe.py                 # 5 minutes per recipe (about 16 minutes in all)
    python tests/bench_recipe.py --minutes 2     # shorter
    python tests/bench_recipe.py --preset cpu    # also the --preset cpu configuration, same budget
    python tests/bench_recipe.py --break-even 1000   # AdamW for 1000 steps, Muon for 40-80% of them

Not collected by pytest. The offline corpus in Q&A form, split by title hash; a 4-layer, 256-wide,
block-128 model, batch 32, bf16 where the CPU has it. Each recipe first times a few steps to turn the
budget into a step count (so that its learning-rate schedule ends with the budget), then trains
through gpty2_wiki.train and is evaluated on the same fixed validation batches.
"""
import argparse
import math
import os
import statistics
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import gpty2_wiki as g  # noqa: E402

BASE = dict(DATA_SOURCE="offline", NUM_ARTICLES=10000, N_LAYER=4, N_HEAD=4, N_EMBD=256, BLOCK_SIZE=128,
            BATCH_SIZE=32, EVAL_ITERS=100, SEED=1337, DTYPE="auto", COMPILE="off", QA_EVAL=1, QA_CHARS=1)
RECIPES = {
    # the original script: AdamW at a constant 3e-4, dropout 0.2, no warmup, decay or clipping
    "original": dict(OPTIMIZER="adamw", LEARNING_RATE=3e-4, MIN_LR_RATIO=1.0, WARMUP_ITERS=0, WEIGHT_DECAY=0.01, BETA2=0.999,
                     GRAD_CLIP=0.0, DROPOUT=0.2, BIAS=True, TIE_EMBEDDINGS=False),
    # nanoGPT's habits
    "nanogpt": dict(OPTIMIZER="adamw", LEARNING_RATE=1e-3, MIN_LR_RATIO=0.1, WARMUP_ITERS=100, WEIGHT_DECAY=0.1, BETA2=0.99,
                    GRAD_CLIP=1.0, DROPOUT=0.0, BIAS=False, TIE_EMBEDDINGS=True),
    # this project's defaults, as the constants at the top of gpty2_wiki.py say, with Muon
    "gpty2_wiki": dict({k: g.config_defaults()[k] for k in ("LEARNING_RATE", "MUON_LR", "MIN_LR_RATIO", "WARMUP_ITERS",
                        "WEIGHT_DECAY", "BETA1", "BETA2", "GRAD_CLIP", "DROPOUT", "BIAS", "TIE_EMBEDDINGS")},
                       OPTIMIZER="muon"),
}
# and the same with AdamW everywhere: where Muon does not win at equal time, OPTIMIZER=auto must not pick it
RECIPES["gpty2_wiki_adamw"] = dict(RECIPES["gpty2_wiki"], OPTIMIZER="adamw")


def step_time(cfg, steps=12, warmup=3):
    """Median seconds per optimizer step of this recipe's model and optimizer, timed directly (the
    data does not change the cost of a step)."""
    device = g.resolve_device(cfg["DEVICE"])
    torch.manual_seed(0)
    model = g.GPTLanguageModel(g.GPTConfig(len(g.VOCAB), cfg["BLOCK_SIZE"], cfg["N_EMBD"], cfg["N_HEAD"],
                                           cfg["N_LAYER"], cfg["DROPOUT"], cfg["BIAS"], cfg["TIE_EMBEDDINGS"]))
    model = model.to(device).train()
    precision = g.measure_precision(device, model.config, cfg["BATCH_SIZE"] * cfg["BLOCK_SIZE"], cfg["DTYPE"])
    opts = g.make_optimizers(model, cfg, device, cfg["OPTIMIZER"], precision["muon"])
    ctx = g.autocast_context(device, precision["train"])
    x = torch.randint(0, len(g.VOCAB), (cfg["BATCH_SIZE"], cfg["BLOCK_SIZE"]), device=device)
    times = []
    for i in range(warmup + steps):
        t = time.perf_counter()
        with ctx:
            _, loss = model(x, x)
        loss.backward()
        if cfg["GRAD_CLIP"] > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["GRAD_CLIP"])
        for opt in opts:
            opt.step()
        model.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t)
    return statistics.median(times[warmup:])


def run(name, cfg, iters, per_step=float("nan")):
    with tempfile.TemporaryDirectory() as d:
        cfg = dict(cfg, MAX_ITERS=iters, EVAL_INTERVAL=iters, LOG_INTERVAL=max(1, iters // 10),
                   CHECKPOINT_INTERVAL=iters, OUT_DIR=d, ROUNDS=1)
        t = time.perf_counter()
        row = g.train(cfg)
        wall = time.perf_counter() - t
    return dict(name=name, iters=iters, per_step=per_step, wall=wall, val=row["val_loss"],
                answer=row["val_answer_loss"], bpc=row["val_loss"] / math.log(2))


def break_even(steps, fractions=(0.4, 0.5, 0.6, 0.8)):
    """Muon given a fraction f of AdamW's steps, each with its whole schedule: where Muon still ends
    lower, it pays at equal wall time whenever its Newton-Schulz products take under 1 - f of a step."""
    cfg = {name: dict(g.config_defaults(), **BASE, **RECIPES[name]) for name in ("gpty2_wiki_adamw", "gpty2_wiki")}
    rows = [run("gpty2_wiki_adamw", cfg["gpty2_wiki_adamw"], steps)]
    rows += [run("gpty2_wiki", cfg["gpty2_wiki"], max(1, int(steps * f))) for f in fractions]
    print(f"\nEqual steps, seed {BASE['SEED']}; model 4x256, block 128, batch 32")
    print(f"{'recipe':18s} {'steps':>6s} {'share':>6s} {'val loss':>9s}")
    for r in rows:
        print(f"{r['name']:18s} {r['iters']:6d} {r['iters'] / steps:6.0%} {r['val']:9.4f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=5.0, help="wall-clock budget per recipe")
    ap.add_argument("--preset", action="append", default=[], help="also run a preset of gpty2_wiki (e.g. cpu)")
    ap.add_argument("--only", nargs="*", help="run only these recipes")
    ap.add_argument("--break-even", type=int, metavar="STEPS", help="equal steps, not time: AdamW for STEPS, "
                    "Muon for 40, 50, 60 and 80%% of them; the share of a step at which Muon stops paying")
    a = ap.parse_args()
    if a.break_even:
        return break_even(a.break_even)
    runs = {name: dict(g.config_defaults(), **BASE, **recipe) for name, recipe in RECIPES.items()
            if not a.only or name in a.only}
    runs.update({f"--preset {p}": dict(g.config_defaults(), **g.PRESETS[p], DATA_SOURCE="offline", EVAL_ITERS=100,
                                       QA_EVAL=1, QA_CHARS=1, TIME_BUDGET=0) for p in a.preset})
    # the budget becomes a step count per recipe, from step times measured alternately, in one process
    times = {name: [] for name in runs}
    for _ in range(3):
        for name, cfg in runs.items():
            times[name].append(step_time(cfg))
    results = [run(name, cfg, max(50, int(a.minutes * 60 / min(times[name]))), min(times[name]))
               for name, cfg in runs.items()]
    ref = {r["name"]: r for r in results}
    precision = g.measure_precision(g.resolve_device("auto"), g.GPTConfig(n_embd=256, n_head=4, n_layer=4), 4096)
    print(f"\nSame data, same {a.minutes:g}-minute budget, seed {BASE['SEED']}; model 4x256, block 128, batch 32 "
          f"(precision {precision['why']})")
    print(f"{'recipe':14s} {'steps':>6s} {'ms/step':>8s} {'wall s':>7s} {'val loss':>9s} {'bits/char':>9s} "
          f"{'answer loss':>11s} {'vs original':>11s} {'vs nanogpt':>10s}")
    def ratio(r, to, width):  # "-" where --only left the reference out
        return f"{r['val'] / ref[to]['val']:{width - 1}.2f}x" if to in ref else f"{'-':>{width}s}"
    for r in results:
        print(f"{r['name']:14s} {r['iters']:6d} {r['per_step'] * 1e3:8.1f} {r['wall']:7.0f} {r['val']:9.4f} "
              f"{r['bpc']:9.3f} {r['answer']:11.4f} {ratio(r, 'original', 11)} {ratio(r, 'nanogpt', 10)}")


if __name__ == "__main__":
    main()
