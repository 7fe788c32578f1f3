"""The fetcher against the mock MediaWiki API (tests/wiki_server.py): batching and continuation,
retries and their waits (recorded through make_session's sleep_fn, never slept), bad batches,
persons and places, the article cache, and the command line end to end. Only 127.0.0.1 is contacted."""
import json
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
import requests

import gpty2_wiki as g
from helpers import SCRIPT, TINY, in_process, run
from wiki_server import WikiServer, load_pages

UA = "gpty2_wiki-tests/1.0 (tests@example.invalid)"
TIMEOUT = (2.0, 2.0)  # connect, read: generous for 127.0.0.1, short enough to fail fast


# --- helpers ---------------------------------------------------------------------------------

def session(retries=3, backoff=0.5):
    """A fetcher session whose backoff clock records the waits instead of sleeping."""
    waits = []
    return g.make_session(UA, retries, backoff, sleep_fn=waits.append), waits


def big_pool(copies):
    """The 64-page pool repeated with fresh page ids and titles (the plain pool has only 59 usable
    pages). Random batches then rarely repeat a page, as on Wikipedia with its millions."""
    pages, base = [], load_pages()
    for k in range(copies):
        for p in base:
            q = dict(p)
            if k:
                q["pageid"] = p["pageid"] + k * 10 ** 8
                q["title"] = f"{p['title']} ({k})"
            pages.append(q)
    return pages


@pytest.fixture
def big_server():
    server = WikiServer(pages=big_pool(50), seed=0)  # 3,200 pages, 2,950 usable
    yield server
    server.close()


_OFFLINE = {}


@pytest.fixture
def fast_offline(monkeypatch):
    """offline_records(n, seed) is the first n of one seeded shuffle of the whole offline corpus:
    make that shuffle once per test session instead of once per call (~2.5 s each)."""
    real = g.offline_records

    def offline_records(n, seed, answer_chars=g.ANSWER_CHARS, min_chars=g.MIN_ANSWER_CHARS):
        key = (seed, answer_chars, min_chars)
        if key not in _OFFLINE:
            _OFFLINE[key] = real(10 ** 9, seed, answer_chars, min_chars)
        return [dict(r) for r in _OFFLINE[key][:n]]

    monkeypatch.setattr(g, "offline_records", offline_records)


def closed_port_url():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/w/api.php"


def config(**overrides):
    cfg = g.config_defaults()
    cfg.update({"CONNECT_TIMEOUT": TIMEOUT[0], "READ_TIMEOUT": TIMEOUT[1], "USER_AGENT": UA, "HTTP_RETRIES": 2,
                "RETRY_BACKOFF": 0.01, **overrides})
    return cfg


def lines_of(path):
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        return f.read().splitlines()


def record(pageid, title=None, answer="It is a thing that exists and is described here at length."):
    title = title or f"Thing {pageid}"
    return dict(pageid=pageid, title=title, question=f"What is {title}?", answer=answer, kind="thing",
                url="", fetched_at="2024-01-01T00:00:00+00:00", source="wikipedia")


def fetch_args(url, data_dir, n, *extra):
    return ["--fetch-only", "--data-source", "wikipedia", "--wiki-api-url", url, "--num-articles", str(n),
            "--data-dir", str(data_dir), "--connect-timeout", "2", "--read-timeout", "5", *extra]


