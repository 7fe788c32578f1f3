"""Tests of the mock MediaWiki API in wiki_server.py, with plain `requests` (not the project's code),
so that the fetcher's tests can trust it. Every request goes to 127.0.0.1 only."""

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from wiki_server import FAULTS, WikiServer, load_pages

TIMEOUT = (2, 2)
# The query gpty2_wiki's fetcher makes.
QUERY = {
    "action": "query", "format": "json", "formatversion": "2",
    "generator": "random", "grnnamespace": "0", "grnfilterredir": "nonredirects", "grnlimit": "20",
    "prop": "extracts|pageprops|coordinates|info|categories|description",
    "exintro": "1", "exlimit": "20", "ppprop": "disambiguation|wikibase_item", "inprop": "url",
    "coprimary": "primary", "cllimit": "max", "clshow": "!hidden", "maxlag": "5",
}


def get(server, **overrides):
    params = {k: v for k, v in {**QUERY, **overrides}.items() if v is not None}
    return requests.get(server.url, params=params, timeout=TIMEOUT)


def fetch_batch(server, **overrides):
    """The "continuing queries" recipe: merge `continue` into the parameters until batchcomplete."""
    params = {k: v for k, v in {**QUERY, **overrides}.items() if v is not None}
    replies, pages = [], {}
    for _ in range(100):
        reply = requests.get(server.url, params=params, timeout=TIMEOUT).json()
        replies.append(reply)
        for page in reply.get("query", {}).get("pages", []):
            merged = pages.setdefault(page["pageid"], {})
            for key, value in page.items():
                if isinstance(value, list):
                    merged.setdefault(key, []).extend(value)
                else:
                    merged[key] = value
        if reply.get("batchcomplete"):
            return replies, pages
        params = {**params, **reply["continue"]}
    raise AssertionError("no batchcomplete after 100 replies")


def visible_categories(page):
    return [c["title"] for c in page["categories"] if not c.get("hidden")]


def test_page_pool_is_well_formed():
    pages = load_pages()
    assert len(pages) >= 50
    assert len({p["pageid"] for p in pages}) == len(pages) == len({p["title"] for p in pages})
    for p in pages:
        assert p["ns"] == 0 and isinstance(p["extract"], str)
        assert all(c["ns"] == 14 and c["title"].startswith("Category:") for c in p["categories"])
    by_title = {p["title"]: p for p in pages}
    assert by_title["Mercury"]["pageprops"]["disambiguation"] == ""
    assert "Living people" in " ".join(visible_categories(by_title["Saoirse Ronan"]))
    assert {"Category:1815 births", "Category:1852 deaths"} <= {c["title"] for c in by_title["Ada Lovelace"]["categories"]}
    assert by_title["Eiffel Tower"]["extract"].startswith("<p>The <b>Eiffel Tower</b>")
    assert len(visible_categories(by_title["Albert Einstein"])) > 20
    html_dir = Path(__file__).parent / "data" / "html"
    assert len(list(html_dir.glob("*_2014.html"))) >= 3 and len(list(html_dir.glob("*_modern.html"))) >= 1


