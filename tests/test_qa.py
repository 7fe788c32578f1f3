"""Q&A formatting: cleaning, sentence cutting, questions, person/place/thing decisions."""
import pytest

import gpty2_wiki as g
from helpers import read_tsv


def article(title, text, description="", **kw):
    return g.Article(title=title, text=text, description=description, **kw)


# --- sentences and answers ---------------------------------------------------------------

@pytest.mark.parametrize("text, first", [
    ("Dr. John Smith was a doctor. He lived in York.", "Dr. John Smith was a doctor."),
    ("St. Petersburg is a city. It is in Russia.", "St. Petersburg is a city."),
    ("The U.S. Army is an army. It is large.", "The U.S. Army is an army."),
    ("It was built c. 1900 by monks. It fell.", "It was built c. 1900 by monks."),
    ("J. R. R. Tolkien was a writer. He wrote books.", "J. R. R. Tolkien was a writer."),
    ("Washington, D.C. is the capital. It is small.", "Washington, D.C. is the capital."),
    ('He was called "Mr. Dynamite" by fans. He sang.', 'He was called "Mr. Dynamite" by fans.'),
    ("It is big (about 5 km). It is old.", "It is big (about 5 km)."),
    ('He said "Go home." Then he left.', 'He said "Go home."'),
])
def test_sentences_survive_abbreviations_and_initials(text, first):
    assert g.split_sentences(text)[0] == first


def test_trailing_fragment_is_not_a_sentence():
    assert g.split_sentences("One sentence. And a fragment with no end") == ["One sentence."]


def test_answer_is_whole_sentences_within_the_limit():
    text = " ".join(f"Sentence number {i} is here and it is moderately long." for i in range(40))
    ans = g.make_answer(text, 200)
    assert len(ans) <= 200 and ans.endswith(".")
    assert ans == " ".join(g.split_sentences(text)[:len(g.split_sentences(ans))])
    assert g.make_answer("Word " * 100 + "end.", 50) == ""  # never cut mid-sentence or mid-word


def test_pronunciation_guides_and_empty_parentheses_are_removed():
    lead = ("Albert Einstein (/ˈælbərt ˈaɪnstaɪn/ EYEN-styne; German: [ˈalbɛʁt ˈʔaɪnʃtaɪn] ⓘ; 14 March 1879 – "
            "18 April 1955) was a German-born theoretical physicist.")
    assert g.make_answer(lead) == "Albert Einstein (14 March 1879 - 18 April 1955) was a German-born theoretical physicist."
    assert g.make_answer("Kaolinite ( KAY-ə-lə-nyte, -\u2060lih-; also called kaolin) is a clay mineral.") == \
        "Kaolinite (also called kaolin) is a clay mineral."
    assert g.make_answer("Paris ( ; French: ) is the capital of France.") == "Paris is the capital of France."
    assert g.make_answer("Oslo () is a city.") == "Oslo is a city."
    assert g.make_answer("Bern (Swiss: Bärn is a city) and (so) on.") == "Bern (Swiss: Barn is a city) and (so) on."


def test_broken_parentheses_are_removed():
    assert g.make_answer("Rome (Latin: Roma is a city. It is old.") == "Rome Latin: Roma is a city. It is old."
    assert g.make_answer("Rome) is a city.") == "Rome is a city."


def test_references_and_formula_holes():
    assert g.make_answer("Water is wet.[1] It flows.[citation needed]") == "Water is wet. It flows."
    # an extract that lost a formula: stop before the sentence with the hole
    assert g.make_answer("A field is a set. It has finite degree . More.") == "A field is a set."


def test_normalisation_to_the_ascii_vocabulary():
    assert g.normalize_text("“Quotes” – and — dashes… ’") == '"Quotes" - and - dashes... \''
    assert g.normalize_text("Pelé, Dvořák, Ærø, Straße") == "Pele, Dvorak, Aero, Strasse"
    assert g.normalize_text("北京 Ελλάδα") == "BeiJing Ellada"
    assert g.normalize_text("ﬁne\ttab\x00nul") == "fine tabnul"
    assert all(c in g.STOI for c in g.normalize_text("".join(chr(i) for i in range(0, 0x3000, 7))))


# --- questions -------------------------------------------------------------------------------

