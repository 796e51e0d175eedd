"""Self-made assets for the embedded tiny run: a financial NER set, a tokenizer trained on it, a random model.

Nothing here is third-party data: every company, person and product name below is invented for this project
(places are ordinary geographic names), and the sentences come from short regular templates so that a tiny
model learns the answer format within a few hundred steps (copying mentions exactly takes longer). The
tokenizer is a byte-level BPE (Radford et al. 2019) trained with the `tokenizers` library and wrapped with
special tokens and a chat template in the style of the DeepSeek-R1 distill models (generation prompt
"<｜Assistant｜><think>\\n"). The model is a random LlamaForCausalLM (llama3 RoPE scaling) written as an HF
directory from numpy, so no torch is needed.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax
import numpy as np

from jaxfin.io import hf as hf_io
from jaxfin.model import params as params_lib
from jaxfin.model.config import ModelConfig
from jaxfin.tasks import fire

TYPES = fire.TYPES
BOS, EOS, PAD = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜▁pad▁｜>"
USER, ASSISTANT, THINK, THINK_END = "<｜User｜>", "<｜Assistant｜>", "<think>", "</think>"

# Our own short template in the DeepSeek-R1 distill style: system text first, think content stripped from
# assistant turns, generation prompt opening a think block.
CHAT_TEMPLATE = """\
{{- bos_token -}}
{%- for m in messages if m['role'] == 'system' -%}{{- m['content'] -}}{%- endfor -%}
{%- for m in messages -%}
  {%- if m['role'] == 'user' -%}
    {{- '<｜User｜>' + m['content'] -}}
  {%- elif m['role'] == 'assistant' -%}
    {{- '<｜Assistant｜>' + m['content'].split('</think>')[-1].lstrip() + eos_token -}}
  {%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}{{- '<｜Assistant｜><think>\\n' -}}{%- endif -%}