def wait_for(condition, what, timeout=30.0):
    """Poll until condition() is true; fail after `timeout` seconds (no fixed sleeps)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.01)


# --- one request, what it asks for, continuation ---------------------------------------------------

def test_a_batch_is_one_request_that_identifies_us_and_asks_for_gzip(wiki_server):
    s, waits = session()
    pages = g.query_random_pages(s, wiki_server.url, timeout=TIMEOUT)
    # The reply has batchcomplete *and* a "continue" to the next random batch: we stop at batchcomplete.
    assert wiki_server.count == 1 and waits == []
    assert len(pages) == 20 and len({p["pageid"] for p in pages}) == 20
    assert all("extract" in p and "fullurl" in p for p in pages)
    assert wiki_server.user_agents == [UA] and wiki_server.gzip_requests == 1
    p = wiki_server.requests[0]
    assert p["action"] == "query" and p["format"] == "json" and p["formatversion"] == "2"
    assert p["maxlag"] == str(g.MAXLAG)
    assert p["generator"] == "random" and p["grnnamespace"] == "0" and p["grnfilterredir"] == "nonredirects"
    assert p["grnlimit"] == "20" and p["exlimit"] == "20" and "exintro" in p
    assert set(p["prop"].split("|")) >= {"extracts", "pageprops", "coordinates", "info", "categories", "description"}
    assert "continue" not in p and "grncontinue" not in p
    assert g.make_session().headers["User-Agent"] == g.USER_AGENT


def visible_categories(page):
    return sorted(c["title"] for c in page.get("categories", []) if not c.get("hidden"))


def primary_coordinates(page):
    return [(c["lat"], c["lon"]) for c in page.get("coordinates", []) if c.get("primary", True)]


def test_continuation_is_followed_to_batchcomplete_and_merged(wiki_server):
    wiki_server.cl_limit, wiki_server.co_limit = 10, 1  # force clcontinue and cocontinue replies
    pool = {p["pageid"]: p for p in load_pages()}
    s, _ = session()
    pages = g.query_random_pages(s, wiki_server.url, timeout=TIMEOUT)
    assert len(pages) == 20 and len({p["pageid"] for p in pages}) == 20  # pages merged, none twice
    for p in pages:
        want = pool[p["pageid"]]
        got = [c["title"] for c in p.get("categories", [])]
        assert sorted(got) == visible_categories(want), p["title"]  # complete, no duplicates
        assert [(c["lat"], c["lon"]) for c in p.get("coordinates", [])] == primary_coordinates(want), p["title"]
        assert p["extract"] == want["extract"]
    reqs = wiki_server.requests
    assert len(reqs) > 3
    assert all("clcontinue" in r or "cocontinue" in r for r in reqs[1:])  # only continuations of this batch
    assert len({r["grncontinue"] for r in reqs[1:]}) == 1                  # ... of the same page set
    assert not any(r.get("continue") == "grncontinue||" for r in reqs)     # never on into the next batch


def test_a_batch_larger_than_exlimit_follows_excontinue(wiki_server):
    """64 >= the pool: the whole pool in one draw; TextExtracts gives 20 extracts a reply."""
    wiki_server.cl_limit = 50
    s, _ = session()
    pages = g.query_random_pages(s, wiki_server.url, batch=64, timeout=TIMEOUT)
    pool = {p["pageid"]: p for p in load_pages()}
    assert sorted(p["pageid"] for p in pages) == sorted(pool)
    assert all(p.get("extract") == pool[p["pageid"]]["extract"] for p in pages)
    assert all(sorted(c["title"] for c in p.get("categories", [])) == visible_categories(pool[p["pageid"]])
               for p in pages)
    assert any("excontinue" in r for r in wiki_server.requests)


def test_one_request_per_batch_and_at_least_15_usable_articles_per_request(big_server, tmp_path):
    path = str(tmp_path / "articles.jsonl")
    s, waits = session()
    records = g.grow_cache(path, 100, s, big_server.url, config())
    assert len(records) == 100 and len(lines_of(path)) == 100
    assert len({r["pageid"] for r in records}) == 100
    assert waits == [] and all("continue" not in r for r in big_server.requests)  # one request a batch
    per_request = 100 / big_server.count
    assert per_request >= 15, (big_server.count, per_request)


# --- retries and their waits -------------------------------------------------------------------------

def test_429_waits_exactly_retry_after(wiki_server):
    wiki_server.retry_after = 7
    wiki_server.push_faults("429")
    s, waits = session(backoff=0.5)
    assert len(g.query_random_pages(s, wiki_server.url, timeout=TIMEOUT)) == 20
    assert waits == [7] and wiki_server.count == 2


def test_503_backs_off_exponentially(wiki_server):
    """RETRY_BACKOFF is 'seconds; the wait doubles after each retry': backoff, 2x, 4x -- never a
    zero wait straight after Wikipedia said it is overloaded."""
    wiki_server.push_faults("503", "503", "503")
    s, waits = session(retries=5, backoff=0.5)
    assert len(g.query_random_pages(s, wiki_server.url, timeout=TIMEOUT)) == 20
    assert wiki_server.count == 4
    assert waits == [0.5, 1.0, 2.0]


def test_503_beyond_the_retries_is_a_bad_batch(wiki_server):
    wiki_server.push_faults(*["503"] * 3)
    s, waits = session(retries=2, backoff=0.5)
    with pytest.raises(ValueError, match="503"):
        g.query_random_pages(s, wiki_server.url, timeout=TIMEOUT)
    assert wiki_server.count == 3 and len(waits) == 2


def test_maxlag_is_retried_after_retry_after(wiki_server):
    wiki_server.retry_after = 3
    wiki_server.push_faults("maxlag")
    s, waits = session(backoff=0.5)
    assert len(g.query_random_pages(s, wiki_server.url, timeout=TIMEOUT)) == 20
    assert waits == [3.0] and wiki_server.count == 2


def test_persistent_maxlag_gives_up_after_the_retries(wiki_server):
    wiki_server.lag, wiki_server.retry_after = 30, 2
    s, waits = session(retries=2)
    with pytest.raises(ValueError, match="maxlag"):
        g.query_random_pages(s, wiki_server.url, timeout=TIMEOUT)
    assert waits == [2.0, 2.0] and wiki_server.count == 3


def test_a_stall_past_the_read_timeout_is_retried(wiki_server):
    wiki_server.stall_seconds = 5.0  # close() cuts it short
    wiki_server.push_faults("stall")
    s, waits = session(backoff=0.01)
    t0 = time.monotonic()
    assert len(g.query_random_pages(s, wiki_server.url, timeout=(2.0, 0.3))) == 20
    assert time.monotonic() - t0 < 3.0
    assert wiki_server.count == 2 and len(waits) == 1


def test_a_reset_connection_is_retried(wiki_server):
    wiki_server.push_faults("reset")
    s, waits = session(backoff=0.01)
    assert len(g.query_random_pages(s, wiki_server.url, timeout=TIMEOUT)) == 20
    assert wiki_server.count == 2 and len(waits) == 1


def test_bad_batches_are_skipped_with_a_warning_and_the_fetch_completes(wiki_server, tmp_path, capsys):
    wiki_server.push_faults("truncated", "html_error", "missing_fields")
    s, _ = session()
    skipped = {}
    batches = g.fetch_batches(s, wiki_server.url, timeout=TIMEOUT, skipped=skipped)
    assert [next(batches) for _ in range(3)] == [[], [], []]
    assert len(next(batches)) >= 15
    assert skipped["bad batch"] == 3
    out = capsys.readouterr().out
    warnings = [line for line in out.splitlines() if "skipping a bad batch" in line]
    assert len(warnings) == 3
    assert "IncompleteRead" in warnings[0] or "Connection broken" in warnings[0]
    assert "not JSON" in warnings[1] and "query.pages" in warnings[2]
    # and through the cache: the same faults cost three requests, not the fetch
    wiki_server.push_faults("html_error", "truncated", "missing_fields")
    path = str(tmp_path / "articles.jsonl")
    assert len(g.grow_cache(path, 40, s, wiki_server.url, config())) == 40
    assert len(lines_of(path)) == 40


def test_connection_refused_raises_connection_error_quickly():
    url = closed_port_url()
    s, waits = session(retries=2, backoff=0.01)
    t0 = time.monotonic()
    with pytest.raises(requests.exceptions.ConnectionError):
        next(g.fetch_batches(s, url, timeout=(0.5, 0.5)))
    assert time.monotonic() - t0 < 2.0
    assert len(waits) == 2 and all(w <= 0.05 for w in waits)


# --- persons, places, skipped pages --------------------------------------------------------------------

def test_persons_from_categories_places_from_coordinates_and_skip_reasons(wiki_server):
    s, _ = session()
    skipped = {}
    records = next(g.fetch_batches(s, wiki_server.url, batch=64, timeout=TIMEOUT, skipped=skipped))
    assert skipped == {"disambiguation": 2, "list": 2, "too short": 1}  # Mercury, Springfield; List of, Timeline of; Scopula
    assert len(records) == 59 and len({r["pageid"] for r in records}) == 59
    kinds = {r["title"]: r["kind"] for r in records}
    for person in ["Ada Lovelace", "Saoirse Ronan", "Elizabeth II", "Nelson Mandela", "Cleopatra", "Genghis Khan"]:
        assert kinds[person] == "person", person
    for place in ["Lyon", "Eiffel Tower", "Zawady, Białystok County", "Kyoto", "Lake Baikal"]:
        assert kinds[place] == "place", place
    for thing in ["The Beatles", "Caffeine", "Casablanca (film)", "World War I", "Violin"]:
        assert kinds[thing] == "thing", thing
    assert all(r["source"] == "wikipedia" and r["url"].startswith(wiki_server.wiki_base) for r in records)

    pages = {p["title"]: p for p in g.query_random_pages(s, wiki_server.url, batch=64, timeout=TIMEOUT)}
    ada, _ = g.page_to_article(pages["Ada Lovelace"])
    assert ada.is_human is True and ada.coordinates is None and ada.source == "wikipedia"
    assert ada.description == "English mathematician (1815–1852)" and ada.pageid == 974
    lyon, _ = g.page_to_article(pages["Lyon"])
    assert lyon.is_human is False and lyon.coordinates == (45.76, 4.84)  # the primary one
    beatles, _ = g.page_to_article(pages["The Beatles"])
    assert beatles.is_human is False
    no_categories = {k: v for k, v in pages["Ada Lovelace"].items() if k != "categories"}
    assert g.page_to_article(no_categories)[0].is_human is None  # unknown, not "not a person"
    assert g.page_to_article(pages["Mercury"]) == (None, "disambiguation")
    assert g.page_to_article(pages["List of lighthouses in Scotland"]) == (None, "list")


def test_fetch_articles_returns_articles(wiki_server):
    s, _ = session()
    articles = g.fetch_articles(10, wiki_server.url, session=s)
    assert len(articles) == 10 and len({a.pageid for a in articles}) == 10
    assert all(isinstance(a, g.Article) and a.source == "wikipedia" and a.text for a in articles)


# --- the cache -------------------------------------------------------------------------------------

def test_cache_is_append_only_and_keeps_the_first_of_each_pageid(tmp_path):
    path = str(tmp_path / "d" / "articles.jsonl")
    g.append_cache(path, [record(1), record(2)])
    with open(path, "rb") as f:
        before = f.read()
    g.append_cache(path, [record(2, answer="A different answer for the same page, which is ignored."), record(3)])
    with open(path, "rb") as f:
        after = f.read()
    assert after.startswith(before) and len(lines_of(path)) == 4
    cached = g.read_cache(path)
    assert [r["pageid"] for r in cached] == [1, 2, 3]
    assert cached[1]["answer"] == record(2)["answer"]
    assert set(cached[0]) == set(g.CACHE_FIELDS)
    g.append_cache(path, [])
    assert len(lines_of(path)) == 4


def test_a_torn_last_line_is_skipped_and_not_merged_into(tmp_path, capsys):
    path = str(tmp_path / "articles.jsonl")
    g.append_cache(path, [record(1), record(2)])
    line = json.dumps(record(3))
    with open(path, "a", encoding="utf-8") as f:
        f.write(line[:len(line) // 2])  # what a kill in the middle of a write leaves
    assert [r["pageid"] for r in g.read_cache(path)] == [1, 2]
    assert "skipped 1 corrupt line" in capsys.readouterr().out
    g.append_cache(path, [record(4), record(5)])
    assert [r["pageid"] for r in g.read_cache(path)] == [1, 2, 4, 5]
    lines = lines_of(path)
    assert len(lines) == 5 and lines[2] == line[:len(line) // 2] and json.loads(lines[3])["pageid"] == 4


def test_corrupt_lines_in_the_middle_lose_nothing_else(tmp_path, capsys):
    path = tmp_path / "articles.jsonl"
    good = [json.dumps(record(i)) for i in (1, 2, 3)]
    path.write_bytes("\n".join([good[0], "{not json", "", good[1], json.dumps({"title": "", "question": "?"}),
                                "[1, 2]", "\x00\x00\x00"]).encode() + b"\n\xff\xfe garbage\n" + good[2].encode() + b"\n")
    assert [r["pageid"] for r in g.read_cache(str(path))] == [1, 2, 3]
    assert "skipped 5 corrupt line(s)" in capsys.readouterr().out
    assert g.read_cache(str(tmp_path / "missing.jsonl")) == []


def test_grow_cache_fetches_only_the_shortfall(big_server, tmp_path):
    path = str(tmp_path / "articles.jsonl")
    s, _ = session()
    cfg = config()
    assert len(g.grow_cache(path, 30, s, big_server.url, cfg)) == 30
    first = lines_of(path)
    n1 = big_server.count
    cached = g.grow_cache(path, 50, s, big_server.url, cfg)
    assert len(cached) == 50 and len({r["pageid"] for r in cached}) == 50
    lines = lines_of(path)
    assert len(lines) == 50 and lines[:30] == first
    assert big_server.count - n1 <= math.ceil(20 / 15)
    n2 = big_server.count
    assert len(g.grow_cache(path, 50, s, big_server.url, cfg)) == 50
    assert len(g.grow_cache(path, 10, s, big_server.url, cfg)) == 50  # never shrinks either
    assert big_server.count == n2


@pytest.mark.parametrize("how", ["failing", "exhausted"])
def test_a_fetch_that_brings_nothing_new_gives_up(how, tmp_path):
    """A source that never brings a new article (an API answering only error pages, or a pool smaller
    than asked for) must end the fetch in bounded time -- with the one-line error of --data-source
    wikipedia -- not loop forever sending requests."""
    pages = load_pages()[:12] if how == "exhausted" else None  # 8 usable pages, 20 asked for
    server = WikiServer(pages=pages, seed=0)
    if how == "failing":
        server.push_faults(*["html_error"] * 1000)
    cfg = config(DATA_SOURCE="wikipedia", WIKI_API_URL=server.url, DATA_DIR=str(tmp_path), HTTP_RETRIES=0)
    outcome = {}

    def target():
        try:
            outcome["records"] = g.build_corpus(cfg, 20)
        except Exception as e:  # noqa: BLE001 -- the test inspects it
            outcome["error"] = e

    thread = threading.Thread(target=target, daemon=True)
    try:
        thread.start()
        thread.join(3)
        stuck = thread.is_alive()
        requests_sent = server.count
    finally:
        server.close()  # a stuck fetch then fails on a closed port and its thread ends
        thread.join(10)
    assert not stuck, f"the fetch was still going after 3 s and {requests_sent} requests"
    assert requests_sent <= 100
    assert isinstance(outcome.get("error"), g.UserError) and "\n" not in str(outcome["error"])


# --- command line, end to end -------------------------------------------------------------------------

def test_cli_fetch_only_builds_the_cache_then_fetches_only_the_shortfall(big_server, tmp_path, monkeypatch, capsys):
    data = tmp_path / "data"
    path = str(data / "articles.jsonl")
    rc, out, err = in_process(fetch_args(big_server.url, data, 60), tmp_path, monkeypatch, capsys)
    assert rc == 0 and "corpus: 60 articles" in out, err
    lines = lines_of(path)
    assert len(lines) == 60
    recs = [json.loads(line) for line in lines]
    assert len({x["pageid"] for x in recs}) == 60
    assert all(set(x) == set(g.CACHE_FIELDS) and x["source"] == "wikipedia" for x in recs)
    assert all(x["question"].endswith("?") and x["answer"].isascii() for x in recs)
    n1 = big_server.count
    assert n1 <= math.ceil(60 / 15)
    assert set(big_server.user_agents) == {g.USER_AGENT} and big_server.gzip_requests == n1

    rc, out, err = in_process(fetch_args(big_server.url, data, 80), tmp_path, monkeypatch, capsys)
    assert rc == 0, err
    lines2 = lines_of(path)
    assert len(lines2) == 80 and lines2[:60] == lines
    assert big_server.count - n1 <= math.ceil(20 / 15)
    assert "fetching 20 articles" in out and "60 already cached" in out


def test_cli_wikipedia_source_with_a_closed_port_fails_in_one_line(tmp_path):
    url = closed_port_url()
    t0 = time.monotonic()
    r = run(fetch_args(url, tmp_path / "data", 10, "--http-retries", "1", "--retry-backoff", "0.01",
                       "--connect-timeout", "0.5"), cwd=tmp_path)
    assert time.monotonic() - t0 < 20
    assert r.returncode == 1
    assert "Traceback" not in r.stderr + r.stdout
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("gpty2_wiki.py: error: cannot reach Wikipedia at " + url), r.stderr


def test_auto_source_with_a_closed_port_falls_back_to_the_cache_then_offline(wiki_server, tmp_path, capsys,
                                                                             fast_offline):
    data = tmp_path / "data"
    path = str(data / "articles.jsonl")
    s, _ = session()
    cached = g.grow_cache(path, 20, s, wiki_server.url, config())
    capsys.readouterr()
    url = closed_port_url()
    cfg = config(DATA_SOURCE="auto", WIKI_API_URL=url, DATA_DIR=str(data), HTTP_RETRIES=1)
    records = g.build_corpus(cfg, 40)
    assert len(records) == 40
    assert [r["pageid"] for r in records[:20]] == [r["pageid"] for r in cached]  # the cache first
    assert all(r["source"] == "offline" for r in records[20:])                   # then the offline corpus
    assert len({r["title"] for r in records}) == 40
    said = [line for line in capsys.readouterr().out.splitlines() if "unreachable" in line]
    assert said == ["Wikipedia is unreachable (127.0.0.1: Connection refused): using the 20 cached articles and the "
                    "offline corpus"]
    assert len(lines_of(path)) == 20  # offline records are not cached as if fetched

    rc = g.main(["--fetch-only", "--data-source", "auto", "--wiki-api-url", url, "--num-articles", "30",
                 "--data-dir", str(data), "--http-retries", "1", "--retry-backoff", "0.01", "--connect-timeout", "0.5"])
    out, err = capsys.readouterr()
    assert rc == 0 and err == ""
    assert sum("unreachable" in line for line in out.splitlines()) == 1
    assert "corpus: 30 articles" in out


def test_no_network_is_known_within_seconds_with_the_default_retries(tmp_path, capsys, fast_offline):
    """urllib3's connect retries (1 + 2 + 4 + 8 + 16 s at the defaults) are for a Wikipedia that is
    reachable but failing: one quick probe first tells a machine with no network at once."""
    url = closed_port_url()
    t0 = time.monotonic()
    rc = g.main(["--fetch-only", "--data-source", "auto", "--wiki-api-url", url, "--num-articles", "30",
                 "--data-dir", str(tmp_path / "data")])
    out = capsys.readouterr().out
    assert rc == 0 and time.monotonic() - t0 < 5  # the retries alone would wait 31 s
    assert out.index("connecting to 127.0.0.1") < out.index("Wikipedia is unreachable")  # said before waiting
    assert "corpus: 30 articles" in out
    assert g.probe(url, 1.0) == "127.0.0.1: Connection refused"
    with WikiServer() as server:
        assert g.probe(server.url, 1.0) == "" and server.count == 0  # a TCP connection, no request


def test_offline_source_never_touches_the_network(wiki_server, tmp_path, capsys, fast_offline):
    rc = g.main(["--fetch-only", "--data-source", "offline", "--wiki-api-url", wiki_server.url,
                 "--num-articles", "30", "--data-dir", str(tmp_path / "data")])
    assert rc == 0 and "corpus: 30 articles" in capsys.readouterr().out
    assert wiki_server.count == 0 and not (tmp_path / "data").exists()


def test_a_killed_fetch_leaves_a_good_cache_and_the_next_run_fetches_the_shortfall(big_server, tmp_path):
    data = tmp_path / "data"
    path = str(data / "articles.jsonl")
    big_server.stall_seconds = 0.5  # each batch takes at least this long (the stall ends, then the answer)
    big_server.push_faults(*["stall"] * 20)
    log = open(tmp_path / "killed.log", "w")
    proc = subprocess.Popen([sys.executable, SCRIPT, *fetch_args(big_server.url, data, 60)], cwd=tmp_path,
                            stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    try:
        # after the first batch is in the cache and while the second request is stalled: kill
        wait_for(lambda: len(lines_of(path)) >= 1 and big_server.count >= 2 or proc.poll() is not None,
                 "the first batch in the cache")
        assert proc.poll() is None, "the fetch finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        log.close()
    assert proc.returncode == -signal.SIGKILL
    lines = lines_of(path)
    assert 0 < len(lines) < 60
    assert all(json.loads(line)["title"] for line in lines)  # every line parses: nothing torn
    assert len(g.read_cache(path)) == len(lines)

    big_server.stall_seconds = 0  # the remaining stall faults now answer at once
    n1 = big_server.count
    r = run(fetch_args(big_server.url, data, 60), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    lines2 = lines_of(path)
    assert len(lines2) == 60 and lines2[:len(lines)] == lines
    assert len({json.loads(line)["pageid"] for line in lines2}) == 60
    assert f"fetching {60 - len(lines)} articles" in r.stdout
    assert big_server.count - n1 <= math.ceil((60 - len(lines)) / 15)


def test_training_end_to_end_against_the_mock(big_server, tmp_path, monkeypatch, capsys):
    args = ["--data-source", "wikipedia", "--wiki-api-url", big_server.url, "--num-articles", "60",
            "--max-iters", "10", "--eval-interval", "5", "--out-dir", str(tmp_path / "out"),
            "--data-dir", str(tmp_path / "data"), *TINY, "--max-answer-chars", "40"]
    rc, out, err = in_process(args, tmp_path, monkeypatch, capsys)
    assert rc == 0, out[-2000:] + err[-2000:]
    assert (tmp_path / "out" / "model.pt").is_file()
    assert len(lines_of(str(tmp_path / "data" / "articles.jsonl"))) == 60
    assert big_server.count <= math.ceil(60 / 15)