@pytest.mark.parametrize("title, text, description, question", [
    ("Eiffel Tower", "The Eiffel Tower is a lattice tower on the Champ de Mars in Paris, France.",
     "Tower in Paris, France", "Where is the Eiffel Tower?"),
    ("Atom", "An atom is the smallest unit of matter. Every atom is small.", "Smallest unit of a chemical element",
     "What is an atom?"),
    ("Albert Einstein", "Albert Einstein was a German-born theoretical physicist. He developed relativity.",
     "German-born theoretical physicist (1879–1955)", "Who is Albert Einstein?"),
    ("The Beatles", "The Beatles were an English rock band formed in Liverpool in 1960.",
     "English rock band", "What are the Beatles?"),
    ("Human cannibalism", "Human cannibalism is the act of humans eating other human beings.", "Practice",
     "What is human cannibalism?"),
    ("Schrödinger equation", "The Schrödinger equation is a partial differential equation.", "Equation",
     "What is the Schrodinger equation?"),
    ("Orion (constellation)", "Orion is a prominent set of stars. Orion is named after a hunter.", "Constellation",
     "What is Orion?"),
    ("Paris", "Paris is the capital and largest city of France.", "Capital city of France", "Where is Paris?"),
    ("Mercury (planet)", "Mercury is the first planet from the Sun.", "First planet from the Sun",
     "What is Mercury?"),
])
def test_questions_are_worded_naturally(title, text, description, question):
    assert g.make_question(article(title, text, description)) == question


def test_format_qa_is_exact_and_skips_stubs():
    a = article("Paris", "Paris is the capital and largest city of France. It has 2 million people.", "Capital of France")
    assert g.format_qa(a) == ("Q: Where is Paris?\nA: Paris is the capital and largest city of France. "
                              "It has 2 million people.\n\n")
    assert g.format_qa(article("Stub", "Stub is short.")) == ""
    assert g.format_qa(article("Empty", "")) == ""


# --- person / place / thing ------------------------------------------------------------------

def test_live_signals_win_over_heuristics():
    band = article("Queen (band)", "Queen are a British rock band formed in London in 1970.", "British rock band")
    assert g.classify(band) == "thing"
    assert g.classify(article("X", "X was a thing.", "", is_human=True)) == "person"
    person_like = article("Jo Bloggs", "Jo Bloggs (born 1950) is an English writer.", "English writer", is_human=False)
    assert g.classify(person_like) == "thing"
    assert g.classify(article("Nowhere Hill", "Nowhere Hill is a hill.", "", coordinates=(1.0, 2.0))) == "place"


def labelled(name):
    offline = {a.title: a for a in g.load_offline_articles()}
    return [(offline[t], label) for t, label, *_ in read_tsv(name)]


@pytest.mark.parametrize("name", ["person_labels.tsv", "person_labels_heldout.tsv"])
def test_person_detection_on_hand_labelled_samples(name):
    """Hand-labelled random samples of the offline corpus (tests/data). The first was used while writing
    the heuristics; the held-out one was not. Target: accuracy >= 95% with >= 90% of people found."""
    rows = labelled(name)
    pred = [(g.classify(a) == "person", label == "person") for a, label in rows]
    accuracy = sum(p == t for p, t in pred) / len(pred)
    recall = sum(p and t for p, t in pred) / sum(t for _, t in pred)
    assert len(rows) >= 500 and accuracy >= 0.95 and recall >= 0.90, (accuracy, recall)


HARD_PEOPLE = ["Pope John Paul II", "Emperor Meiji", "Prince Henry the Navigator", "Homer", "Prince (musician)",
               "King Arthur", "Zeus", "Sherlock Holmes", "Mickey Mouse", "Mary, mother of Jesus", "Osman I",
               "Ignaz Semmelweis", "The Buddha"]
HARD_NOT_PEOPLE = ["Pope", "Pharaoh", "The Beatles", "Queen (band)", "Wright brothers", "House of Habsburg",
                   "Ming dynasty", "Zulu people", "Halley's Comet", "Ford Motor Company", "Hamlet", "Mona Lisa",
                   "James Bond", "Newton (unit)", "Saint Petersburg", "Alexandria"]


def test_hard_cases():
    offline = {a.title: a for a in g.load_offline_articles()}
    wrong = [t for t in HARD_PEOPLE if g.classify(offline[t]) != "person"]
    wrong += [t for t in HARD_NOT_PEOPLE if g.classify(offline[t]) == "person"]
    assert wrong == [], wrong
    assert g.classify(offline["Saint Petersburg"]) == "place" and g.classify(offline["Mars"]) == "thing"
