"""jaxfin.data.pairs: reading pair files in TRL's shapes and jaxfin's, TRL's token ids, the rejected-sample rule.

TRL parity: implicit prompts against trl.extract_prompt; token ids against TRL's own DPOTrainer._prepare_dataset
(tests/trl_dpo_reference.trl_tokenize) with a BOS-adding tokenizer (standard rows), the real Qwen2.5 tokenizer
and template (ChatML) and a DeepSeek-R1-style template whose generation prompt is not a prefix of the rendered
conversation. Exact equality of ids. The repetition threshold is checked on real text from ../shared/data.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import transformers
from trl.data_utils import extract_prompt

import trl_dpo_reference

from jaxfin.data import pairs
from jaxfin.tasks import fire
from jaxfin.tasks.base import data_root


DATA = Path(data_root())
QWEN_DIR = DATA / "tokenizers" / "qwen2.5_bpe_from_qwen2.5-vl"
FIRE_TYPES = ["Company", "Date", "Location", "Money", "Person", "Product", "Quantity"]

USER = [{"role": "user", "content": "What color is the sky?"}]
R1_TEMPLATE = """\
{{- bos_token -}}
{%- for m in messages -%}
  {%- if m['role'] == 'user' -%}{{- '<|User|>' + m['content'] -}}
  {%- elif m['role'] == 'assistant' -%}{{- '<|Assistant|>' + m['content'] + eos_token -}}{%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}{{- '<|Assistant|><think>\\n' -}}{%- endif -%}"""


def write_jsonl(path: Path, rows: list) -> str:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


# --------------------------------------------------------------------------------------------------------------
# Tokenizers.


def small_tokenizer(bos: bool) -> transformers.PreTrainedTokenizerFast:
    """A byte-level BPE trained on a few sentences, with Llama-like specials; `bos`: __call__ prepends <s>."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<s>", "</s>", "<pad>", "<|User|>", "<|Assistant|>"]
    corpus = ["The sky is blue.", "The sky is green.", "What color is the sky?", "It is blue.", "Q: 2+2? A: 4",
              '{"Company": ["Apple"], "Date": []}'] * 4
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=300, special_tokens=specials, show_progress=False,
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    if bos:
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    wrapped = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                                   pad_token="<pad>", additional_special_tokens=specials[3:])
    wrapped.add_tokens(["<think>"])
    wrapped.chat_template = R1_TEMPLATE
    return wrapped


@pytest.fixture(scope="module")
def qwen() -> transformers.PreTrainedTokenizerBase:
    return transformers.AutoTokenizer.from_pretrained(QWEN_DIR)


# --------------------------------------------------------------------------------------------------------------
# Reading.


def test_reads_every_trl_shape_and_jaxfin_shape(tmp_path: Path) -> None:
    rows = [
        {"prompt": "The sky is", "chosen": " blue.", "rejected": " green."},
        {"prompt": USER, "chosen": [{"role": "assistant", "content": "It is blue."}],
         "rejected": [{"role": "assistant", "content": "It is green."}], "score_chosen": 9.0},
        {"chosen": "The sky is blue.", "rejected": "The sky is green."},
        {"chosen": USER + [{"role": "assistant", "content": "It is blue."}],
         "rejected": USER + [{"role": "assistant", "content": "It is green."}]},
        {"id": "fire-7", "prompt": USER, "chosen": "It is blue.", "rejected": "It is blue. It is blue. It is",
         "rejected_ids": [5, 6, 5, 6]},
    ]
    got = pairs.read_pairs(write_jsonl(tmp_path / "p.jsonl", rows[:2] + [""] + rows[2:]))
    assert [p["id"] for p in got] == ["1", "2", "4", "5", "fire-7"]  # default id: the line number
    assert got[0] == {"id": "1", "prompt": "The sky is", "chosen": " blue.", "rejected": " green."}
    assert pairs.to_trl_row(got[1]) == {k: rows[1][k] for k in ("prompt", "chosen", "rejected")}
    assert pairs.to_trl_row(got[2]) == extract_prompt(rows[2])  # TRL's implicit-prompt split
    assert pairs.to_trl_row(got[3]) == extract_prompt(rows[3])
    assert got[4]["chosen"] == [{"role": "assistant", "content": "It is blue."}]
    assert got[4]["rejected_ids"] == [5, 6, 5, 6] and "chosen_ids" not in got[4]


