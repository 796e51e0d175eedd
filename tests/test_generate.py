"""`python -m jaxfin.generate` end to end on a tiny HF model dir with a tokenizer, vs transformers' generate."""

from __future__ import annotations

import json
import os

import pytest
import tokenizers
import torch
import transformers
from tokenizers import decoders, models, pre_tokenizers, processors, trainers

from jaxfin import generate
from jaxfin.errors import run_cli
from jaxfin.infer import decode
from jaxfin.infer.sampling import Sampling
from jaxfin.io import store


NEW = 24
V = 320  # the tokenizer's 300 ids, padded as real checkpoints pad their embeddings
SPECIALS = ["<s>", "</s>", "<|user|>", "<|assistant|>"]
CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")
CORPUS = ["the company reported revenue of 12 million dollars in march", "apple bought shares from microsoft"]


def _save_tokenizer(path) -> None:
    """A byte-level BPE tokenizer that adds <s> by default, with a chat template: the Llama-3 / DeepSeek-R1-Distill
    layout, including the `LlamaTokenizerFast` class name its tokenizer_config.json declares."""
    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=300, special_tokens=SPECIALS, show_progress=False,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                                chat_template=CHAT_TEMPLATE)
    fast.save_pretrained(path)
    config = path / "tokenizer_config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "tokenizer_class": "LlamaTokenizerFast"}))


def _model() -> transformers.PreTrainedModel:
    cfg = transformers.LlamaConfig(vocab_size=V, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                   max_position_embeddings=512, bos_token_id=0)
    m = transformers.LlamaForCausalLM(cfg)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in m.named_parameters():
            is_norm = "norm" in name
            p.copy_(torch.randn(p.shape, generator=g) * (0.2 if is_norm else 0.3) + (1.0 if is_norm else 0.0))
    return m.eval()


def _hf_greedy(m, ids: list[int]) -> list[int]:
    with torch.no_grad():
        out = m.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                         max_new_tokens=NEW, do_sample=False, pad_token_id=0)
    return out[0, len(ids):].tolist()


INPUTS = [
    {"id": "a", "input_ids": [7, 3, 290, 12, 5]},
    {"id": "b", "prompt": "apple reported revenue of 12 million dollars in march"},
    {"id": "c", "messages": [{"role": "user", "content": "microsoft bought shares"}], "extra": [1, 2]},
    {"id": "d", "input_ids": list(range(200, 240))},
]


@pytest.fixture(scope="module")
def dirs(tmp_path_factory) -> dict:
    """An HF model dir with a tokenizer and two EOS ids in generation_config.json, the same model without a
    tokenizer, INPUTS as a JSONL file, and transformers' (completion_ids, finish_reason) for each input."""
    root = tmp_path_factory.mktemp("generate")
    m = _model()
    m.generation_config.eos_token_id = None
    ref_a, ref_d = _hf_greedy(m, INPUTS[0]["input_ids"]), _hf_greedy(m, INPUTS[3]["input_ids"])
    # Two EOS ids that end row "a" early and never occur in row "d" (which then runs to the length).
    eos = list(dict.fromkeys(t for t in ref_a[1:] if t not in ref_d))[:2]
    m.config.eos_token_id = eos[1]
    m.generation_config.eos_token_id = eos
    with_tok, without_tok = root / "with_tok", root / "without_tok"
    m.save_pretrained(with_tok)
    _save_tokenizer(with_tok)
    m.save_pretrained(without_tok)
    tok = transformers.AutoTokenizer.from_pretrained(with_tok)  # as the CLI will see it
    ids = [INPUTS[0]["input_ids"], tok(INPUTS[1]["prompt"])["input_ids"],
           tok.apply_chat_template(INPUTS[2]["messages"], add_generation_prompt=True, return_dict=True)["input_ids"],
           INPUTS[3]["input_ids"]]
    assert ids[1][0] == tok.bos_token_id  # prompts get the tokenizer's default special tokens
    expected = []
    for prompt_ids in ids:
        ref = _hf_greedy(m, prompt_ids)  # stops after an EOS from generation_config, which it includes
        expected.append((ref[:-1], "stop") if ref[-1] in eos else (ref, "length"))
    assert expected[0][1] == "stop" and expected[3][1] == "length"
    prompts = root / "inputs" / "in.jsonl"
    prompts.parent.mkdir()
    lines = [json.dumps(r) for r in INPUTS]
    prompts.write_text("\n".join(lines[:2] + [""] + lines[2:]) + "\n")  # a blank line is skipped
    return {"with_tok": str(with_tok), "without_tok": str(without_tok), "tok": tok, "prompts": str(prompts),
            "expected": expected}


def _check_output(out, dirs) -> None:
    got = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in got] == ["a", "b", "c", "d"]
    for rec, inp, (ids, reason) in zip(got, INPUTS, dirs["expected"]):
        assert {k: rec[k] for k in inp} == inp
        assert (rec["completion_ids"], rec["finish_reason"]) == (ids, reason)
        assert rec["completion"] == dirs["tok"].decode(ids, skip_special_tokens=False)


