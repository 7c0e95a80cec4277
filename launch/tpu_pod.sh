#!/usr/bin/env bash
# Run mdm_jax.main on every host of a Cloud TPU VM pod slice.
#
#   launch/tpu_pod.sh --tpu=my-v4-32 --zone=us-central2-b [--project=P] [--repo_dir=~/mdm-jax] \
#       [--setup] [--dry-run] -- --config=configs/owt_mdm_small.py --workdir=gs://BUCKET/owt_mdm_small
#
# Every worker runs the same command (`gcloud compute tpus tpu-vm ssh --worker=all`); JAX finds
# the other hosts itself (mdm_jax.main calls jax.distributed.initialize when TPU_WORKER_HOSTNAMES
# lists several hosts). The repository must already be at --repo_dir on every worker (e.g. with
# `gcloud compute tpus tpu-vm scp --worker=all --recurse`); --setup first installs it there with
# `pip install -e '.[test]'` and jax[tpu]. --dry-run prints the gcloud command and runs nothing.
set -euo pipefail

tpu="" zone="" project="" repo_dir="~/mdm-jax" setup=0 dry_run=0
usage() { sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-2}"; }
while [[ $# -gt 0 ]]; do
  case "$1" in
    --tpu=*) tpu="${1#*=}" ;;
    --zone=*) zone="${1#*=}" ;;
    --project=*) project="${1#*=}" ;;
    --repo_dir=*) repo_dir="${1#*=}" ;;
    --setup) setup=1 ;;
    --dry-run|--dry_run) dry_run=1 ;;
    -h|--help) usage 0 ;;
    --) shift; break ;;
    *) echo "tpu_pod.sh: unknown option $1 (mdm_jax.main arguments go after --)" >&2; usage ;;
  esac
  shift
done
if [[ -z "$tpu" || -z "$zone" ]]; then
  echo "tpu_pod.sh: --tpu=NAME and --zone=ZONE are required" >&2; usage
fi
if [[ $# -eq 0 ]]; then
  echo "tpu_pod.sh: pass the mdm_jax.main arguments after --, e.g. -- --config=configs/owt_mdm_small.py --workdir=gs://B/run" >&2
  usage
fi

# The remote command: each argument shell-quoted so that it reaches python unchanged.
main_cmd="python3 -m mdm_jax.main"
for a in "$@"; do main_cmd+=" $(printf '%q' "$a")"; done
remote="cd $repo_dir && "
if [[ $setup -eq 1 ]]; then
  remote+="pip install -q -e '.[test]' 'jax[tpu]' && "
fi
remote+="$main_cmd"

cmd=(gcloud compute tpus tpu-vm ssh "$tpu" "--zone=$zone")
[[ -n "$project" ]] && cmd+=("--project=$project")
cmd+=(--worker=all "--command=$remote")

if [[ $dry_run -eq 1 ]]; then
  printf '%q ' "${cmd[@]}" | sed 's/ $//'
  echo
  exit 0
fi
exec "${cmd[@]}"
