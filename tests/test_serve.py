"""--serve over real HTTP on 127.0.0.1: the page, the streamed answers, several pages at once, closed
pages, bad requests, a run rewriting the model, Ctrl-C, and a real browser (headless Chromium)."""
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from urllib.parse import urlencode

import pytest
import torch

import gpty2_wiki as g
from helpers import ROOT, SCRIPT

QUESTIONS = ["Who is Ada Lovelace?", "What is an atom?", "Where is Paris?", "What is the Eiffel Tower?"]
META = dict(train_titles=["Ada Lovelace", "Paris"], val_titles=["Atom"], recall=0.25)


def tiny_model(seed: int = 0) -> g.GPTLanguageModel:
    """Untrained and tiny, but its weights are scaled up so that its greedy answers depend on the
    question, and it writes no newline or space, so every answer runs to max_chars."""
    torch.manual_seed(seed)
    model = g.GPTLanguageModel(g.GPTConfig(block_size=32, n_embd=32, n_head=2, n_layer=2, dropout=0.0))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.5)
        model.lm_head.bias[[g.STOI["\n"], g.STOI[" "]]] = -100
    return model.eval()


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One thread for the answers, as --serve does on a CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def start(path: str, *flags: str):
    """make_server on a free port, serving in a thread, as --serve would."""
    cfg = g.make_config(g.build_parser().parse_args(["--dtype", "float32", "--port", "0", *flags]))
    server = g.make_server(cfg, path)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    path = tmp_path_factory.mktemp("serve") / "model.pt"
    g.save_model(str(path), tiny_model(), 7, 1.5, META)
    server = start(str(path))
    yield server
    server.shutdown()
    server.server_close()


def get(server, path: str, method: str = "GET"):
    conn = http.client.HTTPConnection(*server.server_address[:2], timeout=30)
    conn.request(method, path)
    r = conn.getresponse()
    body = r.read().decode()
    conn.close()
    return r.status, r.getheader("Content-Type"), body


def ask(server, question: str, until=None, **settings) -> list[dict]:
    """The events of one streamed answer, read as they arrive; until(event) True closes the page there."""
    conn = http.client.HTTPConnection(*server.server_address[:2], timeout=30)
    conn.request("GET", "/api/ask?" + urlencode(dict(q=question, temperature=0, **settings)))
    r = conn.getresponse()
    assert r.status == 200 and r.getheader("Content-Type") == "text/event-stream"
    events = []
    for line in r:
        if line.startswith(b"data: "):
            events.append(json.loads(line[6:]))
            if until and until(events[-1]):
                break
    r.close()
    conn.close()
    return events


def text(events: list[dict]) -> str:
    return "".join(e.get("text", "") for e in events)


def poll(condition, seconds: float = 20):
    end = time.time() + seconds
    while not condition():
        assert time.time() < end, "timed out"
        time.sleep(0.01)


def test_the_page_the_card_and_a_streamed_answer(server):
    status, kind, page = get(server, "/")
    assert status == 200 and kind.startswith("text/html") and "<form" in page and "CC BY-SA 4.0" in page
    status, kind, body = get(server, "/api/card")
    card = json.loads(body)
    assert status == 200 and kind == "application/json"
    assert card["step"] == 7 and card["articles"] == 2 and card["recall"] == 0.25 and card["file"] == "model.pt"
    assert card["parameters"] == server.live.model.num_params() and card["defaults"] == dict(temperature=0.8, top_k=0,
                                                                                             max_chars=400)
    server.live.last, finished = None, []  # finished: whether the answer was complete as each event arrived
    events = ask(server, "Who is Ada Lovelace?", max_chars=1000,
                 until=lambda e: finished.append(server.live.last is not None))  # (None: read on)
    assert finished[:2] == [False, False] and "text" in events[1]  # the first characters came before the rest was made
    assert events[0] == dict(step=7, seen=True) and events[-1]["done"] and events[-1]["chars"] == 1000
    assert len(text(events)) == 1000 and sum("text" in e for e in events) > 10
    assert text(events) == g.ask(server.live.model, "Who is Ada Lovelace?", temperature=0, max_chars=1000)
    assert ask(server, "What is an atom?", max_chars=5)[0]["seen"] is False


