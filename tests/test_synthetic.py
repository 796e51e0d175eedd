"""The tiny self-made assets: deterministic, a sane NER set, and loadable by transformers and by jaxfin."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import torch
import transformers

from jaxfin import synthetic
from jaxfin.data import chat
from jaxfin.io import hf as hf_io
from jaxfin.model import decoder
from jaxfin.model.config import ModelConfig
from jaxfin.tasks import fire, ner


def _files(root: str) -> dict[str, bytes]:
    out = {}
    for dirpath, _, names in os.walk(root):
        for n in names:
            path = os.path.join(dirpath, n)
            with open(path, "rb") as f:
                out[os.path.relpath(path, root)] = f.read()
    return out


def test_assets_are_deterministic_in_the_seed(assets, tmp_path):
    # Another process: BPE training and hashing must not depend on per-process state.
    code = f"from jaxfin import synthetic; synthetic.write_tiny_assets({str(tmp_path / 'again')!r}, seed=0)"
    subprocess.run([sys.executable, "-c", code], check=True)
    a, b = _files(os.path.dirname(assets.train)), _files(str(tmp_path / "again"))
    assert set(a) >= {"train.jsonl", "eval.jsonl", "model/config.json", "model/generation_config.json",
                      "model/model.safetensors", "model/tokenizer.json", "model/tokenizer_config.json",
                      "model/chat_template.jinja"}
    assert a == b
    other = synthetic.write_tiny_assets(str(tmp_path / "other"), seed=1)
    c = _files(os.path.dirname(other.train))
    assert c["train.jsonl"] != a["train.jsonl"] and c["model/model.safetensors"] != a["model/model.safetensors"]


def test_ner_set_is_canonical_and_covers_every_type(assets):
    train, dev = ner.load_examples(assets.train), ner.load_examples(assets.eval)
    assert (len(train), len(dev)) == (400, 60)
    assert not {e["text"] for e in train} & {e["text"] for e in dev}
    assert ner.entity_types(train) == list(synthetic.TYPES)
    counts = dict.fromkeys(synthetic.TYPES, 0)
    for ex in train + dev:
        assert set(ex["entities"]) == set(synthetic.TYPES)
        for type_, mentions in ex["entities"].items():
            assert mentions is None or (mentions and all(m in ex["text"] for m in mentions))
            counts[type_] += len(mentions or ())
    assert min(counts.values()) >= 40, counts


def test_tokenizer_loads_with_r1_style_chat_format(assets):
    tok = transformers.AutoTokenizer.from_pretrained(assets.model)
    with open(os.path.join(assets.model, "config.json")) as f:
        hf = json.load(f)
    with open(os.path.join(assets.model, "generation_config.json")) as f:
        gen = json.load(f)
    assert len(tok) == hf["vocab_size"]
    assert tok.eos_token == synthetic.EOS and tok.eos_token_id == gen["eos_token_id"] == hf["eos_token_id"]
    assert tok.bos_token_id == gen["bos_token_id"]
    prompt = tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False)
    assert prompt == f"{synthetic.BOS}{synthetic.USER}hi{synthetic.ASSISTANT}<think>\n"
    for special in (synthetic.BOS, synthetic.EOS, synthetic.USER, synthetic.ASSISTANT, "<think>", "</think>"):
        assert len(tok.encode(special, add_special_tokens=False)) == 1
    ex = ner.load_examples(assets.train)[0]
    ids, mask = chat.encode_task(fire.task(synthetic.TYPES), [ex], tok)[0]
    assert tok.decode(ids, skip_special_tokens=False).count(ex["text"]) == 1
    assert len(ids) < 256 and ids[-1] == tok.eos_token_id  # the tiny run's sequences stay short


def test_model_loads_in_transformers_and_matches_jaxfin(assets):
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(assets.model, dtype=torch.float32)
    assert type(hf_model).__name__ == "LlamaForCausalLM"
    with open(os.path.join(assets.model, "config.json")) as f:
        cfg = ModelConfig.from_hf(json.load(f))
    assert cfg.rope_type == "llama3" and cfg.num_kv_heads < cfg.num_heads
    state = {k: v.numpy() for k, v in hf_model.state_dict().items()}
    params = hf_io.params_from_state_dict(state, cfg)
    for name, w in hf_io.state_dict_from_params(params, cfg):  # the file holds exactly what we wrote
        np.testing.assert_array_equal(w, state[name])
    tokens = np.random.default_rng(0).integers(0, cfg.vocab_size, size=(1, 12))
    with torch.no_grad():
        ref = hf_model(torch.tensor(tokens)).logits.numpy()
    ours = np.asarray(decoder.forward(params, tokens, cfg))
    np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=1e-4)