def test_three_input_forms_match_transformers(dirs, tmp_path, capsys):
    out = tmp_path / "out.jsonl"
    out.write_text("stale content\n" * 10)
    assert generate.main(["--model", dirs["with_tok"], "--prompts", dirs["prompts"], "--out", str(out),
                          "--max-new-tokens", str(NEW), "--batch-size", "2"]) == 0
    assert "tokens/s" in capsys.readouterr().err
    _check_output(out, dirs)
    assert os.listdir(tmp_path) == ["out.jsonl"]  # overwritten through a temporary file, none left behind


def test_jaxfin_checkpoint_and_bfloat16(dirs, tmp_path):
    """The same completions from a jaxfin checkpoint of the model (tokenizer and EOS ids travel with it)."""
    m = store.load(dirs["with_tok"])
    ckpt = tmp_path / "ckpt"
    store.save_model(ckpt, m.params, m.cfg, hf_config=m.hf_config, generation_config=m.generation_config,
                          tokenizer_files=m.tokenizer_files())
    out = tmp_path / "out.jsonl"
    generate.main(["--model", str(ckpt), "--prompts", dirs["prompts"], "--out", str(out),
                   "--max-new-tokens", str(NEW), "--batch-size", "2"])
    _check_output(out, dirs)
    generate.main(["--model", str(ckpt), "--prompts", dirs["prompts"], "--out", str(out), "--dtype", "bfloat16",
                   "--max-new-tokens", str(NEW)])
    bf16 = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in bf16] == ["a", "b", "c", "d"]
    assert all(r["finish_reason"] == ("stop" if len(r["completion_ids"]) < NEW else "length") for r in bf16)


@pytest.mark.parametrize("model, lines, message", [
    ("with_tok", ['{"input_ids": [1, 2]}', '{"prompt": "the company"'], "in.jsonl:2: not valid JSON"),
    ("with_tok", ['{"text": "the company"}'], "in.jsonl:1: expected a JSON object with one of the keys"),
    ("with_tok", ['[1, 2, 3]'], "in.jsonl:1: expected a JSON object"),
    ("with_tok", ['{"input_ids": "1 2"}'], "in.jsonl:1: input_ids must be a list of integers"),
    ("with_tok", ['{"input_ids": [1, 2]}', '', '{"input_ids": [1, 320]}'], "in.jsonl:3: token id 320 is outside"),
    ("with_tok", ['{"messages": "hello"}'], "in.jsonl:1: messages must be a non-empty list"),
    ("without_tok", ['{"input_ids": [1, 2]}', '{"prompt": "the company"}'], "in.jsonl:2: 'prompt' needs a tokenizer"),
    ("without_tok", ['{"messages": [{"role": "user", "content": "x"}]}'], "in.jsonl:1: 'messages' needs a tokenizer"),
])
def test_bad_input_is_one_error_line(dirs, tmp_path, capsys, model, lines, message):
    prompts, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    prompts.write_text("\n".join(lines) + "\n")
    with pytest.raises(SystemExit) as exit_info:
        run_cli(generate.main, ["--model", dirs[model], "--prompts", str(prompts), "--out", str(out)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1].startswith(f"error: {os.path.join(tmp_path, message)}"), err
    assert "Traceback" not in err
    assert not out.exists()


def test_num_samples_rows(dirs, tmp_path):
    """--num-samples 2 with sampling flags: each row gets `samples` in sample order (and not the N = 1 fields),
    the tokens decode.generate draws for (seed, line index, sample index)."""
    out = tmp_path / "out.jsonl"
    assert generate.main(["--model", dirs["with_tok"], "--prompts", dirs["prompts"], "--out", str(out),
                          "--max-new-tokens", "8", "--temperature", "1.3", "--top-k", "40", "--top-p", "0.9",
                          "--num-samples", "2", "--seed", "5"]) == 0
    got = [json.loads(line) for line in out.read_text().splitlines()]
    m = store.load(dirs["with_tok"])
    ids = [generate.tokenize(r, dirs["tok"], "") for r in INPUTS]
    want = decode.generate(m.params, m.cfg, ids, max_new_tokens=8, stop_ids=m.eos_ids, num_samples=2, seed=5,
                           sampling=Sampling(temperature=1.3, top_k=40, top_p=0.9))  # the CLI's shapes: no compile
    for rec, inp, samples in zip(got, INPUTS, want):
        assert {k: rec[k] for k in inp} == inp and "completion_ids" not in rec and "finish_reason" not in rec
        assert [(s["completion_ids"], s["finish_reason"]) for s in rec["samples"]] == [
            (c.token_ids, c.finish_reason) for c in samples]
        assert [s["completion"] for s in rec["samples"]] == [
            dirs["tok"].decode(c.token_ids, skip_special_tokens=False) for c in samples]
    assert any(r["samples"][0]["completion_ids"] != r["samples"][1]["completion_ids"] for r in got)