def test_four_pages_at_once_take_turns_without_mixing(server):
    alone = {q: text(ask(server, q, max_chars=300)) for q in QUESTIONS}
    assert len(set(alone.values())) == 4
    results, barrier = {}, threading.Barrier(4)

    def page(q):
        barrier.wait()
        results[q] = ask(server, q, max_chars=300)
    threads = [threading.Thread(target=page, args=(q,)) for q in QUESTIONS]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert {q: text(events) for q, events in results.items()} == alone  # greedy: exactly the answers given alone
    assert all(events[-1].get("done") for events in results.values())


def test_a_closed_page_stops_its_generation(server):
    # A page that is waiting its turn, then closed: its answer stops at its first characters.
    server.live.last = None
    with server.live.turn:  # another page's answer is being written
        events = ask(server, "Where is Paris?", until=lambda e: True, max_chars=1000)
    assert events == [dict(queued=True)]
    poll(lambda: server.live.last)
    assert server.live.last["stopped"] == "the page was closed" and server.live.last["chars"] < 1000
    # A page closed after its first characters.
    server.live.last = None
    ask(server, "What is an atom?", until=lambda e: "text" in e, max_chars=1000)
    poll(lambda: server.live.last)
    assert server.live.last["stopped"] == "the page was closed" and server.live.last["chars"] < 1000
    assert ask(server, "Where is Paris?", max_chars=20)[-1]["chars"] == 20  # and the next page is answered


@pytest.mark.parametrize("path, status, needle", [
    ("/api/ask", 400, "1 to 300 characters"),
    ("/api/ask?q=%20%20", 400, "1 to 300 characters"),
    ("/api/ask?" + urlencode(dict(q="x" * 301)), 400, "not 301"),
    ("/api/ask?q=hi&temperature=hot", 400, "temperature must be a number"),
    ("/api/ask?q=hi&temperature=nan", 400, "temperature must be in [0.0, 2.0]"),
    ("/api/ask?q=hi&temperature=2.5", 400, "temperature must be in"),
    ("/api/ask?q=hi&top_k=1.5", 400, "top_k must be a number (int)"),
    ("/api/ask?q=hi&top_k=-1", 400, "top_k must be in [0, 96]"),
    ("/api/ask?q=hi&max_chars=0", 400, "max_chars must be in [1, 1000]"),
    ("/api/ask?q=hi&max_chars=100000", 400, "max_chars must be in"),
    ("/model.pt", 404, "not found"),
    ("/../../etc/passwd", 404, "not found"),
    ("/tests/", 404, "not found"),
    ("/api/", 404, "not found"),
])
def test_bad_requests_get_a_4xx_and_one_line(server, path, status, needle):
    got, kind, body = get(server, path)
    assert got == status and kind.startswith("text/plain") and needle in body and body.count("\n") == 1, body


def test_other_methods_and_broken_requests_are_refused_in_one_line(server):
    status, _, body = get(server, "/", "POST")
    assert status == 405 and body == "POST not allowed: this server only answers GET\n"
    with socket.create_connection(server.server_address[:2], timeout=10) as s:
        s.sendall(b"BREW /pot HTTP/1.0\r\n\r\n")
        reply = s.makefile("rb").read().decode()
    assert reply.startswith("HTTP/1.0 501") and reply.endswith("\r\n\r\nUnsupported method ('BREW')\n")


def test_a_busy_port_and_a_bad_port_are_one_line(server):
    with pytest.raises(g.UserError, match="cannot serve on 127.0.0.1"):
        g.make_server(g.make_config(g.build_parser().parse_args(
            ["--dtype", "float32", "--port", str(server.server_address[1])])), server.live.path)
    with pytest.raises(g.UserError, match=r"--port must be in \[0, 65535\]"):
        g.make_config(g.build_parser().parse_args(["--port", "70000"]))


@pytest.mark.parametrize("name", ["model.pt", "model.safetensors"])
def test_the_newest_model_answers_while_a_run_writes_it(tmp_path, name):
    g.save_model(str(tmp_path / "model.pt"), tiny_model(0), 1, 3.0, META)
    server = start(str(tmp_path / name))
    try:
        seen, stop = [], threading.Event()

        def page():  # asks again and again while the run saves
            while not stop.is_set():
                events = ask(server, "Who is Ada Lovelace?", max_chars=50)
                assert events[-1].get("done") and len(text(events)) == 50
                seen.append(events[0]["step"])
        asker = threading.Thread(target=page)
        asker.start()
        for step in range(2, 6):  # a run saving its best model at each evaluation
            g.save_model(str(tmp_path / "model.pt"), tiny_model(step), step * 100, 3.0 / step, META)
            poll(lambda: json.loads(get(server, "/api/card")[2])["step"] == step * 100)
        poll(lambda: seen and seen[-1] == 500)
        stop.set()
        asker.join(30)
        assert seen == sorted(seen) and not asker.is_alive()
        assert text(ask(server, "Who is Ada Lovelace?", max_chars=40)) == g.ask(
            tiny_model(5), "Who is Ada Lovelace?", temperature=0, max_chars=40)  # the newest weights answer
    finally:
        server.shutdown()
        server.server_close()


