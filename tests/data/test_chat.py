"""Chat-template targets and loss masks (Qwen2.5 and an R1-distill-style template), packing, batches."""

from __future__ import annotations


import numpy as np
import pytest
from transformers import AutoTokenizer

from jaxfin import synthetic
from jaxfin.data import batches, chat, packing
from jaxfin.errors import UserError
from jaxfin.tasks import fire
from jaxfin.tasks.base import data_path


QWEN_DIR = data_path("tokenizers",
                        "qwen2.5_bpe_from_qwen2.5-vl")
OUTPUT = '{"Company": ["Apex Dynamics"], "Money": ["$4 million"]}'
MESSAGES = [{"role": "user", "content": "Extract the entities.\n\nText: Apex Dynamics raised $4 million."}]


@pytest.fixture(scope="module")
def qwen():
    return AutoTokenizer.from_pretrained(QWEN_DIR)


@pytest.fixture(scope="module")
def r1_style():
    """The tiny tokenizer: byte-level BPE with DeepSeek-R1-distill-style specials and think-opening prompt."""
    train, _ = synthetic.make_dataset(seed=0, num_train=60, num_eval=0)
    corpus = [e["text"] for e in train] + [MESSAGES[0]["content"], OUTPUT]
    return synthetic.train_tokenizer(corpus, vocab_size=400)


def _masked_text(tok, ids, mask) -> str:
    return tok.decode([i for i, m in zip(ids, mask) if m], skip_special_tokens=False)


def test_qwen_target_is_rendered_turn_up_to_im_end(qwen):
    ids, mask = chat.encode(qwen, MESSAGES, OUTPUT)
    prompt = chat.prompt_ids(qwen, MESSAGES)
    assert prompt == qwen.encode(qwen.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False),
                                 add_special_tokens=False)
    n = len(prompt)
    assert ids[:n] == prompt and mask == [0] * n + [1] * (len(ids) - n)
    assert _masked_text(qwen, ids, mask) == OUTPUT + "<|im_end|>"  # the "\n" after <|im_end|> is never trained
    assert ids[-1] == qwen.convert_tokens_to_ids("<|im_end|>") == qwen.eos_token_id


def test_stop_token_is_appended_when_the_turn_has_none(qwen):
    endoftext = qwen.convert_tokens_to_ids("<|endoftext|>")
    ids, mask = chat.encode(qwen, MESSAGES, OUTPUT, eos_ids=[endoftext])
    assert _masked_text(qwen, ids, mask) == OUTPUT + "<|im_end|>\n<|endoftext|>"
    assert ids[-1] == endoftext
    # Both ids given (as in Qwen2.5's generation_config): cut at the first one the turn contains.
    ids, mask = chat.encode(qwen, MESSAGES, OUTPUT, eos_ids=[endoftext, qwen.eos_token_id])
    assert _masked_text(qwen, ids, mask) == OUTPUT + "<|im_end|>"


def test_r1_style_template_closes_an_empty_think_block(r1_style):
    prompt_text = r1_style.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False)
    assert prompt_text.endswith("<｜Assistant｜><think>\n")
    ids, mask = chat.encode(r1_style, MESSAGES, OUTPUT)
    n = len(chat.prompt_ids(r1_style, MESSAGES))
    assert sum(mask) == len(ids) - n and not any(mask[:n])
    assert _masked_text(r1_style, ids, mask) == "</think>\n\n" + OUTPUT + synthetic.EOS
    assert ids[-1] == r1_style.eos_token_id
    # The whole sequence reads as prompt + closed think block + answer; what the parser recovers is the output.
    assert r1_style.decode(ids, skip_special_tokens=False) == prompt_text + "</think>\n\n" + OUTPUT + synthetic.EOS
    assert fire.parse_completion(r1_style.decode(ids[n:], skip_special_tokens=True)) is not None


def test_template_without_continuation_is_a_user_error(qwen, r1_style):
    tok = synthetic.train_tokenizer(["a b c"], vocab_size=300)
    tok.chat_template = "{% for m in messages %}[{{ m['role'] }}]{{ m['content'] }}{% endfor %}" \
                        "{% if add_generation_prompt %}ANSWER:{% endif %}"
    with pytest.raises(UserError, match="continuation of the generation prompt"):
        chat.encode(tok, MESSAGES, OUTPUT)
    tok.chat_template = None
    with pytest.raises(UserError, match="chat template"):
        chat.encode(tok, MESSAGES, OUTPUT)


def test_encode_task_masks_the_json_target(r1_style):
    examples, _ = synthetic.make_dataset(seed=3, num_train=5, num_eval=0)
    types = list(synthetic.TYPES)
    for ex, (ids, mask) in zip(examples, chat.encode_task(fire.task(types), examples, r1_style), strict=True):
        instruction, text, output = fire.to_triple(ex, types)
        assert _masked_text(r1_style, ids, mask) == "</think>\n\n" + output + synthetic.EOS
        assert fire.parse_completion(r1_style.decode(ids, skip_special_tokens=True).split("<think>")[-1]) == {
            t: list(ex["entities"][t] or []) for t in types
        }


# --------------------------------------------------------------------------------------------------------------
# Packing and batches on hand-made examples: ids encode (example, position) so every token is traceable.


def _examples(lengths: list[int]) -> list[chat.Encoded]:
    out = []
    for e, n in enumerate(lengths):
        ids = [100 * (e + 1) + t for t in range(n)]
        prompt = n // 2
        out.append((ids, [0] * prompt + [1] * (n - prompt)))
    return out


