"""A local stand-in for the MediaWiki Action API (https://en.wikipedia.org/w/api.php), for tests.

It answers the query gpty2_wiki's fetcher makes (generator=random with prop=extracts|pageprops|
coordinates|info|categories|description) from a fixed pool of pages in tests/data/wiki/pages.json,
with the reply shapes, continuation rules and error shapes of the real API, plus injectable
faults (rate limits, maxlag, broken bodies, stalls, resets). Standard library only; it binds to
127.0.0.1 and never talks to any other host.

    server = WikiServer(seed=0)          # listening at once on 127.0.0.1:<free port>
    server.push_faults("429", "maxlag")  # the next two requests fail, then normal answers resume
    requests.get(server.url, params={...})
    server.close()

    python tests/wiki_server.py --port 8765   # serve until Ctrl-C, for manual end-to-end runs

What the real API does, and this mock copies (sources: MediaWiki core includes/api/ApiMain.php,
ApiContinuationManager.php, ApiQueryRandom.php; extensions TextExtracts, GeoData; the pages
API:Continue and Manual:Maxlag_parameter on mediawiki.org):

* Continuation. A reply whose prop modules did not finish has no "batchcomplete" and a "continue"
  object holding each unfinished module's parameter (clcontinue, cocontinue, excontinue), the
  generator's *non*-continue parameter (grncontinue that reproduces the same page set) and
  "continue": "grncontinue||<finished modules>". Modules named after "||" are skipped on the
  next request, so continuation replies carry only pageid/ns/title plus the unfinished props.
  Once every prop module is done the reply has "batchcomplete": true *and still* a "continue"
  with the generator's next grncontinue and "continue": "grncontinue||" -- a random generator
  can always go on, so a client must stop at batchcomplete, not at "no continue". Only when the
  pool is exhausted (grnlimit >= pool size) is there no "continue" at all.
* Errors are HTTP 200 with {"error": {"code", "info", "docref"}, "servedby"} and a
  "MediaWiki-API-Error: <code>" header. maxlag, too, is HTTP 200 (T33156) with
  "Retry-After: max(maxlag, 5)" and "X-Database-Lag: <int lag>" headers and error fields
  host, lag, type. Here Retry-After is `retry_after` (default 1 s) so that tests stay fast.
* Limits: cllimit defaults to 10 (max 500), colimit to 10 (max 500), exlimit to 20 (max 20,
  and 1 without exintro); boolean parameters are true when present, whatever their value
  (exintro=0 still means intro only).
* formatversion=2 gives query.pages as a list and true/false booleans; without it (version 1)
  pages is an object keyed by page id and a true flag is "" (false flags are left out).
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import re
import signal
import socket
import struct
import sys
import threading
from collections import deque
from html.parser import HTMLParser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qsl, quote, urlsplit

DATA_DIR = Path(__file__).resolve().parent / "data" / "wiki"
API_PATH = "/w/api.php"
FAULTS = ("429", "503", "maxlag", "truncated", "html_error", "missing_fields", "stall", "reset")

DOCREF = ("See https://en.wikipedia.org/w/api.php for API usage. Subscribe to the mediawiki-api-announce "
          "mailing list at &lt;https://lists.wikimedia.org/postorius/lists/mediawiki-api-announce.lists."
          "wikimedia.org/&gt; for notice of API deprecations and breaking changes.")
SERVEDBY = "mw-api-mock.local"
LAGGED_HOST = "10.64.48.35"
# grncontinue as ApiQueryRandom writes it: "<rand>|<start page_random>|<start page_id>|<end flag>"
GRNCONTINUE_RE = re.compile(r"^0\.\d+\|0\.\d+\|\d+\|[01]$")
PROP_MODULES = ("extracts", "pageprops", "coordinates", "info", "categories", "description")
KNOWN_PARAMS = set("""
action format formatversion maxlag smaxage maxage assert assertuser requestid servedby curtimestamp
responselanginfo origin crossorigin uselang variant errorformat errorlang errorsuselocal utf8 ascii
prop list meta indexpageids export exportnowrap exportschema iwurl continue rawcontinue titles pageids
revids generator redirects converttitles
grnnamespace grnfilterredir grnredirect grnlimit grncontinue
exchars exsentences exlimit exintro explaintext exsectionformat excontinue
ppcontinue ppprop
colimit cocontinue coprop coprimary codistancefrompoint codistancefrompage
inprop intestactions intestactionsdetail intestactionsautocreate inpreloadcontent inpreloadcustom
inpreloadparams inpreloadnewsection incontinue
clprop clshow cllimit clcontinue clcategories cldir
desccontinue descprefersource
""".split())

HTML_503 = """<!DOCTYPE html>
<html lang="en">
<meta charset="utf-8">
<title>Wikimedia Error</title>
<style>body{font-family:sans-serif}</style>
<div class="content" role="main">
<h1>Error</h1>
<p>Our servers are currently under maintenance or experiencing a technical issue. Please <a href="" title="Reload this page" onclick="window.location.reload(false); return false">try again</a> in a few&nbsp;minutes.</p>
<p>See the error message at the bottom of this page for more&nbsp;information.</p>
</div>
<div class="footer"><p>If you report this error to the Wikimedia System Administrators, please include the details below.</p><p class="text-muted"><code>Request served via cp3066 cp3066, Varnish XID 1018956034<br>Upstream caches: cp3066 int<br>Error: 503, Backend fetch failed at Mon, 01 Jan 2024 00:00:00 GMT</code></p></div>
</html>
"""
HTML_429 = """<!DOCTYPE html>
<html lang="en">
<meta charset="utf-8">
<title>Wikimedia Error</title>
<div class="content" role="main">
<h1>Error</h1>
<p>Too many requests. Please respect our robot policy <a href="https://w.wiki/4wJS">https://w.wiki/4wJS</a> and contact the operators if you need a higher rate.</p>
</div>
</html>
"""
HTML_INTERNAL_ERROR = """<!DOCTYPE html>
<html class="client-nojs" lang="en" dir="ltr">
<head><meta charset="UTF-8"><title>Internal error - Wikipedia</title></head>
<body><div id="content" class="mw-body" role="main"><h1 id="firstHeading">Internal error</h1>
<div class="mw-body-content"><p>[ZZzzAbCdEfGhIjKlMnOpQrSt] 2024-01-01 00:00:00: Fatal exception of type "Wikimedia\\Rdbms\\DBConnectionError"</p></div>
</div></body></html>
"""
HTML_HELP = """<!DOCTYPE html>
<html lang="en"><head><meta charset="UTF-8"><title>MediaWiki API help - Wikipedia</title></head>
<body><h1>Main module</h1><p>This is a mock of the MediaWiki Action API. Pass action=query&amp;format=json.</p></body></html>
"""
HTML_404 = "<!DOCTYPE html>\n<html lang=\"en\"><title>Not Found</title><h1>Not Found</h1></html>\n"


def load_pages(path: str | Path | None = None) -> list[dict]:
    """The page pool: a JSON list of formatversion=2 page objects (see tests/data/wiki/README.md).
    An "extract" of the form {"file": "name.html"} is read from that file beside pages.json."""
    path = Path(path) if path else DATA_DIR / "pages.json"
    with open(path, encoding="utf-8") as f:
        pages = json.load(f)
    for page in pages:
        for key in ("extract", "extract_full"):
            if isinstance(page.get(key), dict):
                page[key] = (path.parent / page[key]["file"]).read_text(encoding="utf-8")
    return pages


class ApiError(Exception):
    """Becomes the MediaWiki error reply: HTTP 200, {"error": {...}}, MediaWiki-API-Error header."""

    def __init__(self, code: str, info: str, **extra):
        super().__init__(info)
        self.code, self.info, self.extra = code, info, extra


class _TextOnly(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []

    def handle_data(self, data):
        self.parts.append(data)


def html_to_text(fragment: str) -> str:
    """Roughly what explaintext=1 returns: the text, tags dropped, entities decoded."""
    parser = _TextOnly()
    parser.feed(fragment)
    parser.close()
    text = "".join(parser.parts).replace("\xa0", " ")
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def _dbkey(title: str) -> str:
    """"Category:Living people" -> "Living_people": the form clcontinue and cl_to sort use."""
    return title.split(":", 1)[1].replace(" ", "_") if ":" in title else title.replace(" ", "_")


def _accepts_gzip(header: str) -> bool:
    for item in header.split(","):
        name, _, params = item.strip().partition(";")
        if name.strip().lower() == "gzip":
            return params.replace(" ", "").lower() not in ("q=0", "q=0.0", "q=0.00", "q=0.000")
    return False


def _to_formatversion1(value):
    """formatversion=1 booleans: true -> "" and false -> key left out."""
    if isinstance(value, dict):
        return {k: ("" if v is True else _to_formatversion1(v)) for k, v in value.items() if v is not False}
    if isinstance(value, list):
        return [_to_formatversion1(v) for v in value]
    return value


class _Batch:
    """One random draw: the page ids in reply order and the grncontinue of the draw after it."""

    def __init__(self, ids: list[int], next_token: str | None):
        self.ids, self.next_token = ids, next_token


class WikiServer:
    """A threaded HTTP server on 127.0.0.1 answering like https://en.wikipedia.org/w/api.php.

    Attributes tests read or set (all thread-safe to read once the requests under test are done):
      url            "http://127.0.0.1:PORT/w/api.php"
      requests       list of dicts, the parsed parameters of every request received (faulted ones too)
      user_agents    list of the User-Agent header of every request (None where absent)
      gzip_requests  how many requests sent Accept-Encoding: gzip
      count          len(requests)
      seed           setting it restarts the random generator (and forgets earlier draws)
      cl_limit       most categories in one reply, over all pages (also capped by the request's cllimit)
      co_limit       most coordinates in one reply; None = only the request's colimit (default 10)
      retry_after    seconds sent in Retry-After with the 429 and maxlag faults
      stall_seconds  how long the "stall" fault waits before answering (close() cuts it short)
      lag            None, or seconds of replication lag: every request whose maxlag is below it
                     gets the maxlag error (to test giving up); the "maxlag" fault forces one
      wiki_base      prefix of fullurl/canonicalurl; the mock's own host, so nothing points outside
    """

    def __init__(self, pages: list[dict] | None = None, *, seed: int = 0, cl_limit: int = 1_000_000,
                 co_limit: int | None = None, retry_after: int = 1, stall_seconds: float = 5.0,
                 lag: float | None = None, port: int = 0, verbose: bool = False):
        self.pages = [dict(p) for p in (load_pages() if pages is None else pages)]
        self._by_id = {p["pageid"]: p for p in self.pages}
        self._by_title = {p["title"]: p for p in self.pages}
        self._lock = threading.Lock()
        self._faults: deque[str] = deque()
        self._closing = threading.Event()
        self._connections: set[socket.socket] = set()
        self.requests: list[dict] = []
        self.user_agents: list[str | None] = []
        self.gzip_requests = 0
        self.cl_limit = cl_limit
        self.co_limit = co_limit
        self.retry_after = retry_after
        self.stall_seconds = stall_seconds
        self.lag = lag
        self.verbose = verbose
        self.seed = seed
        self._httpd = _HTTPServer(("127.0.0.1", port), _Handler)
        self._httpd.wiki = self
        self.port = self._httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}{API_PATH}"
        self.wiki_base = f"http://127.0.0.1:{self.port}/wiki/"
        # A short poll interval so that close() (which waits for serve_forever to notice) is quick.
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02},
                                        name=f"wiki-server-{self.port}", daemon=True)
        self._thread.start()
        self._closed = False

    # --- test-facing API -------------------------------------------------------------------------
    @property
    def seed(self) -> int:
        return self._seed

    @seed.setter
    def seed(self, value: int) -> None:
        with self._lock:
            self._seed = value
            self._rng = random.Random(value)
            self._batches: dict[str, _Batch] = {}

    @property
    def count(self) -> int:
        return len(self.requests)

    @property
    def pending_faults(self) -> list[str]:
        with self._lock:
            return list(self._faults)

    def push_faults(self, *faults: str | int) -> None:
        """Queue faults; each one is used up by the next request, in order."""
        names = [str(f) for f in faults]
        unknown = [n for n in names if n not in FAULTS]
        if unknown:
            raise ValueError(f"unknown fault(s) {unknown}; known: {', '.join(FAULTS)}")
        with self._lock:
            self._faults.extend(names)

    def close(self) -> None:
        """Stop serving, release stalled requests and drop open (keep-alive) connections."""
        if self._closed:
            return
        self._closed = True
        self._closing.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        with self._lock:
            connections = list(self._connections)
        for conn in connections:  # wakes handler threads blocked reading an idle keep-alive socket
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._thread.join(timeout=5)

    def __enter__(self) -> "WikiServer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- bookkeeping called by the handler -------------------------------------------------------
    def _record(self, params: dict, headers) -> str | None:
        """Log the request and take the next fault, atomically so the order is the arrival order."""
        with self._lock:
            self.requests.append(params)
            self.user_agents.append(headers.get("User-Agent"))
            if _accepts_gzip(headers.get("Accept-Encoding", "")):
                self.gzip_requests += 1
            return self._faults.popleft() if self._faults else None

    # --- the API ---------------------------------------------------------------------------------
    def respond(self, p: dict) -> tuple[int, dict, dict | str]:
        """(status, headers, body) for the parameters p; body is a JSON object or an HTML string."""
        action = p.get("action")
        if action is None or action == "help":
            return 200, {"Content-Type": "text/html; charset=utf-8"}, HTML_HELP
        try:
            if action != "query":
                raise ApiError("badvalue", f'Unrecognized value for parameter "action": {action}.')
            if p.get("format") != "json":
                raise ApiError("badvalue", f'This mock only speaks format=json, not "{p.get("format")}".')
            maxlag = p.get("maxlag")
            if maxlag is not None:
                maxlag = self._int(maxlag, "maxlag")
                if self.lag is not None and self.lag > maxlag:
                    return self._maxlag_reply(p, self.lag)
            body = self._query(p)
        except ApiError as e:
            return self._error_reply(p, e)
        return 200, {"Content-Type": "application/json; charset=utf-8"}, self._finish(p, body)

    def _finish(self, p: dict, body: dict) -> dict:
        if p.get("formatversion") in ("2", "latest"):
            return body
        # formatversion=1: pages keyed by id, warnings and docrefs under "*", flags as ""
        pages = body.get("query", {}).get("pages")
        if pages is not None:
            body["query"]["pages"] = {str(pg.get("pageid", -1 - i)): pg for i, pg in enumerate(pages)}
        for module, w in body.get("warnings", {}).items():
            body["warnings"][module] = {"*": w["warnings"]}
        if "error" in body:
            body["error"]["*"] = body["error"].pop("docref")
        return _to_formatversion1(body)

    def _error_reply(self, p: dict, e: ApiError, headers: dict | None = None) -> tuple[int, dict, dict]:
        body = {"error": {"code": e.code, "info": e.info, **e.extra, "docref": DOCREF}, "servedby": SERVEDBY}
        hdrs = {"Content-Type": "application/json; charset=utf-8", "MediaWiki-API-Error": e.code,
                "Cache-Control": "private, must-revalidate, max-age=0", **(headers or {})}
        return 200, hdrs, self._finish(p, body)

    def _maxlag_reply(self, p: dict, lag: float) -> tuple[int, dict, dict]:
        # ApiMain::checkMaxLag: Retry-After max(maxlag, 5) (here retry_after), X-Database-Lag int(lag).
        lag = round(float(lag), 2)
        e = ApiError("maxlag", f"Waiting for {LAGGED_HOST}: {lag:g} seconds lagged.",
                     host=LAGGED_HOST, lag=lag, type="db")
        return self._error_reply(p, e, {"Retry-After": str(self.retry_after), "X-Database-Lag": str(int(lag))})

    @staticmethod
    def _int(value: str, name: str) -> int:
        try:
            return int(value)
        except ValueError:
            raise ApiError("badinteger", f'Invalid value "{value}" for integer parameter "{name}".') from None

    def _limit(self, p: dict, name: str, default: int, maximum: int, warn: list) -> int:
        raw = p.get(name)
        if raw is None:
            return default
        if raw == "max":
            return maximum
        value = self._int(raw, name)
        if value > maximum:
            warn.append(f'"{name}" may not be over {maximum} (set to {maximum}) for users.')
            return maximum
        if value < 1:
            warn.append(f'"{name}" may not be less than 1 (set to 1).')
            return 1
        return value

    def _query(self, p: dict) -> dict:
        warnings: dict[str, list[str]] = {}

        def warn(module: str) -> list:
            return warnings.setdefault(module, [])

        unknown = sorted(k for k in p if k not in KNOWN_PARAMS)
        if unknown:
            s = "s" if len(unknown) > 1 else ""
            warn("main").append(f"Unrecognized parameter{s}: {', '.join(unknown)}.")
        props: list[str] = []
        for name in (p.get("prop") or "").split("|"):
            if name in PROP_MODULES and name not in props:
                props.append(name)
            elif name and name not in props:
                warn("query").append(f'Unrecognized value for parameter "prop": {name}.')
        for key in ("list", "meta"):
            if p.get(key):
                warn("query").append(f'Unrecognized value for parameter "{key}": {p[key]}.')

        # ApiContinuationManager: "continue" is "<generator params>||<modules already finished>"
        skip: set[str] = set()
        generator_done = False
        generator_param_keys: list[str] = []
        cont = p.get("continue", "")
        if cont:
            parts = cont.split("||")
            if len(parts) != 2:
                raise ApiError("badcontinue", "Invalid continue param. You should pass the original value "
                                              "returned by the previous query.")
            generator_done = parts[0] == "-"
            skip = {m for m in parts[1].split("|") if m}
            if generator_done:
                skip |= set(props)
            else:
                generator_param_keys = [k for k in parts[0].split("|") if k]

        # The page set
        same_token = next_token = None
        pages: list[dict] = []  # missing-title entries first, then the good pages
        ids: list[int] = []
        generator = p.get("generator")
        if generator is not None:
            if generator != "random":
                raise ApiError("badvalue", f'Unrecognized value for parameter "generator": {generator}.')
            if not generator_done:
                ids, same_token, next_token = self._random_batch(p, warn("random"))
        elif p.get("pageids") or p.get("titles"):
            for pid in (p.get("pageids") or "").split("|"):
                if pid and self._int(pid, "pageids") in self._by_id:
                    ids.append(int(pid))
                elif pid:
                    pages.append({"pageid": int(pid), "missing": True})
            for title in (p.get("titles") or "").split("|"):
                if title and title in self._by_title:
                    ids.append(self._by_title[title]["pageid"])
                elif title:
                    pages.append({"ns": 0, "title": title, "missing": True})

        out = {pid: {"pageid": pid, "ns": self._by_id[pid].get("ns", 0), "title": self._by_id[pid]["title"]}
               for pid in ids}
        unfinished: dict[str, dict[str, str]] = {}
        for module in props:
            if module not in skip:
                getattr(self, f"_prop_{module}")(ids, p, out, unfinished, warn(module))

        # Continuation, as ApiContinuationManager::getContinuation builds it
        finished = [m for m in props if m not in unfinished]
        data: dict[str, str] = {}
        batchcomplete = False
        if unfinished:
            for kv in unfinished.values():
                data.update(kv)
            generator_params: dict[str, str] = {}
            if same_token is not None:
                generator_params["grncontinue"] = same_token  # reproduces this very page set
            for key in generator_param_keys:
                if key in p and key not in generator_params:
                    generator_params[key] = p[key]
            for key, value in generator_params.items():
                data.setdefault(key, value)
            generator_keys = "|".join(generator_params)
        elif next_token is not None:
            data["grncontinue"] = next_token
            finished = []  # the next generator batch restarts every prop module
            generator_keys = "grncontinue"
            batchcomplete = True
        else:
            generator_keys = "-"
            batchcomplete = True
        if data or generator_keys != "-":
            data["continue"] = generator_keys + "||" + "|".join(finished)

        body: dict = {}
        if batchcomplete:
            body["batchcomplete"] = True
        if data:
            body["continue"] = data
        warnings = {m: w for m, w in warnings.items() if w}
        if warnings:
            body["warnings"] = {m: {"warnings": "\n".join(w)} for m, w in warnings.items()}
        pages += [out[pid] for pid in ids]
        if pages:
            body["query"] = {"pages": pages}
        return body

    # --- the random generator --------------------------------------------------------------------
    def _rand(self) -> str:
        return f"0.{self._rng.randrange(10 ** 9):09d}"

    def _random_batch(self, p: dict, warn: list) -> tuple[list[int], str, str | None]:
        namespaces = {0}
        if p.get("grnnamespace"):
            try:
                namespaces = {int(n) for n in p["grnnamespace"].split("|")}
            except ValueError:
                raise ApiError("badvalue", f'Unrecognized value for parameter "grnnamespace": '
                                           f'{p["grnnamespace"]}.') from None
        filterredir = p.get("grnfilterredir", "nonredirects")
        if filterredir not in ("all", "redirects", "nonredirects"):
            raise ApiError("badvalue", f'Unrecognized value for parameter "grnfilterredir": {filterredir}.')
        limit = self._limit(p, "grnlimit", 1, 500, warn)
        # the pool holds no redirects, so "redirects" draws from nothing
        eligible = [pg["pageid"] for pg in self.pages
                    if pg.get("ns", 0) in namespaces and filterredir != "redirects"]
        token = p.get("grncontinue")
        with self._lock:
            if token is not None:
                if not GRNCONTINUE_RE.match(token):
                    raise ApiError("badcontinue", "Invalid continue param. You should pass the original "
                                                  "value returned by the previous query.")
                batch = self._batches.get(token)
                if batch is None:  # a "next batch" token: draw now, and the same set if asked again
                    batch = self._batches[token] = self._draw(eligible, limit)
            else:
                r = self._rand()
                token = f"{r}|{r}|0|0"
                batch = self._batches[token] = self._draw(eligible, limit)
        return list(batch.ids), token, batch.next_token

    def _draw(self, eligible: list[int], limit: int) -> _Batch:
        """Without replacement within the batch; the whole pool (shuffled) when it is too small."""
        if len(eligible) <= limit:
            ids = list(eligible)
            self._rng.shuffle(ids)
            return _Batch(ids, None)  # the generator wrapped around: nothing left to continue with
        ids = self._rng.sample(eligible, limit)
        return _Batch(ids, f"{self._rand()}|{self._rand()}|{self._rng.choice(eligible)}|0")

    # --- prop modules: each fills `out` and, when cut short, unfinished[module] ------------------
    def _prop_extracts(self, ids, p, out, unfinished, warn):
        limit = self._limit(p, "exlimit", 20, 20, warn)
        intro = "exintro" in p  # MediaWiki booleans are true when present, even "exintro=0"
        if limit > 1 and not intro:
            limit = 1
            warn.append("exlimit was too large for a whole article extracts request, lowered to 1.")
        start = self._int(p.get("excontinue", "0"), "excontinue")
        if not 0 <= start <= len(ids):
            raise ApiError("badcontinue", "Invalid continue param. You should pass the original value "
                                          "returned by the previous query.")
        for n, pid in enumerate(ids[start:]):
            if n >= limit:
                unfinished["extracts"] = {"excontinue": str(start + n)}
                break
            page = self._by_id[pid]
            text = page.get("extract", "") if intro else page.get("extract_full", page.get("extract", ""))
            out[pid]["extract"] = html_to_text(text) if "explaintext" in p else text

    def _prop_pageprops(self, ids, p, out, unfinished, warn):
        wanted = set(p["ppprop"].split("|")) if p.get("ppprop") else None
        for pid in ids:
            props = {k: v for k, v in self._by_id[pid].get("pageprops", {}).items()
                     if wanted is None or k in wanted}
            if props:
                out[pid]["pageprops"] = props

    def _prop_coordinates(self, ids, p, out, unfinished, warn):
        limit = self._limit(p, "colimit", 10, 500, warn)  # GeoData's default is 10
        if self.co_limit is not None:
            limit = max(1, min(limit, self.co_limit))
        primary = p.get("coprimary", "primary")
        if primary not in ("primary", "secondary", "all"):
            raise ApiError("badvalue", f'Unrecognized value for parameter "coprimary": {primary}.')
        extra = [x for x in (p.get("coprop") or "globe").split("|") if x]
        rows = []  # ordered as GeoData orders them: by page id, then coordinate id
        for pid in sorted(ids):
            for gt_id, c in enumerate(self._by_id[pid].get("coordinates", [])):
                is_primary = c.get("primary", True)
                if primary == "all" or is_primary == (primary == "primary"):
                    rows.append((pid, gt_id, c))
        start = p.get("cocontinue")
        if start is not None:
            m = re.fullmatch(r"(\d+)\|(\d+)", start)
            if not m:
                raise ApiError("badcontinue", "Invalid continue param. You should pass the original value "
                                              "returned by the previous query.")
            rows = [r for r in rows if (r[0], r[1]) >= (int(m[1]), int(m[2]))]
        for n, (pid, gt_id, c) in enumerate(rows):
            if n >= limit:
                unfinished["coordinates"] = {"cocontinue": f"{pid}|{gt_id}"}
                break
            vals = {"lat": c["lat"], "lon": c["lon"], "primary": c.get("primary", True)}
            vals.update({k: c[k] for k in extra if k in c})
            out[pid].setdefault("coordinates", []).append(vals)

    def _prop_info(self, ids, p, out, unfinished, warn):
        inprop = set((p.get("inprop") or "").split("|"))
        for pid in ids:
            page = self._by_id[pid]
            info = out[pid]
            info.update(contentmodel="wikitext", pagelanguage="en", pagelanguagehtmlcode="en",
                        pagelanguagedir="ltr", touched=page.get("touched", "2024-05-01T12:00:00Z"),
                        lastrevid=page.get("lastrevid", pid * 7 + 1000000),
                        length=page.get("length", 40 * len(page.get("extract", "")) + 500))
            if "url" in inprop:
                path = quote(page["title"].replace(" ", "_"), safe="/:(),'!*@$;")
                info["fullurl"] = self.wiki_base + path
                info["editurl"] = self.wiki_base.replace("/wiki/", "/w/index.php") + \
                    f"?title={path}&action=edit"
                info["canonicalurl"] = self.wiki_base + path

    def _prop_categories(self, ids, p, out, unfinished, warn):
        show = {s for s in (p.get("clshow") or "").split("|") if s}
        if not show <= {"hidden", "!hidden"}:
            raise ApiError("badvalue", f'Unrecognized value for parameter "clshow": {p["clshow"]}.')
        if show == {"hidden", "!hidden"}:
            raise ApiError("show", "Incorrect parameter - mutually exclusive values may not be supplied.")
        clprop = set((p.get("clprop") or "").split("|"))
        only = set(p["clcategories"].split("|")) if p.get("clcategories") else None
        limit = max(1, min(self._limit(p, "cllimit", 10, 500, warn), self.cl_limit))
        rows = []  # ordered as MediaWiki orders categorylinks: by page id, then category key
        for pid in ids:
            for cat in self._by_id[pid].get("categories", []):
                hidden = cat.get("hidden", False)
                if ("hidden" in show and not hidden) or ("!hidden" in show and hidden):
                    continue
                if only is not None and cat["title"] not in only:
                    continue
                rows.append((pid, _dbkey(cat["title"]), cat))
        rows.sort(key=lambda r: (r[0], r[1]))
        start = p.get("clcontinue")
        if start is not None:
            spid, sep, skey = start.partition("|")
            if not sep or not spid.isdigit():
                raise ApiError("badcontinue", "Invalid continue param. You should pass the original value "
                                              "returned by the previous query.")
            rows = [r for r in rows if (r[0], r[1]) >= (int(spid), skey)]
        for n, (pid, key, cat) in enumerate(rows):
            if n >= limit:
                unfinished["categories"] = {"clcontinue": f"{pid}|{key}"}
                break
            entry = {"ns": 14, "title": cat["title"]}
            if "hidden" in clprop and cat.get("hidden"):
                entry["hidden"] = True
            out[pid].setdefault("categories", []).append(entry)

    def _prop_description(self, ids, p, out, unfinished, warn):
        for pid in ids:
            page = self._by_id[pid]
            if page.get("description"):
                out[pid]["description"] = page["description"]
                out[pid]["descriptionsource"] = page.get("descriptionsource", "local")


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True     # a stalled or keep-alive handler must never keep the process alive
    block_on_close = False
    allow_reuse_address = True
    wiki: WikiServer


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"   # keep-alive, as requests.Session uses it against Wikipedia
    server_version = "mw-api-mock/1.0"
    sys_version = ""
    timeout = 30                    # an idle keep-alive connection is dropped after this

    server: _HTTPServer

    def setup(self):
        super().setup()
        with self.server.wiki._lock:
            self.server.wiki._connections.add(self.connection)

    def finish(self):
        with self.server.wiki._lock:
            self.server.wiki._connections.discard(self.connection)
        try:
            super().finish()
        except OSError:
            pass

    def version_string(self):
        return self.server_version

    def log_message(self, format, *args):
        if self.server.wiki.verbose:
            super().log_message(format, *args)

    def do_GET(self):
        self._handle(urlsplit(self.path).query)

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode("utf-8", "replace") if length else ""
        query = urlsplit(self.path).query
        self._handle(query + "&" + body if query and body else query or body)

    def _handle(self, query: str) -> None:
        wiki = self.server.wiki
        params = dict(parse_qsl(query, keep_blank_values=True))  # the last of repeated keys wins, as in PHP
        fault = wiki._record(params, self.headers)
        gz = _accepts_gzip(self.headers.get("Accept-Encoding", ""))
        if fault == "reset":
            return self._reset()
        if fault == "429":
            return self._send(429, {"Content-Type": "text/html; charset=utf-8",
                                    "Retry-After": str(wiki.retry_after)}, HTML_429, gz)
        if fault == "503":
            return self._send(503, {"Content-Type": "text/html; charset=utf-8"}, HTML_503, gz)
        if fault == "html_error":
            return self._send(200, {"Content-Type": "text/html; charset=utf-8"}, HTML_INTERNAL_ERROR, gz)
        if fault == "missing_fields":
            # what a query whose generator found nothing looks like: no "query", no "pages"
            return self._send(200, {"Content-Type": "application/json; charset=utf-8"},
                              wiki._finish(params, {"batchcomplete": True}), gz)
        if fault == "maxlag":
            asked = params.get("maxlag", "")
            lag = wiki.lag if wiki.lag is not None else (int(asked) if asked.isdigit() else 5) + 2.5
            return self._send(*wiki._maxlag_reply(params, lag), gz)
        if urlsplit(self.path).path != API_PATH:
            return self._send(404, {"Content-Type": "text/html; charset=utf-8"}, HTML_404, gz)
        # The reply is decided on arrival, so random draws follow arrival order even when stalled.
        status, headers, body = wiki.respond(params)
        if fault == "stall":
            if wiki._closing.wait(wiki.stall_seconds):
                self.close_connection = True
                return
        if fault == "truncated":
            return self._send_truncated(status, headers, body)
        self._send(status, headers, body, gz)

    def _encode(self, body) -> bytes:
        if isinstance(body, str):
            return body.encode("utf-8")
        return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")

    def _send(self, status: int, headers: dict, body, gz: bool) -> None:
        data = self._encode(body)
        headers = {"Cache-Control": "private, must-revalidate, max-age=0",
                   "X-Content-Type-Options": "nosniff", "Vary": "Accept-Encoding", **headers}
        if gz:
            data = gzip.compress(data, compresslevel=5)
            headers["Content-Encoding"] = "gzip"
        headers["Content-Length"] = str(len(data))
        try:
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)
        except OSError:  # the client gave up (timed out, closed): nothing to do
            self.close_connection = True

    def _send_truncated(self, status: int, headers: dict, body) -> None:
        """Headers promising the whole (uncompressed) JSON, half of it, then the connection closed:
        the client sees an incomplete read (requests: ChunkedEncodingError) or broken JSON."""
        data = self._encode(body)
        self.close_connection = True
        try:
            self.send_response(status)
            for name, value in {**headers, "Content-Length": str(len(data))}.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def _reset(self) -> None:
        """Close without a byte of reply; SO_LINGER 0 makes the close a TCP RST."""
        self.close_connection = True
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
        except OSError:
            pass


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Serve a mock MediaWiki Action API on 127.0.0.1.")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cl-limit", type=int, default=1_000_000, help="most categories in one reply")
    parser.add_argument("--faults", default="", help=f"comma-separated faults for the first requests: "
                                                     f"{', '.join(FAULTS)}")
    parser.add_argument("--stall-seconds", type=float, default=60.0)
    parser.add_argument("--quiet", action="store_true", help="do not log each request")
    args = parser.parse_args(argv)
    server = WikiServer(seed=args.seed, cl_limit=args.cl_limit, port=args.port,
                        stall_seconds=args.stall_seconds, verbose=not args.quiet)
    if args.faults:
        server.push_faults(*[f.strip() for f in args.faults.split(",") if f.strip()])
    # Ctrl-C stops it even when launched from a script's background job, which starts with SIGINT ignored
    signal.signal(signal.SIGINT, signal.default_int_handler)
    print(f"mock MediaWiki API with {len(server.pages)} pages at {server.url} (Ctrl-C to stop)", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
        print(f"served {server.count} requests", file=sys.stderr)


if __name__ == "__main__":
    main()