@pytest.mark.parametrize("chosen,rejected", [
    ("Q: 2+2? A: 4", "Q: 2+2? A: 5"),  # the space before the divergence goes to the completions
    ("abc def", "abcdef"),
    ("Revenue rose to $5m", "Revenue fell to $5m"),
])
def test_implicit_text_prompt_matches_trl(tmp_path: Path, chosen: str, rejected: str) -> None:
    (pair,) = pairs.read_pairs(write_jsonl(tmp_path / "p.jsonl", [{"chosen": chosen, "rejected": rejected}]))
    assert pairs.to_trl_row(pair) == extract_prompt({"chosen": chosen, "rejected": rejected})


@pytest.mark.parametrize("line,match", [
    ('{"prompt": "a", "chosen": "b"', "p.jsonl:2: malformed JSON"),
    ('["a"]', "p.jsonl:2: expected a JSON object"),
    ('{"prompt": "a", "chosen": "b"}', "p.jsonl:2: no 'rejected' field"),
    ('{"prompt": [{"role": "user"}], "chosen": "b", "rejected": "c"}', r"p.jsonl:2: 'prompt'\[0\] must be a message"),
    ('{"prompt": [], "chosen": "b", "rejected": "c"}', "p.jsonl:2: 'prompt' is an empty list"),
    ('{"prompt": "a", "chosen": [{"role": "assistant", "content": "b"}], "rejected": "c"}', "mixed"),
    ('{"prompt": 3, "chosen": "b", "rejected": "c"}', "p.jsonl:2: 'prompt' must be text or a list"),
    ('{"prompt": "a", "chosen": "b", "rejected": "c", "chosen_ids": [1, -2]}', r"'chosen_ids'\[1\] = -2"),
    ('{"prompt": "a", "chosen": "b", "rejected": "c", "rejected_ids": []}', "'rejected_ids' must be a non-empty"),
    ('{"prompt": "a", "chosen": "b", "rejected": "c", "id": 1.5}', "'id' must be"),
    ('{"prompt": "a", "chosen": "b", "rejected": "c", "id": "x"}', "p.jsonl:2: duplicate id 'x' .first on line 1"),
    ('{"chosen": "same", "rejected": "same and more"}', "p.jsonl:2: .* do not diverge"),
    ('{"chosen": "blue", "rejected": "green"}', "p.jsonl:2: .* share no prefix"),
    ('{"chosen": "a b", "rejected": [{"role": "user", "content": "a"}]}', "both be text or both be messages"),
])
def test_bad_lines_name_file_and_line(tmp_path: Path, line: str, match: str) -> None:
    path = write_jsonl(tmp_path / "p.jsonl", ['{"id": "x", "prompt": "a", "chosen": "b", "rejected": "c"}', line])
    with pytest.raises(ValueError, match=match):
        pairs.read_pairs(path)


def test_empty_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no pairs"):
        pairs.read_pairs(write_jsonl(tmp_path / "p.jsonl", ["", "  "]))


# --------------------------------------------------------------------------------------------------------------
# Token ids: TRL's own _prepare_dataset is the reference.


TEXT_ROWS = [{"prompt": "The sky is", "chosen": " blue.", "rejected": " green."},
             {"prompt": "Q: 2+2? A:", "chosen": " 4</s>", "rejected": " 5"},  # EOS already there: not doubled
             {"chosen": "The sky is blue.", "rejected": "The sky is green."}]
CHAT_ROWS = [{"prompt": USER, "chosen": [{"role": "assistant", "content": "It is blue."}],
              "rejected": [{"role": "assistant", "content": "It is green."}]},
             {"chosen": USER + [{"role": "assistant", "content": '{"Company": ["Apple"]}'}],
              "rejected": USER + [{"role": "assistant", "content": '{"Company": []}'}]}]


def _ours(rows: list[dict], tokenizer: object) -> list[tuple[list[int], list[int], list[int]]]:
    return [pairs.trl_token_ids(pairs.parse_pair(r, "row"), tokenizer) for r in rows]


def _trl(rows: list[dict], tokenizer: object) -> list[tuple[list[int], list[int], list[int]]]:
    """Each row as its own TRL dataset (a dataset has one shape: TRL looks at its first row only)."""
    return [trl_dpo_reference.trl_tokenize([r], tokenizer)[0] for r in rows]