def test_fresh_batch_has_the_real_reply_shape(wiki_server):
    r = get(wiki_server)
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("application/json")
    body = r.json()
    # A random generator can always go on: batchcomplete *and* a continue with the next grncontinue.
    assert body["batchcomplete"] is True
    assert body["continue"]["continue"] == "grncontinue||"
    assert set(body["continue"]) == {"grncontinue", "continue"}
    pages = body["query"]["pages"]
    assert isinstance(pages, list) and len(pages) == 20
    assert len({p["pageid"] for p in pages}) == 20  # without replacement within a batch
    pool = {p["pageid"]: p for p in wiki_server.pages}
    for page in pages:
        src = pool[page["pageid"]]
        assert page["ns"] == 0 and page["title"] == src["title"] and page["extract"] == src["extract"]
        assert page["fullurl"].startswith("http://127.0.0.1:") and page["canonicalurl"] and "action=edit" in page["editurl"]
        assert [c["title"] for c in page.get("categories", [])] == sorted(visible_categories(src),
                                                                         key=lambda t: t.replace(" ", "_"))
        assert all(set(c) == {"ns", "title"} for c in page.get("categories", []))
        assert set(page.get("pageprops", {})) <= {"disambiguation", "wikibase_item"}
        for coord in page.get("coordinates", []):
            assert coord["primary"] is True and coord["globe"] == "earth" and {"lat", "lon"} <= set(coord)
        if src.get("description"):
            assert page["description"] == src["description"] and page["descriptionsource"] in ("local", "central")
        assert "note" not in page
    assert wiki_server.count == 1 and wiki_server.requests[0]["generator"] == "random"
    assert wiki_server.user_agents[0].startswith("python-requests/")


def test_draws_are_seeded_and_repeatable():
    def batches(seed, n=3):
        with WikiServer(seed=seed) as server:
            return [[p["pageid"] for p in get(server).json()["query"]["pages"]] for _ in range(n)]

    first = batches(7)
    assert first == batches(7)
    assert first != batches(8)
    assert first[0] != first[1]  # each fresh query is a new draw


def test_setting_the_seed_restarts_the_draws(wiki_server):
    wiki_server.seed = 3
    a = [p["pageid"] for p in get(wiki_server).json()["query"]["pages"]]
    wiki_server.seed = 3
    assert a == [p["pageid"] for p in get(wiki_server).json()["query"]["pages"]]


def test_small_pool_returns_everything_shuffled_and_nothing_to_continue():
    pool = [p for p in load_pages() if p["title"] in ("Chess", "Violin", "Ammonia")]
    with WikiServer(pages=pool, seed=1) as server:
        body = get(server).json()
    assert sorted(p["title"] for p in body["query"]["pages"]) == ["Ammonia", "Chess", "Violin"]
    assert body["batchcomplete"] is True and "continue" not in body


def test_category_limit_forces_continuation_that_keeps_the_page_set(wiki_server):
    wiki_server.cl_limit = 5
    replies, pages = fetch_batch(wiki_server)
    assert len(replies) > 3
    first_ids = [p["pageid"] for p in replies[0]["query"]["pages"]]
    for reply in replies[:-1]:
        assert "batchcomplete" not in reply
        cont = reply["continue"]
        assert set(cont) == {"clcontinue", "grncontinue", "continue"}
        assert cont["continue"] == "grncontinue||extracts|pageprops|coordinates|info|description"
        assert sum(len(p.get("categories", [])) for p in reply["query"]["pages"]) == 5
    for reply in replies:
        assert [p["pageid"] for p in reply["query"]["pages"]] == first_ids  # the generator's set is kept
    for reply in replies[1:]:  # finished modules are skipped on continuation: no extract, no url
        assert all("extract" not in p and "fullurl" not in p for p in reply["query"]["pages"])
    assert replies[-1]["batchcomplete"] is True and replies[-1]["continue"]["continue"] == "grncontinue||"
    pool = {p["pageid"]: p for p in wiki_server.pages}
    for pid, page in pages.items():
        assert sorted(c["title"] for c in page.get("categories", [])) == sorted(visible_categories(pool[pid]))
        assert page["extract"] == pool[pid]["extract"]
    # every continuation request carried the previous reply's continue values
    assert all("clcontinue" in q and "grncontinue" in q for q in wiki_server.requests[1:])


def test_next_grncontinue_draws_a_new_batch_and_repeats_it(wiki_server):
    body = get(wiki_server).json()
    token = body["continue"]["grncontinue"]
    again = [get(wiki_server, grncontinue=token, **{"continue": "grncontinue||"}).json() for _ in range(2)]
    ids = [[p["pageid"] for p in b["query"]["pages"]] for b in (body, *again)]
    assert ids[1] == ids[2] and ids[1] != ids[0]


