"""Checks every offline article's Q&A against the formatting rules and prints the counts.

    python tests/corpus_report.py            # the table: rule -> answers breaking it
    python tests/corpus_report.py --show 5   # plus up to 5 examples of each

Also imported by test_corpus.py, which holds the whole corpus to under 1% per rule.
"""
import argparse
import collections
import os
import re
import sys
import unicodedata

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import gpty2_wiki as g  # noqa: E402

IPA = re.compile(r"[\u0250-\u02af]|/[^/ ]*[ˈˌː][^/ ]*/")


def answer_problems(answer: str, max_chars: int = g.ANSWER_CHARS) -> list[str]:
    """The rules an answer may break, by name (empty list = clean)."""
    problems = []
    if len(answer) > max_chars:
        problems.append("longer than ANSWER_CHARS")
    if not re.search(r"[.!?][\"')\]]*$", answer):
        problems.append("not cut at a sentence end")
    if re.search(r"\b(e\.g|i\.e|Dr|St|Mr|Mrs|Mt|c|ca|U\.S|U\.K|[A-Z])\.$", answer):
        problems.append("cut after an abbreviation or initial")
    if re.search(r"\(\s*[;,:]?\s*\)|\(\s*[;,]|[;,]\s*\)", answer):
        problems.append("empty or broken parentheses")
    if answer.count("(") != answer.count(")"):
        problems.append("unbalanced parentheses")
    if re.search(r"\([^()]*(\bpronounced\b|\blisten\b|\b[A-Z]{2,}[a-z]*-[a-z]+)[^()]*\)", answer) or IPA.search(answer):
        problems.append("pronunciation guide")
    if any(c not in g.STOI for c in answer):
        problems.append("characters outside VOCAB")
    if re.search(r"\s[,.;:]|\s{2,}", answer):
        problems.append("stray whitespace")
    return problems


def question_problems(question: str) -> list[str]:
    problems = []
    if not re.fullmatch(r"(Who|What|Where) (is|are) \S.*\?", question):
        problems.append("question not in the form '(Who|What|Where) is X?'")
    return problems


def report(show: int = 0) -> dict:
    articles = g.load_offline_articles()
    chars = collections.Counter()
    counts, examples, kinds = collections.Counter(), collections.defaultdict(list), collections.Counter()
    answers = skipped = 0
    for a in articles:
        chars.update(unicodedata.normalize("NFKC", a.text))
        r = g.qa_record(a)
        if r is None:
            skipped += 1
            continue
        answers += 1
        kinds[r["kind"]] += 1
        for p in answer_problems(r["answer"]) + question_problems(r["question"]):
            counts[p] += 1
            if len(examples[p]) < show:
                examples[p].append(f"{a.title}: {r['question']} | {r['answer']}")
    # a character is dropped when normalisation (NFKC, anyascii) leaves nothing of it in the vocabulary
    raw_chars = sum(chars.values())
    dropped = sum(n for c, n in chars.items() if not c.isspace() and g.normalize_text(c) == "")
    return dict(articles=len(articles), answers=answers, skipped=skipped, counts=counts, examples=examples,
                dropped_share=dropped / max(raw_chars, 1), kinds=kinds)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--show", type=int, default=0)
    r = report(ap.parse_args().show)
    print(f"offline articles: {r['articles']}, answers: {r['answers']}, skipped (too short/no whole sentence): {r['skipped']}")
    print(f"questions: {dict(r['kinds'])}")
    print(f"characters dropped (nothing left after NFKC + anyascii): {r['dropped_share']:.4%}")
    print(f"{'rule':55s} {'answers':>8s} {'share':>8s}")
    rules = ["longer than ANSWER_CHARS", "not cut at a sentence end", "cut after an abbreviation or initial",
             "empty or broken parentheses", "unbalanced parentheses", "pronunciation guide",
             "characters outside VOCAB", "stray whitespace", "question not in the form '(Who|What|Where) is X?'"]
    for rule in rules:
        n = r["counts"][rule]
        print(f"{rule:55s} {n:8d} {n / r['answers']:8.2%}")
        for ex in r["examples"][rule]:
            print("    " + ex[:300])


if __name__ == "__main__":
    main()
