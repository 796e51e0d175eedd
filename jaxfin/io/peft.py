"""PEFT LoRA adapters on disk (adapter_config.json + adapter_model.safetensors) <-> jaxfin adapter trees.

PEFT (huggingface/peft, tuners/lora) saves an adapter as
  adapter_config.json          {"peft_type": "LORA", "r", "lora_alpha", "use_rslora", "target_modules", ...}
  adapter_model.safetensors    base_model.model.model.layers.{i}.self_attn.q_proj.lora_A.weight  [R, in]
                               base_model.model.model.layers.{i}.self_attn.q_proj.lora_B.weight  [out, R]
and computes  y = W x + lora_B(lora_A(dropout(x))) * scaling,  scaling = lora_alpha / r (/ sqrt(r) with rsLoRA).
Our tree (lora.py) stores a = lora_A.weight.T [in, R] and b = lora_B.weight.T [R, out] stacked over layers, so the
conversion is a transpose per layer, kept in f32 (the dtype adapters train in).

On import, the modules an adapter targets are found as PEFT finds them (`check_target_module_exists` in
peft/tuners/tuners_utils.py: a list matches a module name or its dotted suffix, a string is a full regex match,
"all-linear" means every Linear but the output layer; exclude_modules and layers_to_transform apply), evaluated
over the decoder's module names. Projections an adapter leaves out in some layers (layers_to_transform, a regex
naming only some layers) get a = b = 0 there: the same function, and those zeros receive zero gradients, so
further training leaves them as they are. Anything that changes what the adapter computes beyond plain LoRA is
refused with one line.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np

from jaxfin.errors import UserError
from jaxfin.io.files import atomic_dir, read_json
from jaxfin.io.safetensors import Writer, read_header, read_tensor
from jaxfin.model import lora as lora_lib
from jaxfin.model.config import ModelConfig
from jaxfin.model.lora import LoraConfig
from jaxfin.model.params import LORA_TARGETS, PROJECTION, Params

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
PREFIX = "base_model.model."  # PeftModel -> LoraModel -> the transformers model

# adapter_config.json keys that, when set, make the adapter compute something other than plain LoRA on the
# seven projections: (key, what it is). `bias` and `peft_type` are checked separately.
_REFUSED = (
    ("use_dora", "DoRA (weight-decomposed LoRA)"),
    ("modules_to_save", "fully trained extra modules (modules_to_save)"),
    ("fan_in_fan_out", "transposed (Conv1D) base weights"),
    ("lora_bias", "trained LoRA biases (lora_bias)"),
    ("rank_pattern", "per-module ranks (rank_pattern)"),
    ("alpha_pattern", "per-module alphas (alpha_pattern)"),
    ("layer_replication", "replicated layers (layer_replication)"),
    ("trainable_token_indices", "trained token embeddings (trainable_token_indices)"),
    ("target_parameters", "LoRA on parameters (target_parameters)"),
    ("use_qalora", "QA-LoRA"),
    ("alora_invocation_tokens", "activated LoRA (alora_invocation_tokens)"),
    ("use_bdlora", "block-diagonal LoRA (use_bdlora)"),
    ("arrow_config", "Arrow routing (arrow_config)"),
)


def module_name(i: int, proj: str) -> str:
    """The transformers module name of projection `proj` in layer i (Llama / Qwen2 / Qwen3 alike)."""
    return f"model.layers.{i}.{PROJECTION[proj].block}.{proj}"


def tensor_names(i: int, proj: str) -> tuple[str, str]:
    """PEFT's saved names of (lora_A.weight, lora_B.weight) for projection `proj` of layer i."""
    base = PREFIX + module_name(i, proj)
    return f"{base}.lora_A.weight", f"{base}.lora_B.weight"


# --------------------------------------------------------------------------------------------------------------
# Export.


def adapter_config(lcfg: LoraConfig, base_model_name_or_path: str) -> dict[str, Any]:
    """adapter_config.json for PEFT's LoraConfig: the fields that define the adapter, plus the defaults older PEFT
    versions and vLLM read explicitly. No peft_version: PEFT fills it in on load, and older versions would warn
    about an unknown key."""
    alpha = int(lcfg.alpha) if float(lcfg.alpha).is_integer() else float(lcfg.alpha)
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model_name_or_path,
        "revision": None,
        "inference_mode": True,
        "r": lcfg.rank,
        "lora_alpha": alpha,
        "lora_dropout": lcfg.dropout,
        "use_rslora": lcfg.rslora,
        "target_modules": [t for t in LORA_TARGETS if t in lcfg.targets],
        "bias": "none",
        "fan_in_fan_out": False,
        "modules_to_save": None,
        "init_lora_weights": True,
        "layers_to_transform": None,
        "layers_pattern": None,
        "rank_pattern": {},
        "alpha_pattern": {},
        "use_dora": False,
    }


