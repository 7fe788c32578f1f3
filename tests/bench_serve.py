"""How fast does --serve answer? First-character latency and characters per second of streamed
answers, asked one at a time and by 4 pages at once, measured as a page sees them (over HTTP).

    python tests/bench_serve.py --model out/model.pt     # a trained model (python gpty2_wiki.py --preset cpu)
    python tests/bench_serve.py --untrained cpu          # an untrained model of the --preset cpu shape
    python tests/bench_serve.py --untrained tiny -- --device cpu   # flags after -- go to --serve

Not collected by pytest. Starts `gpty2_wiki.py --serve` on a free port in a subprocess and asks it
over 127.0.0.1. An untrained model rarely ends an answer, so its answers run to --max-chars.
"""
import argparse
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from urllib.parse import urlencode

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import gpty2_wiki as g  # noqa: E402

SHAPES = dict(tiny=dict(n_layer=2, n_head=2, n_embd=32, block_size=32),
              cpu=dict(n_layer=4, n_head=4, n_embd=256, block_size=128))
QUESTIONS = ["Who is Ada Lovelace?", "What is the Eiffel Tower?", "Where is Paris?", "What is an atom?",
             "Who was Charles Darwin?"]


def ask(port: int, question: str, settings: dict) -> dict:
    """One answer as a page reads it: seconds to the first character and to the end, characters, queued."""
    t0 = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    conn.request("GET", "/api/ask?" + urlencode(dict(q=question, **settings)))
    first, chars, queued = None, 0, False
    for line in conn.getresponse():
        if line.startswith(b"data: "):
            event = json.loads(line[6:])
            queued |= event.get("queued", False)
            if "text" in event:
                first = first or time.perf_counter() - t0
                chars += len(event["text"])
    conn.close()
    return dict(first=first or 0.0, total=time.perf_counter() - t0, chars=chars, queued=queued)


def line(r: dict) -> str:
    rate = r["chars"] / max(r["total"] - r["first"], 1e-9)
    return (f"first character {1000 * r['first']:7.1f} ms, {r['chars']:4d} characters in {r['total']:6.2f} s "
            f"({rate:6.0f} characters/s after the first){', queued' if r['queued'] else ''}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="model.pt or model.safetensors (default: an untrained model, see --untrained)")
    ap.add_argument("--untrained", choices=sorted(SHAPES), default="cpu")
    ap.add_argument("--max-chars", type=int, default=400)
    ap.add_argument("--temperature", type=float, default=0.8)
    ap.add_argument("--repeats", type=int, default=5)
    a, serve_flags = ap.parse_known_args()
    serve_flags = [f for f in serve_flags if f != "--"]
    tmp = tempfile.TemporaryDirectory()
    model = a.model
    if not model:
        model = os.path.join(tmp.name, "model.pt")
        g.save_model(model, g.GPTLanguageModel(g.GPTConfig(dropout=0.0, **SHAPES[a.untrained])), 0, None)
    server = subprocess.Popen([sys.executable, os.path.join(ROOT, "gpty2_wiki.py"), "--serve", "--model", model,
                               "--port", "0", *serve_flags], stdout=subprocess.PIPE, text=True)
    try:
        first_line = server.stdout.readline()
        print(first_line.strip())
        port = int(first_line.split("http://")[1].split(":")[1].split("/")[0])
        threading.Thread(target=lambda: [None for _ in server.stdout], daemon=True).start()  # its log, unread
        settings = dict(max_chars=a.max_chars, temperature=a.temperature)
        ask(port, "Who is Ada Lovelace?", settings)  # warm-up
        print(f"\none page at a time ({a.repeats} questions):")
        alone = []
        for i in range(a.repeats):
            alone.append(ask(port, QUESTIONS[i % len(QUESTIONS)], settings))
            print("  " + line(alone[-1]))
        rates = [r["chars"] / max(r["total"] - r["first"], 1e-9) for r in alone]
        print(f"  median: first character {1000 * statistics.median(r['first'] for r in alone):.1f} ms, "
              f"{statistics.median(rates):.0f} characters/s")
        print("\n4 pages at once:")
        results, barrier = [None] * 4, threading.Barrier(4)

        def page(i):
            barrier.wait()
            results[i] = ask(port, QUESTIONS[i], settings)
        t0 = time.perf_counter()
        threads = [threading.Thread(target=page, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
        for r in sorted(results, key=lambda r: r["first"]):
            print("  " + line(r))
        print(f"  all 4 done in {wall:.2f} s; one alone took {statistics.median(r['total'] for r in alone):.2f} s "
              f"(median); {sum(r['queued'] for r in results)} of 4 were told they were queued")
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
