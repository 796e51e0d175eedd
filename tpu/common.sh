# shellcheck shell=bash
# Settings shared by the tpu/ scripts. Override any of them in the environment, e.g.
#   TPU_NAME=ner-v5e ACCELERATOR=v5litepod-16 ZONE=us-west4-a tpu/create.sh
set -euo pipefail

: "${PROJECT:=$(gcloud config get-value project 2>/dev/null)}"
: "${ZONE:=us-central2-b}"
: "${TPU_NAME:=jaxfin}"
: "${ACCELERATOR:=v4-32}"            # v4-32 = 4 hosts; v5litepod-16 = 4 hosts; v6e-8 = 1 host
: "${RUNTIME:=tpu-ubuntu2204-base}"  # v4; use v2-alpha-tpuv5-lite for v5e, v2-alpha-tpuv6e for v6e
: "${REPO_URL:=https://github.com/your-org/jaxfin.git}"
: "${BRANCH:=main}"
: "${REMOTE_DIR:=jaxfin}"            # checkout directory on every worker, relative to $HOME
: "${LOG:=jaxfin.log}"               # log file on every worker, relative to $HOME
: "${BUCKET:=}"                      # optional GCS bucket (no gs://) mounted with gcsfuse on every worker
: "${MOUNT:=/mnt/${BUCKET:-bucket}}" # where the bucket appears: put workdirs, models and data under it

if [[ -z "${PROJECT}" ]]; then
  echo "error: no GCP project: set PROJECT or run 'gcloud config set project ID'" >&2
  exit 2
fi

# Runs a shell command on every worker of the TPU VM slice (one process per host).
on_all_workers() {
  gcloud compute tpus tpu-vm ssh "${TPU_NAME}" --project="${PROJECT}" --zone="${ZONE}" \
    --worker=all --command="$1"
}
