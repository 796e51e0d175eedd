"""Convert model weights and LoRA adapters between Hugging Face transformers / PEFT and jaxfin: the command line of
jaxfin.convert (see there, or --help).

  python tools/convert_weights.py to-jax  --hf-dir HF_DIR [--peft-adapter ADAPTER_DIR] --out CKPT_DIR [--dtype D]
  python tools/convert_weights.py to-hf   --checkpoint PATH --out HF_DIR [--merge-lora] [--dtype D]
  python tools/convert_weights.py to-peft --checkpoint PATH --out ADAPTER_DIR
"""

from jaxfin.convert import main
from jaxfin.errors import run_cli

if __name__ == "__main__":
    run_cli(main)