"""

COMPANIES = (
    "Harbor Bancorp", "Crestline Energy", "Bluefield Motors", "Veritas Pharma", "Orion Semiconductor",
    "Summit Foods", "Kestrel Airlines", "Pinecrest Insurance", "Lumen Telecom", "Granite Steel",
    "Solace Health", "Tidewater Logistics", "Redwood Retail", "Atlas Mining", "Nimbus Software",
    "Copperleaf Bank", "Meridian Chemicals", "Silverline Media", "Falcon Aerospace", "Evergreen Utilities",
    "Beacon Brewing", "Ironbridge Capital", "Sapphire Hotels", "Northstar Rail", "Willow Apparel",
    "Cobalt Robotics", "Driftwood Games", "Ember Solar", "Horizon Shipping", "Quillon Biotech",
)
FIRST_NAMES = (
    "Maria", "James", "Aiko", "Daniel", "Priya", "Lars", "Fatima", "Chen", "Olivia", "Mateo", "Hannah",
    "Kwame", "Sofia", "Ravi", "Elena", "Tomas",
)
LAST_NAMES = (
    "Okafor", "Lindqvist", "Tanaka", "Moreau", "Schmidt", "Patel", "Alvarez", "Novak", "Kowalski", "Haddad",
    "Brennan", "Castillo", "Varga", "Mensah", "Dubois", "Ferreira",
)
LOCATIONS = (
    "New York", "London", "Tokyo", "Frankfurt", "Singapore", "Texas", "Ohio", "Brazil", "Canada", "India",
    "Germany", "Mexico", "Sydney", "Toronto", "Chicago", "Dubai", "Seoul", "Zurich", "California", "Kenya",
)
PRODUCTS = (
    "Zephyr SUV", "DataLake Pro", "Helix vaccine", "Quanta chip", "Sparrow drone", "LedgerOne", "Vista TV",
    "Orbit router", "Trailblazer truck", "FreshBox", "PayWave", "Titan battery", "Aria headphones",
    "StreamBox", "Nova tablet", "Cirrus app",
)
MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December")
UNITS = ("employees", "shares", "stores", "vehicles", "tons", "barrels", "units", "jobs")

# {C}/{C2} company, {P}/{P2} person, {L}/{L2} location, {R} product, {D} date, {M} money, {Q} quantity.
TEMPLATES = (
    "{C} reported revenue of {M} in {D}.",
    "{P}, chief executive of {C}, resigned in {D}.",
    "{C} will cut {Q} in {L}.",
    "{C} agreed to buy {C2} for {M}.",
    "{C} launched the {R} in {L} on {D}.",
    "Shares of {C} rose {Q} after {P} joined the board.",
    "{C} opened a new plant in {L}, adding {Q}.",
    "{P} said {C} expects sales of {M} for {D}.",
    "{C} recalled {Q} of its {R}.",
    "In {D}, {C} raised {M} from investors in {L}.",
    "{C} sold its {R} unit to {C2}.",
    "{P} was named chief financial officer of {C}.",
    "{C} and {C2} signed a supply deal in {L}.",
    "{C} posted a net loss of {M} in {D}.",
    "The {R} from {C} sold {Q} in {D}.",
    "{C} moved its headquarters from {L} to {L2}.",
    "{P} and {P2} left {C} in {D}.",
    "Analysts expect {C} to ship {Q} of the {R} by {D}.",
    "Markets in {L} were quiet on {D}.",
    "{C} hired {Q} in {L} during {D}.",
    "{P} bought {Q} of {C} for {M}.",
    "The company did not give a forecast.",
)
SLOT_TYPES = {"C": "Company", "P": "Person", "L": "Location", "R": "Product", "D": "Date", "M": "Money",
              "Q": "Quantity"}


@dataclasses.dataclass(frozen=True)
class TinyAssets:
    train: str  # canonical NER JSONL
    eval: str  # canonical NER JSONL
    model: str  # HF model directory (config, generation config, safetensors, tokenizer files)


def _value(slot: str, rng: np.random.Generator, after: str) -> str:
    """A random mention for a slot; `after` (the text before it) picks a date form that reads naturally."""
    def pick(options: tuple[str, ...]) -> str:
        return options[int(rng.integers(len(options)))]

    if slot == "C":
        return pick(COMPANIES)
    if slot == "P":
        return f"{pick(FIRST_NAMES)} {pick(LAST_NAMES)}"
    if slot == "L":
        return pick(LOCATIONS)
    if slot == "R":
        return pick(PRODUCTS)
    year = int(rng.integers(2015, 2026))
    if slot == "D":
        kind = 0 if after.endswith("on ") else int(rng.integers(1, 4))
        return (f"{pick(MONTHS)} {int(rng.integers(1, 29))}, {year}", f"{pick(MONTHS)} {year}",
                f"Q{int(rng.integers(1, 5))} {year}", f"fiscal {year}")[kind]
    if slot == "M":
        whole = rng.random() < 0.6
        amount = f"{rng.integers(1, 100)}" if whole else f"{rng.integers(1, 100)}.{rng.integers(1, 10)}"
        return f"{pick(('$', '$', '€', '£'))}{amount} {pick(('million', 'billion'))}"
    if after.endswith("rose ") or rng.random() < 0.2:
        return f"{int(rng.integers(1, 60))}%"
    return f"{int(rng.integers(2, 999)):,}{pick(('', ',000'))} {pick(UNITS)}"


def make_example(rng: np.random.Generator) -> tuple[str, dict[str, list[str] | None]]:
    """One sentence from a random template, with its entities by type (None where a type is absent)."""
    template = TEMPLATES[int(rng.integers(len(TEMPLATES)))]
    text, found, used = template, [], set()
    while "{" in text:
        start = text.index("{")
        slot = text[start + 1 : text.index("}", start)]
        value = _value(slot[0], rng, text[:start])
        while value in used:  # {C} and {C2} must differ, else the sentence reads oddly
            value = _value(slot[0], rng, text[:start])
        used.add(value)
        text = text.replace("{" + slot + "}", value, 1)
        found.append((start, SLOT_TYPES[slot[0]], value))
    entities: dict[str, list[str] | None] = {t: None for t in TYPES}
    for _, type_, value in sorted(found):
        entities[type_] = [*(entities[type_] or []), value]
    return text, entities


def make_dataset(seed: int, num_train: int = 400, num_eval: int = 60) -> tuple[list[dict], list[dict]]:
    """Canonical NER examples {"id", "text", "entities"}; eval sentences never occur in train."""
    rng = np.random.default_rng([seed, 1])
    seen, rows = set(), []
    while len(rows) < num_train + num_eval:
        text, entities = make_example(rng)
        if text not in seen:
            seen.add(text)
            rows.append((text, entities))
    train = [{"id": f"tiny-train-{i}", "text": t, "entities": e} for i, (t, e) in enumerate(rows[:num_train])]
    dev = [{"id": f"tiny-eval-{i}", "text": t, "entities": e} for i, (t, e) in enumerate(rows[num_train:])]
    return train, dev


def train_tokenizer(corpus: list[str], vocab_size: int = 1024) -> Any:
    """Byte-level BPE trained on `corpus`, as a transformers fast tokenizer with R1-distill-style specials."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = [BOS, EOS, PAD, USER, ASSISTANT]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - 2, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer)
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD, model_max_length=2048,
        additional_special_tokens=[USER, ASSISTANT],
    )
    wrapped.add_tokens([THINK, THINK_END])  # like the R1 distills: added, but not special (they decode visibly)
    wrapped.chat_template = CHAT_TEMPLATE
    return wrapped


