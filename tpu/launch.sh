#!/usr/bin/env bash
# Starts the same training command on every worker, in the background, logging to ~/$LOG.
# jax.distributed detects the TPU pod by itself, so no coordinator flags are needed here.
#   tpu/launch.sh --config configs/lora_neftune.py --config.workdir=/mnt/BUCKET/runs/ner1
source "$(dirname "$0")/common.sh"

if [[ $# -eq 0 ]]; then
  echo "usage: tpu/launch.sh --config CONFIG [--config.key=value ...]" >&2
  exit 2
fi
args=$(printf ' %q' "$@")
on_all_workers "cd ${REMOTE_DIR} && \
  nohup env TPU_STDERR_LOG_LEVEL=2 TF_CPP_MIN_LOG_LEVEL=2 python3 -m jaxfin.train${args} > ~/${LOG} 2>&1 &"
echo "launched on every worker of ${TPU_NAME}; follow with tpu/logs.sh"