@pytest.mark.parametrize("bos", [True, False])
def test_standard_token_ids_match_trl(bos: bool) -> None:
    tok = small_tokenizer(bos)
    ours = _ours(TEXT_ROWS, tok)
    assert ours == _trl(TEXT_ROWS, tok)
    eos = tok.eos_token_id
    for prompt_ids, chosen_ids, rejected_ids in ours:
        assert chosen_ids[-1] == eos and rejected_ids[-1] == eos and chosen_ids.count(eos) == 1
        assert (prompt_ids[0] == tok.bos_token_id) == bos


def test_chatml_token_ids_match_trl(qwen: transformers.PreTrainedTokenizerBase) -> None:
    ours = _ours(CHAT_ROWS, qwen)
    assert ours == _trl(CHAT_ROWS, qwen)
    prompt_ids, chosen_ids, _ = ours[0]
    assert qwen.decode(prompt_ids).endswith("<|im_start|>assistant\n")
    assert qwen.decode(chosen_ids) == "It is blue.<|im_end|>\n"  # the template's newline after <|im_end|> is trained


def test_r1_style_template_token_ids_match_trl() -> None:
    """The generation prompt ends with <think>\\n, the rendered conversation has none: TRL's prompt stops at
    <|Assistant|> and the model is trained without the <think>\\n it sees at inference."""
    tok = small_tokenizer(bos=False)
    ours = _ours(CHAT_ROWS, tok)
    assert ours == _trl(CHAT_ROWS, tok)
    prompt_ids, chosen_ids, _ = ours[0]
    assert tok.decode(prompt_ids).endswith("<|Assistant|>")
    assert tok.decode(chosen_ids) == "It is blue.</s>"


