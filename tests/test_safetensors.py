"""model.safetensors + config.json beside every model.pt: the same model, loaded without pickle."""
import json
import os
import sys

import pytest
import torch

import gpty2_wiki as g

QA = [dict(title="Ada Lovelace", question="Who is Ada Lovelace?", answer="Ada Lovelace was a mathematician.")]
META = dict(train_titles=["Ada Lovelace"], val_titles=["Paris"], recall=0.5, val_similarity=0.25,
            qa_eval=dict(train=QA, val=[dict(title="Paris", question="Where is Paris?", answer="Paris is a city.")]))


def saved(folder, tie=False):
    torch.manual_seed(0)
    model = g.GPTLanguageModel(g.GPTConfig(block_size=32, n_embd=32, n_head=2, n_layer=2, tie_embeddings=tie))
    g.save_model(str(folder / "model.pt"), model, 12, 1.25, META)
    return model


@pytest.mark.parametrize("tie", [False, True])
def test_the_pair_gives_the_same_logits_and_meta(tmp_path, monkeypatch, tie):
    saved(tmp_path, tie)
    assert sorted(os.listdir(tmp_path)) == ["config.json", "model.pt", "model.safetensors"]
    idx = torch.tensor([g.encode("\n\nQ: Who is Ada Lovelace?\nA: Ada")])
    pt = g.load_model(str(tmp_path / "model.pt"))
    monkeypatch.setattr(torch, "load", None)  # the pair must need no pickle at all
    st = g.load_model(str(tmp_path / "model.safetensors"))
    assert torch.equal(pt(idx)[0], st(idx)[0])
    assert st.meta == pt.meta and st.meta["iter"] == 12 and st.meta["train_titles"] == ["Ada Lovelace"]
    # the README's notebook route: safetensors and json, GPTConfig and GPTLanguageModel only
    from safetensors.torch import load_file
    config = json.load(open(tmp_path / "config.json"))
    model = g.GPTLanguageModel(g.GPTConfig(**config["config"]))
    model.load_state_dict(load_file(tmp_path / "model.safetensors"))
    assert torch.equal(model.eval()(idx)[0], pt(idx)[0]) and config["vocab"] == g.VOCAB


def test_a_broken_pair_is_one_line(tmp_path):
    saved(tmp_path)
    path = str(tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2", "vocab_size": 50257}))  # another project's
    with pytest.raises(g.UserError, match="not a gpty2_wiki checkpoint"):
        g.load_model(path)
    (tmp_path / "config.json").unlink()
    with pytest.raises(g.UserError, match="no config.json beside"):
        g.load_model(path)
    saved(tmp_path)
    data = (tmp_path / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(data[:len(data) // 2])  # truncated
    with pytest.raises(g.UserError, match="not a readable pair"):
        g.load_model(path)


def test_without_safetensors_model_pt_is_saved_with_one_notice(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "safetensors", None)  # import safetensors now fails
    monkeypatch.setitem(sys.modules, "safetensors.torch", None)
    monkeypatch.delattr(g.save_safetensors, "warned", raising=False)
    saved(tmp_path)
    saved(tmp_path)
    assert os.listdir(tmp_path) == ["model.pt"]
    assert capsys.readouterr().out.count("pip install safetensors") == 1
    (tmp_path / "other.safetensors").write_bytes(b"")
    with pytest.raises(g.UserError, match="pip install safetensors"):
        g.load_model(str(tmp_path / "other.safetensors"))


def test_ask_and_eval_from_the_pair_alone(tmp_path, capsys):
    saved(tmp_path)
    (tmp_path / "model.pt").unlink()
    flags = ["--model", str(tmp_path / "model.safetensors"), "--dtype", "float32", "--max-answer-chars", "20"]
    assert g.main(["--ask", "Who is Ada Lovelace?", *flags]) == 0
    assert "among the 1 training articles" in capsys.readouterr().out
    assert g.main(["--eval", *flags]) == 0
    assert "step 12, 1 training articles" in capsys.readouterr().out
