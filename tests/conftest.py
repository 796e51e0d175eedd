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
