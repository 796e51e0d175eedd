#!/usr/bin/env bash
# Follows the training log of one worker (default 0, the process that writes metrics and reports).
#   WORKER=3 tpu/logs.sh
source "$(dirname "$0")/common.sh"

gcloud compute tpus tpu-vm ssh "${TPU_NAME}" --project="${PROJECT}" --zone="${ZONE}" \
  --worker="${WORKER:-0}" --command="tail -n 100 -F ~/${LOG}"