def state_dict(lora: Params) -> Iterator[tuple[str, np.ndarray]]:
    """(PEFT tensor name, f32 [R, in] or [out, R]) for every adapted projection, layer by layer."""
    layers = lora["layers"]
    num_layers = next(iter(layers.values()))["a"].shape[0]
    for i in range(num_layers):
        for proj in LORA_TARGETS:
            if proj in layers:
                a_name, b_name = tensor_names(i, proj)
                yield a_name, np.ascontiguousarray(np.asarray(layers[proj]["a"][i], np.float32).T)
                yield b_name, np.ascontiguousarray(np.asarray(layers[proj]["b"][i], np.float32).T)


def save(out_dir: str | os.PathLike, lora: Params, lcfg: LoraConfig, *, base_model_name_or_path: str) -> None:
    """Writes a PEFT adapter directory (atomically: a temp dir renamed into place, see files.atomic_dir)."""
    tensors = list(state_dict(lora))
    with atomic_dir(out_dir) as tmp:
        with Writer(tmp / WEIGHTS_NAME, [(n, t.shape, t.dtype) for n, t in tensors]) as w:
            for name, t in tensors:
                w.write(name, t)
        config = adapter_config(lcfg, base_model_name_or_path)
        (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")


# --------------------------------------------------------------------------------------------------------------
# Import.


def read_config(adapter_dir: str | os.PathLike) -> dict[str, Any]:
    """adapter_config.json, checked to be a plain LoRA adapter we can run; one UserError line otherwise."""
    path = Path(adapter_dir) / CONFIG_NAME
    if not path.is_file():
        raise UserError(f"{adapter_dir}: no {CONFIG_NAME} (expected a PEFT adapter directory)")
    config = read_json(path)
    if not isinstance(config, dict):
        raise UserError(f"{path}: not a JSON object")
    if config.get("peft_type") != "LORA":
        raise UserError(f"{path}: peft_type {config.get('peft_type')!r} is not supported (only LORA adapters)")
    for key, what in _REFUSED:
        value = config.get(key)
        if value:  # None, False, [] and {} are the defaults
            raise UserError(f"{path}: {key}={json.dumps(value)}: {what} is not supported; only plain LoRA "
                            f"adapters import (merge this one in PEFT with merge_and_unload and import the model)")
    if config.get("bias", "none") != "none":
        raise UserError(f"{path}: bias={config['bias']!r}: trained biases are not supported (only bias \"none\")")
    for key in ("r", "lora_alpha"):
        if not isinstance(config.get(key), (int, float)) or isinstance(config.get(key), bool):
            raise UserError(f"{path}: {key} must be a number, got {config.get(key)!r}")
    for key in ("target_modules", "exclude_modules"):
        value = config.get(key)
        if not (value is None or isinstance(value, str) or
                (isinstance(value, list) and all(isinstance(v, str) for v in value))):
            raise UserError(f"{path}: {key} must be a list of module names or a regex string, got {value!r}")
    if config.get("target_modules") is None:
        raise UserError(f"{path}: target_modules is not set")
    return config


def module_names(cfg: ModelConfig) -> list[str]:
    """Every module name of the transformers causal LM (as PeftModel iterates them), for target matching."""
    names = ["model", "model.embed_tokens", "model.layers", "model.norm", "model.rotary_emb", "lm_head"]
    for i in range(cfg.num_layers):
        layer = f"model.layers.{i}"
        names += [layer, f"{layer}.self_attn", f"{layer}.mlp", f"{layer}.mlp.act_fn", f"{layer}.input_layernorm",
                  f"{layer}.post_attention_layernorm"]
        names += [f"{layer}.self_attn.{n}" for n in ("q_norm", "k_norm") if cfg.qk_norm]
        names += [module_name(i, p) for p in LORA_TARGETS]
    return names


def _suffix_match(names: list[str], key: str) -> bool:
    return key in names or any(key.endswith(f".{n}") for n in names)


def _layer_allowed(config: Mapping[str, Any], key: str) -> bool:
    """layers_to_transform / layers_pattern, as PEFT reads the layer index out of the module name."""
    indexes = config.get("layers_to_transform")
    if indexes is None or indexes == []:
        return True
    patterns = config.get("layers_pattern")
    if not patterns:
        match = re.match(r".*?\.[^.]*\.(?P<idx>\d+)\.", key)
    else:
        match = None
        for pattern in [patterns] if isinstance(patterns, str) else patterns:
            match = re.match(rf"(?:^|.*?\.){pattern}\.(?P<idx>\d+)\.", key)
            if match is not None:
                break
    if match is None:
        return False
    i = int(match.group("idx"))
    return i == indexes if isinstance(indexes, int) else i in indexes


def targets_module(config: Mapping[str, Any], key: str) -> bool:
    """Whether PEFT puts a LoRA layer on module `key` (peft.tuners.tuners_utils.check_target_module_exists, with
    "all-linear" meaning the seven projections: every Linear of these models but lm_head)."""
    exclude = config.get("exclude_modules")
    if exclude and (re.fullmatch(exclude, key) if isinstance(exclude, str) else _suffix_match(exclude, key)):
        return False
    targets = config["target_modules"]
    if isinstance(targets, str):
        if targets.lower() == "all-linear":
            return key.rsplit(".", 1)[-1] in LORA_TARGETS and key.startswith("model.layers.")
        return re.fullmatch(targets, key) is not None
    return _suffix_match(targets, key) and (key in targets or _layer_allowed(config, key))


def targeted(config: Mapping[str, Any], cfg: ModelConfig, where: str) -> dict[str, list[int]]:
    """{projection: [layers it is adapted in]} (in LORA_TARGETS order); refuses targets other than projections."""
    try:
        hits = [k for k in module_names(cfg) if targets_module(config, k)]
    except re.error as e:
        raise UserError(f"{where}: target_modules / exclude_modules is not a valid regex ({e})") from None
    projections = {module_name(i, p): (i, p) for i in range(cfg.num_layers) for p in LORA_TARGETS}
    others = [k for k in hits if k not in projections]
    if others:
        raise UserError(f"{where}: target_modules {json.dumps(config['target_modules'])} selects {others[0]}; only "
                        f"the projections {', '.join(LORA_TARGETS)} can carry adapters here")
    out: dict[str, list[int]] = {}
    for i, p in sorted((projections[k] for k in hits), key=lambda ip: (LORA_TARGETS.index(ip[1]), ip[0])):
        out.setdefault(p, []).append(i)
    targets = config["target_modules"]
    names = module_names(cfg)
    unknown = [t for t in targets if not any(_suffix_match([t], n) for n in names)] if isinstance(targets, list) else []
    if unknown:
        what = f"target_modules names {', '.join(map(repr, unknown))}, which {'is' if len(unknown) == 1 else 'are'} " \
               "no module of this model"
        if not out:
            raise UserError(f"{where}: {what}; the modules LoRA can adapt here are {', '.join(LORA_TARGETS)}")
        warnings.warn(f"{where}: {what}; ignored, as PEFT does (the adapter has no weights for it)", stacklevel=2)
    if not out:
        raise UserError(f"{where}: target_modules {json.dumps(targets)} selects none of the model's projections "
                        f"({', '.join(LORA_TARGETS)})")
    return out


def load(adapter_dir: str | os.PathLike, cfg: ModelConfig) -> tuple[Params, LoraConfig, str | None]:
    """(adapter tree of numpy f32 arrays, LoraConfig, the adapter's base_model_name_or_path) of a PEFT LoRA
    adapter for a model with config `cfg`."""
    d = Path(adapter_dir)
    config = read_config(d)
    weights = d / WEIGHTS_NAME
    if not weights.is_file():
        if (d / "adapter_model.bin").is_file():
            raise UserError(f"{d}: only adapter_model.bin (pickle) found; jaxfin reads safetensors only. Convert "
                            f"once in PEFT: PeftModel.from_pretrained(base, DIR).save_pretrained(OUT)")
        raise UserError(f"{d}: no {WEIGHTS_NAME}")
    infos = read_header(weights)
    where = str(d / CONFIG_NAME)
    layers_of = targeted(config, cfg, where)
    R = int(config["r"])
    if R != config["r"] or R < 1:
        raise UserError(f"{where}: r must be a positive integer, got {config['r']!r}")
    expected = {n for p, ls in layers_of.items() for i in ls for n in tensor_names(i, p)}
    missing = sorted(expected - set(infos))
    if missing:
        raise UserError(f"{weights}: missing tensor {missing[0]}" + (f" (and {len(missing) - 1} more)"
                                                                      if len(missing) > 1 else ""))
    unexpected = sorted(set(infos) - expected)
    if unexpected:
        raise UserError(f"{weights}: unexpected tensor {unexpected[0]} (not a lora_A/lora_B weight of a module "
                        f"that target_modules selects)")
    dropout = config.get("lora_dropout") or 0.0
    try:
        lcfg = LoraConfig(rank=R, alpha=float(config["lora_alpha"]), rslora=bool(config.get("use_rslora")),
                          dropout=float(dropout), targets=tuple(layers_of))
    except ValueError as e:
        raise UserError(f"{where}: {e}") from None
    tree: Params = {"layers": {}}
    for p, shapes in lora_lib.shapes(cfg, lcfg)["layers"].items():
        a = np.zeros(shapes["a"].shape, np.float32)  # [L, in, R]; layers the adapter skips stay 0: no delta
        b = np.zeros(shapes["b"].shape, np.float32)  # [L, R, out]
        for i in layers_of[p]:
            a_name, b_name = tensor_names(i, p)
            for name, shape in ((a_name, a.shape[:0:-1]), (b_name, b.shape[:0:-1])):
                if infos[name].shape != shape:
                    raise UserError(f"{weights}: tensor {name} has shape {list(infos[name].shape)}, expected "
                                    f"{list(shape)} (r={R} and the base model's {p})")
            a[i] = read_tensor(infos[a_name]).astype(np.float32).T
            b[i] = read_tensor(infos[b_name]).astype(np.float32).T
        tree["layers"][p] = {"a": a, "b": b}
    return tree, lcfg, config.get("base_model_name_or_path") or None