def test_coordinates_default_colimit_is_10_as_in_geodata(wiki_server):
    body = get(wiki_server, grnlimit="max").json()  # the whole pool, 16 pages with coordinates
    assert len(body["query"]["pages"]) == len(wiki_server.pages)
    assert sum(len(p.get("coordinates", [])) for p in body["query"]["pages"]) == 10
    assert "cocontinue" in body["continue"] and "batchcomplete" not in body
    _, pages = fetch_batch(wiki_server, grnlimit="max", colimit="max")
    lyon = next(p for p in pages.values() if p["title"] == "Lyon")
    assert lyon["coordinates"] == [{"lat": 45.76, "lon": 4.84, "primary": True, "globe": "earth"}]


def test_without_exintro_only_one_extract_per_reply(wiki_server):
    body = get(wiki_server, exintro=None).json()
    assert sum("extract" in p for p in body["query"]["pages"]) == 1
    assert body["continue"]["excontinue"] == "1" and "lowered to 1" in body["warnings"]["extracts"]["warnings"]


def test_hidden_categories_unless_clshow(wiki_server):
    body = get(wiki_server, clshow=None, grnlimit="max", colimit="max").json()
    titles = {c["title"] for p in body["query"]["pages"] for c in p.get("categories", [])}
    assert "Category:Articles with short description" in titles


def test_formatversion_1_shape(wiki_server):
    body = get(wiki_server, formatversion=None).json()
    assert body["batchcomplete"] == ""
    pages = body["query"]["pages"]
    assert isinstance(pages, dict) and all(k == str(v["pageid"]) for k, v in pages.items())


def test_http_faults_then_normal_answers(wiki_server):
    wiki_server.retry_after = 2
    wiki_server.push_faults("429", "503", "html_error", "missing_fields")
    assert wiki_server.pending_faults == ["429", "503", "html_error", "missing_fields"]
    r = get(wiki_server)
    assert r.status_code == 429 and r.headers["Retry-After"] == "2"
    r = get(wiki_server)
    assert r.status_code == 503 and r.headers["Content-Type"].startswith("text/html") and "Wikimedia Error" in r.text
    r = get(wiki_server)
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/html")
    with pytest.raises(ValueError):
        r.json()
    r = get(wiki_server)
    assert r.status_code == 200 and r.json() == {"batchcomplete": True}
    assert len(get(wiki_server).json()["query"]["pages"]) == 20
    assert wiki_server.count == 5 and all(q["generator"] == "random" for q in wiki_server.requests)


def test_maxlag_fault_has_the_real_shape(wiki_server):
    wiki_server.push_faults("maxlag")
    r = get(wiki_server)
    assert r.status_code == 200  # MediaWiki sends maxlag errors with HTTP 200
    assert r.headers["MediaWiki-API-Error"] == "maxlag"
    assert r.headers["Retry-After"] == str(wiki_server.retry_after)
    assert int(r.headers["X-Database-Lag"]) >= 5
    error = r.json()["error"]
    assert error["code"] == "maxlag" and error["lag"] > 5 and error["host"] and "seconds lagged" in error["info"]
    assert "query" not in r.json()
    assert "query" in get(wiki_server).json()


def test_persistent_lag_refuses_every_request_with_a_lower_maxlag(wiki_server):
    wiki_server.lag = 12
    assert get(wiki_server).json()["error"]["lag"] == 12
    assert get(wiki_server).headers["X-Database-Lag"] == "12"
    assert "query" in get(wiki_server, maxlag="15").json()
    assert "query" in get(wiki_server, maxlag=None).json()


