#!/usr/bin/env bash
# A Cloud TPU VM pod slice: the same command on every worker, through gcloud ... --worker=all.
#
#   export TPU_NAME=bnn-jax ZONE=us-central2-b ACCELERATOR_TYPE=v4-32
#   launch/tpu_pod.sh create                  # the slice (RUNTIME_VERSION: tpu-ubuntu2204-base)
#   launch/tpu_pod.sh setup                   # copy this repository to every worker, install
#   launch/tpu_pod.sh run CONFIG WORKDIR [--config.KEY=VALUE ...]
#   launch/tpu_pod.sh delete
#
# `run` starts `python -m bnn_jax.main ... --distributed=on` on every worker at once; jax finds
# the other workers through the TPU metadata. WORKDIR and data.tfds_data_dir must be paths that
# every worker sees (a Filestore NFS mount, or a gcsfuse mount of a bucket): every process saves
# and restores the same orbax checkpoints. After a preemption or a lost worker, `run` again with
# the same WORKDIR resumes from the last checkpoint.
set -euo pipefail
usage() {  # the comment block at the top of this file, without its '# '
  awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
}
case "${1:-}" in
  create | setup | run | delete) ;;
  -h | --help)
    usage
    exit 0
    ;;
  *)  # no or an unknown subcommand: the usage, before asking for TPU_NAME and ZONE
    [[ -n ${1:-} ]] && echo "launch/tpu_pod.sh: unknown subcommand '$1'" >&2
    usage
    exit 2
    ;;
esac
: "${TPU_NAME:?set TPU_NAME (and ZONE): see launch/tpu_pod.sh --help}"
: "${ZONE:?set ZONE (and TPU_NAME): see launch/tpu_pod.sh --help}"
ACCELERATOR_TYPE=${ACCELERATOR_TYPE:-v4-32}
RUNTIME_VERSION=${RUNTIME_VERSION:-tpu-ubuntu2204-base}
REMOTE_DIR=${REMOTE_DIR:-bnn_jax}
ssh_all() {
  gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" --worker=all --command="$1"
}
case "${1:-}" in
  create)
    gcloud compute tpus tpu-vm create "$TPU_NAME" --zone="$ZONE" \
      --accelerator-type="$ACCELERATOR_TYPE" --version="$RUNTIME_VERSION"
    ;;
  setup)
    cd "$(dirname "$0")/.."
    ssh_all "rm -rf ~/$REMOTE_DIR && mkdir -p ~/$REMOTE_DIR"
    gcloud compute tpus tpu-vm scp --recurse --zone="$ZONE" --worker=all \
      bnn_jax configs launch pyproject.toml README.md "$TPU_NAME:~/$REMOTE_DIR/"
    ssh_all "cd ~/$REMOTE_DIR && python3 -m pip install -U pip && python3 -m pip install -e . 'jax[tpu]'"
    ;;
  run)
    shift
    config=${1:?usage: launch/tpu_pod.sh run CONFIG WORKDIR [--config.KEY=VALUE ...]}
    workdir=${2:?usage: launch/tpu_pod.sh run CONFIG WORKDIR [--config.KEY=VALUE ...]}
    shift 2
    flags=$(printf '%q ' "$@")
    ssh_all "cd ~/$REMOTE_DIR && python3 -m bnn_jax.main --distributed=on \
      --config=$(printf '%q' "$config") --workdir=$(printf '%q' "$workdir") $flags"
    ;;
  delete)
    gcloud compute tpus tpu-vm delete "$TPU_NAME" --zone="$ZONE" --quiet
    ;;
esac