def test_pack_keeps_examples_whole_and_separate():
    examples = _examples([5, 3, 7, 2, 8, 4, 6, 1])
    p = packing.pack(examples, seq_len=8, pad_id=-1)
    assert p.num_examples == 8 and p.num_dropped == 0
    seen = set()
    for r in range(p.num_rows):
        tok, tgt, lm = p.tokens_RT[r], p.targets_RT[r], p.loss_mask_RT[r]
        seg, pos = p.segment_ids_RT[r], p.positions_RT[r]
        used = seg > 0
        assert not used[np.argmin(used):].any() or used.all()  # padding only at the end
        assert (tok[~used] == -1).all() and (lm[~used] == 0).all() and (pos[~used] == 0).all()
        n_seg = seg.max()
        assert sorted(set(seg[used])) == list(range(1, n_seg + 1))
        for s in range(1, n_seg + 1):
            at = np.nonzero(seg == s)[0]
            assert (np.diff(at) == 1).all()  # contiguous
            e = tok[at[0]] // 100 - 1
            ids, mask = examples[e]
            assert tok[at].tolist() == ids and pos[at].tolist() == list(range(len(ids)))
            assert tgt[at[:-1]].tolist() == ids[1:]  # next token of the same example
            assert lm[at[:-1]].tolist() == mask[1:] and lm[at[-1]] == 0  # last token predicts nothing
            assert tgt[at[-1]] == -1  # never the first token of the next segment
            seen.add(e)
    assert seen == set(range(8))
    assert p.tokens_RT.dtype == p.targets_RT.dtype == p.segment_ids_RT.dtype == p.positions_RT.dtype == np.int32
    assert p.loss_mask_RT.dtype == np.float32
    # First fit: 5+3 | 7+1 | 2+4 | 8 | 6 -> 5 rows, deterministic.
    assert p.num_rows == 5


def test_pack_drops_long_examples_with_one_warning():
    with pytest.warns(UserWarning, match=r"dropped 2 of 5 .*train\.seq_len=6"):
        p = packing.pack(_examples([3, 7, 6, 9, 2]), seq_len=6)
    assert p.num_dropped == 2 and p.num_examples == 3
    with pytest.raises(UserError, match=r"train\.seq_len=4"):
        packing.pack(_examples([5, 7]), seq_len=4)


@pytest.fixture(scope="module")
def packed() -> packing.Packed:
    rng = np.random.default_rng(0)
    return packing.pack(_examples(rng.integers(2, 12, size=60).tolist()), seq_len=16)


def test_batches_cover_every_row_once_per_epoch(packed):
    B = 8
    per_epoch = batches.steps_per_epoch(packed.num_rows, B)
    assert per_epoch == -(-packed.num_rows // B)
    epoch = list(batches.batches(packed, B, seed=1, stop=per_epoch))
    for b in epoch:
        assert set(b) == set(packing.BATCH_KEYS) and all(v.shape == (B, 16) for v in b.values())
        assert b["loss_mask_BT"].dtype == np.float32 and b["tokens_BT"].dtype == np.int32
    used = np.concatenate([b["segment_ids_BT"].max(1) > 0 for b in epoch])
    assert used.sum() == packed.num_rows and not used[packed.num_rows:].any()  # only the last batch is padded
    rows = {tuple(r) for b in epoch for r, u in zip(b["tokens_BT"], b["segment_ids_BT"].max(1) > 0) if u}
    assert rows == {tuple(r) for r in packed.tokens_RT}
    pad = epoch[-1]
    k = packed.num_rows % B
    if k:
        assert (pad["loss_mask_BT"][k:] == 0).all() and (pad["segment_ids_BT"][k:] == 0).all()


def test_shuffle_is_deterministic_per_seed_and_epoch(packed):
    a = list(batches.batches(packed, 4, seed=7, stop=6))
    b = list(batches.batches(packed, 4, seed=7, stop=6))
    c = list(batches.batches(packed, 4, seed=8, stop=6))
    assert all((x[k] == y[k]).all() for x, y in zip(a, b) for k in packing.BATCH_KEYS)
    assert any((x["tokens_BT"] != y["tokens_BT"]).any() for x, y in zip(a, c))
    per_epoch = batches.steps_per_epoch(packed.num_rows, 4)
    e0, e1 = batches.batch_at(packed, 0, 4, seed=7), batches.batch_at(packed, per_epoch, 4, seed=7)
    assert (e0["tokens_BT"] != e1["tokens_BT"]).any()  # a new order each epoch


def test_resume_from_a_saved_position_gives_the_same_batches(packed):
    run = list(batches.batches(packed, 4, seed=3, stop=20))
    resumed = batches.batches(packed, 4, seed=3, start=13)
    for i in range(13, 20):
        nxt = next(resumed)
        assert all((nxt[k] == run[i][k]).all() for k in packing.BATCH_KEYS)


@pytest.mark.parametrize("processes", [2, 4])
def test_process_slices_concatenate_to_the_global_batch(packed, processes):
    per_epoch = batches.steps_per_epoch(packed.num_rows, 8)
    for index in (0, per_epoch - 1, per_epoch + 2):  # includes the padded last batch of epoch 0
        full = batches.batch_at(packed, index, 8, seed=5)
        parts = [batches.batch_at(packed, index, 8, seed=5, process_index=p, process_count=processes)
                 for p in range(processes)]
        for k in packing.BATCH_KEYS:
            assert all(part[k].shape[0] == 8 // processes for part in parts)
            np.testing.assert_array_equal(np.concatenate([part[k] for part in parts]), full[k])
    with pytest.raises(UserError, match="batch_size"):
        batches.batch_at(packed, 0, 6, seed=5, process_count=4)
