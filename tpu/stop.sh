#!/usr/bin/env bash
# Stops training on every worker with SIGTERM: each process saves a checkpoint and exits; the same
# launch command later resumes from it.
source "$(dirname "$0")/common.sh"

on_all_workers "pkill -TERM -f 'python3 -m jaxfin.train' || true"
