"""Does bf16 autocast hurt learning? The same runs (seeds, data, steps) in fp32 and in bf16.

    python tests/bench_precision.py               # 2 seeds x {float32, bfloat16}, 400 steps each
    python tests/bench_precision.py --steps 1000 --seeds 1 2 3

Not collected by pytest. Prints the val loss after the same number of steps for each seed and
precision, and the spread between seeds to judge the difference against.
"""
import argparse
import os
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import gpty2_wiki as g  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    a = ap.parse_args()
    results = {}
    for dtype in ("float32", "bfloat16"):
        for seed in a.seeds:
            with tempfile.TemporaryDirectory() as d:
                cfg = dict(g.config_defaults(), DATA_SOURCE="offline", N_LAYER=2, N_HEAD=4, N_EMBD=128,
                           BLOCK_SIZE=128, BATCH_SIZE=32, MAX_ITERS=a.steps, EVAL_INTERVAL=a.steps,
                           LOG_INTERVAL=a.steps, CHECKPOINT_INTERVAL=a.steps, EVAL_ITERS=100, SEED=seed,
                           DTYPE=dtype, OUT_DIR=d, MAX_ANSWER_CHARS=1)
                results[dtype, seed] = g.train(cfg)["val_loss"]
    print(f"\nval loss after {a.steps} steps (2 x 128 model, block 128, batch 32, offline corpus)")
    for dtype in ("float32", "bfloat16"):
        losses = [results[dtype, s] for s in a.seeds]
        print(f"  {dtype:9s} " + "  ".join(f"seed {s}: {v:.4f}" for s, v in zip(a.seeds, losses))
              + f"  mean {statistics.mean(losses):.4f}")
    diffs = [results["bfloat16", s] - results["float32", s] for s in a.seeds]
    spread = statistics.pstdev([results["float32", s] for s in a.seeds]) if len(a.seeds) > 1 else float("nan")
    print(f"  bf16 - fp32 per seed: {', '.join(f'{d:+.4f}' for d in diffs)}; spread between fp32 seeds: {spread:.4f}")


if __name__ == "__main__":
    main()