def hf_config(vocab_size: int, bos_id: int, eos_id: int) -> dict[str, Any]:
    """config.json of the tiny LlamaForCausalLM (llama3 RoPE scaling, grouped-query attention)."""
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": vocab_size,
        "hidden_size": 128, "intermediate_size": 344, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "head_dim": 32, "hidden_act": "silu", "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
        "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 256},
        "attention_bias": False, "mlp_bias": False, "tie_word_embeddings": False, "initializer_range": 0.02,
        "bos_token_id": bos_id, "eos_token_id": eos_id, "torch_dtype": "float32", "use_cache": True,
    }


def random_params(cfg: ModelConfig, seed: int) -> params_lib.Params:
    """Random params with fan-in scaling (LeCun normal: std 1/sqrt(fan_in); embeddings std 1; norm weights
    1 + 0.1 normal), drawn with numpy over params.param_shapes.

    Why not params.init_params (std 0.02 everywhere): behind the final RMSNorm a logit is at most
    |h| * |lm_head row| = sqrt(D) * 0.02 sqrt(D) = 2.6 for D = 128, so LoRA on such a frozen base cannot get the
    loss below ~4.9 nats on a 1024-token vocabulary; with fan-in scaling the bound is sqrt(D) = 11 and attention
    scores start non-uniform. numpy also makes it milliseconds instead of seconds of per-leaf jax dispatch, and
    the same bytes on every platform and jax version."""
    rng = np.random.default_rng([seed, 2])
    fan_in_axes = {"wo_NHD": 2, "w_down_FD": 1}  # leading axes (after L) that are contracted; others: axis D

    def leaf(path: tuple, spec: jax.ShapeDtypeStruct) -> np.ndarray:
        name, shape = path[-1].key, spec.shape
        x = rng.standard_normal(shape, dtype=np.float32)
        if "norm" in name:
            return 1.0 + 0.1 * x
        if name == "embed_VD":
            return x
        if name == "lm_head_VD" or name[0] == "b":
            return x / np.float32(np.sqrt(cfg.hidden_size))
        fan_in = np.prod(shape[1 : 1 + fan_in_axes.get(name, 1)])  # layer weights are stacked on a leading L
        return x / np.float32(np.sqrt(fan_in))

    return jax.tree_util.tree_map_with_path(leaf, params_lib.param_shapes(cfg))


def write_model(out_dir: str, tokenizer: Any, seed: int) -> None:
    """Random params -> model.safetensors (via io/hf.state_dict_from_params) + config.json +
    generation_config.json."""
    from safetensors.numpy import save_file

    bos_id, eos_id = tokenizer.convert_tokens_to_ids(BOS), tokenizer.convert_tokens_to_ids(EOS)
    hf = hf_config(len(tokenizer), bos_id, eos_id)
    cfg = ModelConfig.from_hf(hf)
    params = random_params(cfg, seed)
    state = {name: np.ascontiguousarray(w, np.float32) for name, w in hf_io.state_dict_from_params(params, cfg)}
    save_file(state, os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(hf, f, indent=2)
    with open(os.path.join(out_dir, "generation_config.json"), "w") as f:
        json.dump({"bos_token_id": bos_id, "eos_token_id": eos_id, "do_sample": False}, f, indent=2)


def write_tiny_assets(out_dir: str, seed: int = 0) -> TinyAssets:
    """Writes OUT/train.jsonl, OUT/eval.jsonl and OUT/model/ (HF dir with tokenizer); deterministic in `seed`."""
    train, dev = make_dataset(seed)
    model_dir = os.path.join(out_dir, "model")
    os.makedirs(model_dir, exist_ok=True)
    paths = TinyAssets(os.path.join(out_dir, "train.jsonl"), os.path.join(out_dir, "eval.jsonl"), model_dir)
    for path, rows in ((paths.train, train), (paths.eval, dev)):
        with open(path, "w") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    # The tokenizer sees what it will encode: every message of the training prompts and the JSON targets.
    corpus = []
    for ex in train:
        instruction, text, output = fire.to_triple(ex, list(TYPES))
        corpus += [m["content"] for m in fire.prompt_messages(instruction, text)] + [output]
    tokenizer = train_tokenizer(corpus)
    tokenizer.save_pretrained(model_dir)
    write_model(model_dir, tokenizer, seed)
    return paths