def test_serve_from_the_command_line_and_ctrl_c_mid_answer(tmp_path):
    g.save_model(str(tmp_path / "model.pt"), tiny_model(), 3, 2.0, META)
    (tmp_path / "model.pt").unlink()  # the safetensors pair alone
    proc = subprocess.Popen([sys.executable, SCRIPT, "--serve", "--model", "model.safetensors", "--dtype", "float32"],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONPATH=ROOT, PYTHONUNBUFFERED="1"))
    try:
        line = proc.stdout.readline()
        assert line.startswith("serving model.safetensors (step 3) at http://127.0.0.1:"), line + proc.stderr.read()
        port = int(line.split("http://127.0.0.1:")[1].split("/")[0])
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("GET", "/api/ask?q=Who+is+Ada+Lovelace%3F&max_chars=1000")
        stream = conn.getresponse()
        while b'"text"' not in stream.readline():  # an answer is being written...
            pass
        proc.send_signal(signal.SIGINT)  # ...when Ctrl-C comes
        rest = stream.read()
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0 and err == "" and b'"done"' not in rest, out + err
    assert out.splitlines()[-1] == "stopped serving" and "stopped: the server is stopping" in out, out


def chromium():
    """A headless Chromium driven by Selenium through the OS's chromedriver, or a reason to skip."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        return None, "selenium is not installed (pip install -r requirements.txt)"
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver = shutil.which("chromedriver")
    if not browser or not driver:
        return None, "no chromium and chromedriver here (apt-get install chromium chromium-driver)"
    return (webdriver, Service, browser, driver), None


def test_a_real_browser_sees_the_answer_stream_in(tmp_path):
    found, why = chromium()
    if not found:
        pytest.skip(why)
    webdriver, Service, browser, driver = found
    model = trained = os.environ.get("GPTY2_MODEL")  # a trained model for the README's screenshot, else a tiny one
    if not trained:
        model = str(tmp_path / "model.pt")
        g.save_model(model, tiny_model(), 7, 1.5, META)
    server = start(model)
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-sync",
                 "--disable-background-networking", "--disable-component-update", "--window-size=900,720",
                 f"--user-data-dir={tmp_path / 'profile'}"]:
        options.add_argument(flag)
    chrome = webdriver.Chrome(service=Service(driver), options=options)
    try:
        chrome.get("http://%s:%d/" % server.server_address[:2])
        by_id = lambda name: chrome.find_element("id", name)  # noqa: E731
        poll(lambda: "parameters" in by_id("card").text)
        # Every change of the answer's text, as the page makes it.
        chrome.execute_script("const a = document.getElementById('answer'); window.seen = [];"
                              "new MutationObserver(() => window.seen.push(a.textContent))"
                              ".observe(a, {childList: true, characterData: true, subtree: true})")
        by_id("temperature").clear()
        by_id("temperature").send_keys("0")
        by_id("max_chars").clear()
        by_id("max_chars").send_keys("300")
        by_id("q").send_keys("Who is Ada Lovelace?")
        by_id("q").submit()
        poll(lambda: "characters in" in by_id("status").text, 60)
        seen = [t for t in chrome.execute_script("return window.seen") if t]
        answer = chrome.execute_script("return document.getElementById('answer').textContent")
        assert len(seen) > 2 and seen[-1] == answer  # it grew in several steps
        assert all(a == b[:len(a)] for a, b in zip(seen, seen[1:]))  # each one a beginning of the next
        assert answer == "".join(g.answer_stream(server.live.model, "Who is Ada Lovelace?", 0, 0, 300))
        assert by_id("seen").text.startswith("Its subject is " if trained else "Its subject is among the training")
        if os.environ.get("GPTY2_SCREENSHOT"):
            chrome.save_screenshot(os.environ["GPTY2_SCREENSHOT"])
    finally:
        chrome.quit()
        server.shutdown()
        server.server_close()