def test_truncated_body_fails_fast_on_the_client(wiki_server):
    wiki_server.push_faults("truncated")
    started = time.monotonic()
    with pytest.raises((requests.exceptions.ChunkedEncodingError, requests.exceptions.JSONDecodeError)):
        get(wiki_server).json()
    assert time.monotonic() - started < 1
    assert "query" in get(wiki_server).json()


def test_reset_closes_without_answering(wiki_server):
    wiki_server.push_faults("reset")
    with pytest.raises(requests.exceptions.ConnectionError):
        get(wiki_server)
    assert get(wiki_server).status_code == 200 and wiki_server.count == 2


def test_stall_times_out_the_client_and_blocks_nothing(wiki_server):
    wiki_server.stall_seconds = 5.0  # far longer than the test: close() must cut it short
    wiki_server.push_faults("stall")
    with pytest.raises(requests.exceptions.ReadTimeout):
        requests.get(wiki_server.url, params=QUERY, timeout=(1, 0.2))
    assert get(wiki_server).status_code == 200  # served while the stalled request still waits
    started = time.monotonic()
    wiki_server.close()
    assert time.monotonic() - started < 1


def test_gzip_when_asked(wiki_server):
    r = requests.get(wiki_server.url, params=QUERY, timeout=TIMEOUT, headers={"Accept-Encoding": "gzip"})
    assert r.headers["Content-Encoding"] == "gzip" and len(r.json()["query"]["pages"]) == 20
    r = requests.get(wiki_server.url, params=QUERY, timeout=TIMEOUT, headers={"Accept-Encoding": "identity"})
    assert "Content-Encoding" not in r.headers and r.json()["batchcomplete"] is True
    assert wiki_server.gzip_requests == 1


def test_user_agent_is_recorded(wiki_server):
    requests.get(wiki_server.url, params=QUERY, timeout=TIMEOUT, headers={"User-Agent": "gpty2_wiki/0.1 (x@example.com)"})
    assert wiki_server.user_agents == ["gpty2_wiki/0.1 (x@example.com)"]


@pytest.mark.parametrize("overrides, code", [
    ({"action": "parse"}, "badvalue"),
    ({"generator": "allpages"}, "badvalue"),
    ({"grncontinue": "nonsense"}, "badcontinue"),
    ({"continue": "no-separator"}, "badcontinue"),
    ({"maxlag": "soon"}, "badinteger"),
])
def test_bad_requests_get_mediawiki_errors(wiki_server, overrides, code):
    r = get(wiki_server, **overrides)
    assert r.status_code == 200 and r.headers["MediaWiki-API-Error"] == code
    error = r.json()["error"]
    assert error["code"] == code and error["info"] and "docref" in error


def test_unknown_parameters_are_warnings_and_missing_action_is_the_help_page(wiki_server):
    body = get(wiki_server, frobnicate="1").json()
    assert body["warnings"]["main"]["warnings"] == "Unrecognized parameter: frobnicate."
    assert len(body["query"]["pages"]) == 20
    r = requests.get(wiki_server.url, timeout=TIMEOUT)
    assert r.headers["Content-Type"].startswith("text/html")


def test_push_faults_rejects_unknown_names(wiki_server):
    with pytest.raises(ValueError):
        wiki_server.push_faults("429", "teapot")
    assert wiki_server.pending_faults == []
    wiki_server.push_faults(*FAULTS[:2])
    assert wiki_server.pending_faults == list(FAULTS[:2])


def test_standalone_mode_serves_until_interrupted():
    script = Path(__file__).with_name("wiki_server.py")
    proc = subprocess.Popen([sys.executable, str(script), "--port", "0", "--quiet"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        url = line.split(" at ")[1].split()[0]
        assert url.startswith("http://127.0.0.1:") and url.endswith("/w/api.php")
        assert len(requests.get(url, params=QUERY, timeout=TIMEOUT).json()["query"]["pages"]) == 20
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)  # a bound, not a wait: it exits at once, unless the machine is swamped
    assert "served 1 requests" in proc.stderr.read()
