"""What the model knows: the Q&A evaluation's scoring, its fixed question sets, batched greedy
answers, recall of a memorised corpus, and the model file's record of what it read."""
import torch

import gpty2_wiki as g

RECORDS = [{"title": t, "question": q, "answer": a} for t, q, a in [
    ("Ada Lovelace", "Who is Ada Lovelace?", "Ada Lovelace was an English mathematician."),
    ("Tea", "What is tea?", "Tea is an aromatic drink made from leaves."),
    ("Paris", "Where is Paris?", "Paris is the capital and largest city of France."),
    ("Atom", "What is an atom?", "An atom is the smallest unit of a chemical element."),
    ("The Beatles", "What are the Beatles?", "The Beatles were an English rock band from Liverpool."),
    ("Nile", "Where is the Nile?", "The Nile is a major river in northeastern Africa."),
]]


def test_scoring_exact_near_unrelated_and_empty():
    truth = "Ada Lovelace was an English mathematician and writer."
    cases = {"exact": truth, "near": "Ada Lovelace was an English mathematician and poet.",
             "opening only": truth[:40] + " who never existed at all.", "unrelated": "Zebras graze on grassy plains.",
             "empty": ""}
    s = {k: g.score_answers([a], [truth]) for k, a in cases.items()}
    assert s["exact"] == {"exact": 1.0, "similarity": 1.0}
    assert s["near"]["exact"] == 1.0 and 0.85 < s["near"]["similarity"] < 1.0
    assert s["opening only"]["exact"] == 1.0 and s["opening only"]["similarity"] < s["near"]["similarity"]
    assert s["unrelated"]["exact"] == 0.0 and s["unrelated"]["similarity"] < 0.4
    assert s["empty"] == {"exact": 0.0, "similarity": 0.0}
    assert g.score_answers(["Ada Lovelace was an Irish"], [truth], opening=10)["exact"] == 1.0
    both = g.score_answers([truth, ""], [truth, truth])
    assert both["exact"] == 0.5 and both["similarity"] == 0.5


def test_question_sets_are_fixed_whatever_the_order_and_size():
    splits = {"train": RECORDS[:4], "val": RECORDS[4:]}
    a = g.qa_eval_sets(splits, 3)
    b = g.qa_eval_sets({"train": RECORDS[:4][::-1], "val": RECORDS[4:][::-1]}, 3)
    assert a == b and len(a["train"]) == 3 and len(a["val"]) == 2
    assert g.qa_eval_sets(splits, 2)["train"] == a["train"][:2]  # a smaller set is a prefix of a larger one


def tiny(block_size=96, seed=0):
    torch.manual_seed(seed)
    return g.GPTLanguageModel(g.GPTConfig(len(g.VOCAB), block_size, 64, 4, 2, 0.0, False))


def test_batched_greedy_answers_equal_ask():
    m = tiny().eval()
    questions = [r["question"] for r in RECORDS] + ["Who?", "What is a much longer question than the others here?"]
    batched = g.answer_batch(m, questions, 30, batch=3)
    assert batched == [g.ask(m, q, temperature=0, max_chars=30) for q in questions]


def test_aligned_windows_start_where_a_question_is_asked():
    ids, mask = g.records_to_tensors(RECORDS)
    starts = g.record_starts(mask)
    assert len(starts) == len(RECORDS) - 1
    x, _ = g.get_batch(ids, 8, 24, torch.Generator().manual_seed(0), torch.device("cpu"), None, starts, aligned=1.0)
    assert all(g.decode(row.tolist()).startswith("\n\nQ: ") for row in x)
    x, _ = g.get_batch(ids, 8, 24, torch.Generator().manual_seed(0), torch.device("cpu"), None, starts, aligned=0.5)
    assert all(g.decode(row.tolist()).startswith("\n\nQ: ") for row in x[:4])


def test_a_memorising_model_recalls_and_an_untrained_one_does_not():
    sets = {"train": RECORDS, "val": RECORDS[:1]}
    m = tiny()
    before = g.evaluate_qa(m, sets, 60)
    assert before["train"]["exact"] == 0.0 and before["train"]["similarity"] < 0.3
    ids, mask = g.records_to_tensors(RECORDS * 2)  # twice, so that every record has one before it
    starts = g.record_starts(mask)
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    m.train()
    for _ in range(400):  # 250 left one seed at 50% under the AVX2 kernels: fp32 rounds differently there
        x, y = g.get_batch(ids, 16, 96, gen, torch.device("cpu"), None, starts, aligned=0.75)
        _, loss = m(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = g.evaluate_qa(m, sets, 60)
    assert after["train"]["exact"] >= 0.8 and after["train"]["similarity"] > 0.9, after
    assert not m.training  # the evaluation leaves the model in eval mode for answering


def test_seen_in_training_matches_subjects_to_titles():
    m = tiny()
    assert g.seen_in_training(m, "Who is Ada Lovelace?") is None  # a model file that does not say
    m.meta = {"train_titles": ["Ada Lovelace", "Eiffel Tower", "Mercury (planet)", "The Beatles"]}
    assert g.seen_in_training(m, "Who is Ada Lovelace?") is True
    assert g.seen_in_training(m, "What is the Eiffel Tower?") is True
    assert g.seen_in_training(m, "what is mercury") is True
    assert g.seen_in_training(m, "What are the Beatles?") is True
    assert g.seen_in_training(m, "Who is Alan Turing?") is False
