#!/usr/bin/env bash
# Deletes the slice and its queued resource (checkpoints in the bucket are kept).
source "$(dirname "$0")/common.sh"

gcloud compute tpus queued-resources delete "${TPU_NAME}" --project="${PROJECT}" --zone="${ZONE}" \
  --force --quiet
