#!/usr/bin/env bash
# One machine, several GPUs: one process drives every visible GPU (the mesh spans them all).
#
#   launch/one_machine_gpus.sh CONFIG WORKDIR [--config.KEY=VALUE ...]
#   CUDA_VISIBLE_DEVICES=0,1,2,3 launch/one_machine_gpus.sh configs/resnet18_imagenet.py /data/runs/r18 \
#     --config.data.tfds_data_dir=/data/tfds
#
# The global batch (config.batch_size) is split over the GPUs; JPEG decoding runs on every CPU
# core of the machine (tf.data), TensorFlow never touches the GPUs. Rerun the same command to
# resume from WORKDIR's last checkpoint.
set -euo pipefail
usage() {  # the comment block at the top of this file, without its '# '
  awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
}
if [[ ${1:-} == -h || ${1:-} == --help ]]; then
  usage
  exit 0
fi
if [[ $# -lt 2 ]]; then
  usage
  exit 2
fi
config=$1
workdir=$2
shift 2
cd "$(dirname "$0")/.."
# XLA reserves 75 % of each GPU's memory by default; leave a little for cuDNN workspaces only.
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}
exec python -m bnn_jax.main --config="$config" --workdir="$workdir" "$@"
