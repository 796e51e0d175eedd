#!/usr/bin/env bash
# Installs jaxfin and jax[tpu] on every worker (idempotent: pulls if the checkout exists), and with BUCKET set
# mounts that GCS bucket at $MOUNT with gcsfuse, so every worker sees one workdir at the same path.
source "$(dirname "$0")/common.sh"

mount_bucket=true
if [[ -n "${BUCKET}" ]]; then
  mount_bucket="if ! mountpoint -q ${MOUNT}; then
    if ! command -v gcsfuse >/dev/null; then
      echo 'deb https://packages.cloud.google.com/apt gcsfuse-jammy main' | sudo tee /etc/apt/sources.list.d/gcsfuse.list >/dev/null
      curl -fsSL https://packages.cloud.google.com/apt/doc/apt-key.gpg | sudo tee /etc/apt/trusted.gpg.d/gcsfuse.asc >/dev/null
      sudo apt-get update -q && sudo apt-get install -y -q gcsfuse
    fi
    sudo mkdir -p ${MOUNT} && sudo chown \$USER ${MOUNT} && gcsfuse --implicit-dirs ${BUCKET} ${MOUNT}
  fi"
fi

on_all_workers "set -e
  if [ -d ${REMOTE_DIR}/.git ]; then git -C ${REMOTE_DIR} fetch -q origin && git -C ${REMOTE_DIR} checkout -q ${BRANCH} && git -C ${REMOTE_DIR} pull -q;
  else git clone -q --branch ${BRANCH} ${REPO_URL} ${REMOTE_DIR}; fi
  python3 -m pip install -q -U pip
  python3 -m pip install -q -e ${REMOTE_DIR} 'jax[tpu]'
  ${mount_bucket}
  python3 -c 'import jax; print(jax.process_index(), jax.device_count(), jax.devices()[0].device_kind)'"
