#!/usr/bin/env bash
# Requests a TPU VM slice through a queued resource and waits until it is ACTIVE.
#   SPOT=1 tpu/create.sh       # spot capacity: cheaper, preemptible (training resumes from checkpoints)
source "$(dirname "$0")/common.sh"

flags=()
[[ "${SPOT:-0}" == 1 ]] && flags+=(--spot)

gcloud compute tpus queued-resources create "${TPU_NAME}" --project="${PROJECT}" --zone="${ZONE}" \
  --node-id="${TPU_NAME}" --accelerator-type="${ACCELERATOR}" --runtime-version="${RUNTIME}" "${flags[@]}"

echo "waiting for ${TPU_NAME} to become ACTIVE (Ctrl-C stops waiting, not the request)"
until [[ "$(gcloud compute tpus queued-resources describe "${TPU_NAME}" --project="${PROJECT}" \
            --zone="${ZONE}" --format='value(state.state)')" == ACTIVE ]]; do
  sleep 30
done
echo "${TPU_NAME} is ACTIVE"
