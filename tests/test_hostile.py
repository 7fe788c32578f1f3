"""Bad input never crashes the data path: random and hostile text and HTML, pathological articles."""
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gpty2_wiki as g
from wiki_server import WikiServer

TAGS = ["p", "b", "i", "a", "span", "div", "table", "tr", "td", "sup", "style", "script", "h2", "ul", "li",
        "math", "annotation", "small", "blockquote"]
CLASSES = ["reference", "IPA", "hatnote", "infobox", "mw-parser-output", "navbox", "geo", "mw-editsection", ""]

texts = st.text(alphabet=st.characters(codec="utf-8"), max_size=400)


@st.composite
def html(draw, depth=0):
    """Random, often malformed HTML built from the tags and classes Wikipedia uses."""
    parts = []
    for _ in range(draw(st.integers(0, 4))):
        kind = draw(st.integers(0, 3))
        if kind == 0 or depth > 2:
            parts.append(draw(texts))
        elif kind == 1:
            tag, cls = draw(st.sampled_from(TAGS)), draw(st.sampled_from(CLASSES))
            closed = draw(st.booleans())
            parts.append(f'<{tag} class="{cls}">{draw(html(depth + 1))}' + (f"</{tag}>" if closed else ""))
        elif kind == 2:
            parts.append(draw(st.sampled_from(["<", ">", "&amp;", "&#x0;", "&nbsp;", "<!--", "-->", "<![CDATA[",
                                               "(", ")", "[1]", "\u200b", "\ufeff", "\x00"])))
        else:
            parts.append(draw(st.sampled_from(["Dr. Who was a man.", " (/ˈæ/; born 1950) ", "U.S. Army. ",
                                               "c. 1900", "北京市", "Zeus (Ancient Greek: Ζεύς) is a god."])))
    return "".join(parts)


def in_vocab(s):
    return all(c in g.STOI for c in s)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(html())
def test_clean_html_accepts_anything(doc):
    text = g.clean_html(doc)
    assert isinstance(text, str)
    answer = g.make_answer(text)
    assert in_vocab(answer) and len(answer) <= g.ANSWER_CHARS


@settings(max_examples=300, deadline=None)
@given(title=texts, text=texts, description=texts)
def test_format_qa_returns_vocab_text_or_skips(title, text, description):
    out = g.format_qa(g.Article(title=title or "x", text=text, description=description))
    assert out == "" or (in_vocab(out) and out.startswith("Q: ") and out.endswith("\n\n") and "\nA: " in out)


@settings(max_examples=100, deadline=None)
@given(st.text(alphabet="().;, abcXYZ/[]ˈ:-", max_size=200))
def test_parentheses_always_balance(text):
    tidy = g.tidy_parentheses(text)
    depth = 0
    for c in tidy:
        depth += (c == "(") - (c == ")")
        assert depth >= 0
    assert depth == 0


def test_pathological_articles_are_skipped_with_a_counted_reason():
    long_text = "<p>" + "Huge is a very long article about nothing in particular. " * 20000 + "</p>"
    pages = [
        dict(pageid=1, ns=0, title="Empty", extract=""),
        dict(pageid=2, ns=0, title="Huge", extract=long_text),
        dict(pageid=3, ns=0, title="Beijing script", extract="<p>" + "北京是中华人民共和国的首都。" * 20 + "</p>"),
        dict(pageid=4, ns=0, title="Only a table", extract="<table><tr><td>1</td><td>2</td></tr></table>"),
        dict(pageid=5, ns=0, title="Fine", extract="<p>Fine is a perfectly ordinary article. It has two sentences "
                                                   "that are long enough to be an answer.</p>"),
    ]
    with WikiServer(pages=pages) as server:
        skipped = {}
        batch = next(g.fetch_batches(g.make_session(), server.url, skipped=skipped))
    assert [r["title"] for r in batch] == ["Huge", "Fine"]
    assert len(batch[0]["answer"]) <= g.ANSWER_CHARS
    assert skipped == {"empty": 2, "non-Latin script": 1}
