#!/usr/bin/env bash
# Installs jaxfin and jax[tpu] on every worker (idempotent: pulls if the checkout exists).
source "$(dirname "$0")/common.sh"

on_all_workers "set -e
  if [ -d ${REMOTE_DIR}/.git ]; then git -C ${REMOTE_DIR} fetch -q origin && git -C ${REMOTE_DIR} checkout -q ${BRANCH} && git -C ${REMOTE_DIR} pull -q;
  else git clone -q --branch ${BRANCH} ${REPO_URL} ${REMOTE_DIR}; fi
  python3 -m pip install -q -U pip
  python3 -m pip install -q -e ${REMOTE_DIR} 'jax[tpu]' gcsfs
  python3 -c 'import jax; print(jax.process_index(), jax.device_count(), jax.devices()[0].device_kind)'"