def test_verbatim_ids(qwen: transformers.PreTrainedTokenizerBase) -> None:
    sampled = [40, 41, 40, 41, 40]  # no EOS: the sample ran into max_new_tokens
    row = {**CHAT_ROWS[0], "rejected_ids": sampled}
    prompt_ids, chosen_ids, rejected_ids = pairs.trl_token_ids(pairs.parse_pair(row, "row"), qwen)
    trl_prompt, trl_chosen, _ = trl_dpo_reference.trl_tokenize([CHAT_ROWS[0]], qwen)[0]
    assert (prompt_ids, chosen_ids, rejected_ids) == (trl_prompt, trl_chosen, sampled)

    both = {**row, "chosen_ids": [7, 8, qwen.eos_token_id]}
    assert pairs.trl_token_ids(pairs.parse_pair(both, "row"), qwen) == (
        qwen.apply_chat_template(USER, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"],
        [7, 8, qwen.eos_token_id], sampled)

    with pytest.raises(ValueError, match="not a prefix"):  # R1-style: the text answer cannot share the prompt
        pairs.trl_token_ids(pairs.parse_pair(row, "row"), small_tokenizer(bos=False))


# --------------------------------------------------------------------------------------------------------------
# Repetition and the rejected sample.


def test_repetition_rate_definition() -> None:
    assert pairs.repetition_rate([]) == 0.0 and pairs.repetition_rate([1, 2, 3]) == 0.0
    assert pairs.repetition_rate(list(range(50))) == 0.0
    assert pairs.repetition_rate([1, 2, 3, 4, 1, 2, 3, 4]) == 1 / 5  # 5 4-grams, the last one repeats the first
    assert pairs.repetition_rate([7] * 10) == 6 / 7
    loop = [1, 2, 3] * 40  # period p = 3, L = 120: (L - p - n + 1) / (L - n + 1)
    assert pairs.repetition_rate(loop) == (120 - 3 - 4 + 1) / (120 - 4 + 1)
    assert pairs.repetition_rate([1, 2, 1, 2], n=2) == 1 / 3
    assert pairs.repetition_rate([1, 2, 3, 9, 4, 1, 2, 3, 4], ignore={9}) == 1 / 5  # ignored tokens dropped first
    with pytest.raises(ValueError):
        pairs.repetition_rate([1], n=0)


def _fire_answers() -> tuple[list[str], list[str]]:
    """(jaxfin's JSON target, input sentence) of every FIRE 7-type train and dev example."""
    rows = []
    for name in ("cleanlab_fire_train_7types.jsonl", "fire_dev_7types.jsonl"):
        with open(DATA / "fire_financial_ner" / name, encoding="utf-8") as f:
            rows += [json.loads(line) for line in f if line.strip()]
    return [fire.to_triple(r, FIRE_TYPES)[2] for r in rows], [r["text"] for r in rows]


def test_threshold_on_real_text(qwen: transformers.PreTrainedTokenizerBase) -> None:
    """Normal answers and sentences stay well below REPEAT_THRESHOLD; looping answers are well above it (with
    whitespace tokens ignored, as calibrated; figures measured in the comment above REPEAT_THRESHOLD)."""
    ws = pairs.whitespace_ids(qwen)
    assert qwen("\n      ")["input_ids"][0] in ws and qwen(" the")["input_ids"][0] not in ws
    rate = lambda text: pairs.repetition_rate(qwen(text)["input_ids"], ignore=ws)  # noqa: E731
    answers, sentences = _fire_answers()
    assert len(answers) == 2117 + 454
    assert max(map(rate, answers)) < 0.2  # measured 0.174: JSON answers never come close
    assert max(map(rate, sentences)) < pairs.REPEAT_THRESHOLD - 0.1  # measured 0.356: formulaic SEC filings
    with open(DATA / "financial_phrasebank" / "utf8_csv" / "sentences_50agree.csv", encoding="utf-8") as f:
        fpb = [row[0] for row in csv.reader(f)][1:]
    assert len(fpb) > 4000 and max(map(rate, fpb)) < pairs.REPEAT_THRESHOLD - 0.1  # measured 0.282

    # Loops as small models produce them, cut at 200 tokens: a mention repeated, a list growing, a late loop, and
    # JSON nesting ever deeper, whose growing indentation hides the loop unless whitespace is ignored.
    repeated = '{"Company": [' + ", ".join(['"Company"'] * 100)
    growing = '{"Company": [' + ", ".join('"' + " ".join(["Company"] * k) + '"' for k in range(1, 30))
    late = answers[2] + " The company reported revenue of $ 5 million for the year ." * 20  # 65 tokens, then a loop
    nested = "JSON:\n{\n" + "".join("  " * k + '"Company": {\n' for k in range(1, 60))
    for text, margin in ((repeated, 0.25), (growing, 0.25), (late, 0.1), (nested, 0.1)):
        ids = qwen(text)["input_ids"][:200]
        assert len(ids) == 200 and pairs.repetition_rate(ids, ignore=ws) > pairs.REPEAT_THRESHOLD + margin, text[:60]
    assert pairs.repetition_rate(qwen(nested)["input_ids"][:200]) < pairs.REPEAT_THRESHOLD  # whitespace counted


def test_pick_rejected() -> None:
    ok = {"token_ids": [1, 2, 3, 4, 5, 2], "finish_reason": "stop"}
    cut = {"token_ids": [1, 2, 3, 4, 5, 6], "finish_reason": "length"}
    loop = {"token_ids": [9, 8] * 10 + [2], "finish_reason": "stop"}
    assert pairs.pick_rejected([ok, ok]) is None
    assert pairs.pick_rejected([ok, loop, cut]) == 1  # the first qualifying one, in sample order
    assert pairs.pick_rejected([ok, cut, loop]) == 1
    assert pairs.rejection_reason(cut) == "length" and pairs.rejection_reason(loop) == "repeats"
    assert pairs.rejection_reason(ok) is None
    assert pairs.rejection_reason(ok, max_new_tokens=6) == "length"  # as many tokens as allowed
    drifting = {"token_ids": [t for k in range(8) for t in (5, 6, 7, 100 + k)],
                "finish_reason": "stop"}  # a loop whose 4th token drifts (an indentation growing)
    assert pairs.rejection_reason(drifting) is None
    assert pairs.rejection_reason(drifting, ignore=set(range(100, 108))) == "repeats"
    assert pairs.pick_rejected([ok, drifting], ignore=set(range(100, 108))) == 1
    assert pairs.pick_rejected([]) is None
    with pytest.raises(ValueError, match=r"samples\[1\]: sample finish_reason='eos'"):
        pairs.pick_rejected([ok, {"token_ids": [1], "finish_reason": "eos"}])
    with pytest.raises(ValueError, match="token_ids"):
        pairs.pick_rejected([{"finish_reason": "stop"}])
