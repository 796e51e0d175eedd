"""Test setup: 8 simulated CPU devices (for the 1-vs-8-device checks) and a persistent compilation cache.

Everything goes through environment variables set before jax is imported, so the subprocesses some tests start
(real CLIs, several processes) inherit the same settings. The cache lives outside the checkout, so a fresh clone
on the same machine reuses earlier compilations; set JAX_COMPILATION_CACHE_DIR to put it elsewhere.
"""

import os


os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.expanduser("~/.cache/jaxfin/jax-test-cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")


import pytest  # noqa: E402  (after the environment: jax must not be imported before it is set)

from jaxfin import synthetic  # noqa: E402


@pytest.fixture(scope="session")
def assets(tmp_path_factory) -> synthetic.TinyAssets:
    """The self-made tiny assets (jaxfin.synthetic, seed 0): a random Llama HF directory with a trained byte-level
    BPE tokenizer and R1-style chat template, and the generated NER train / eval JSONL. Built once per session;
    tests only read them."""
    return synthetic.write_tiny_assets(str(tmp_path_factory.mktemp("tiny_assets")), seed=0)
