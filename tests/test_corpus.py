"""The whole offline corpus against the formatting rules (tests/corpus_report.py prints the table)."""
import corpus_report


def test_offline_corpus_answers_follow_the_rules():
    r = corpus_report.report()
    assert r["articles"] > 9000 and r["answers"] > 0.95 * r["articles"]
    for rule, n in r["counts"].items():
        assert n / r["answers"] < 0.01, (rule, n)
    assert r["dropped_share"] < 0.001
    assert min(r["kinds"].values()) > 500  # people, places and things are all there


def test_checker_catches_what_it_should():
    bad = {"Cut mid-word and no end": "not cut at a sentence end",
           "It was founded by Dr.": "cut after an abbreviation or initial",
           "Paris ( ; ) is a city.": "empty or broken parentheses",
           "Paris (French is a city.": "unbalanced parentheses",
           "Einstein (/ˈaɪnstaɪn/) was a man.": "pronunciation guide",
           "Caf\u00e9 is a place.": "characters outside VOCAB",
           "A city , big.": "stray whitespace"}
    for answer, rule in bad.items():
        assert rule in corpus_report.answer_problems(answer), answer
    assert corpus_report.answer_problems("Paris (French: Paris) is the capital of France.") == []
