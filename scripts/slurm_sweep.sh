#!/usr/bin/env bash
# One lmprof run over N nodes x G GPUs with torchrun, pre-emptible: Slurm's warning signal
# becomes a checkpoint, and a requeued job resumes from it.
#
#   sbatch --nodes=2 --gpus-per-node=8 scripts/slurm_sweep.sh configs/gpt2_small.yaml \
#          system.parallelism=fsdp checkpoint.interval=500
#
# A sweep: one job per run (an array over a file of override lines), e.g.
#   sbatch --array=1-$(wc -l < runs.txt) scripts/slurm_sweep.sh configs/base.yaml @runs.txt
# takes line $SLURM_ARRAY_TASK_ID of runs.txt as extra overrides.
#
# Needs: lmprof installed in the environment activated below, and <output_dir> on a filesystem
# every node sees (checkpoints are written by all ranks into one folder, results.csv by rank 0).
#
#SBATCH --job-name=lmprof
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1          # one torchrun per node; it starts the GPU workers
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=32
#SBATCH --time=04:00:00
#SBATCH --signal=B:TERM@120          # SIGTERM to this script 120 s before the time limit
#SBATCH --requeue                    # pre-empted or timed out: back in the queue, then resume
#SBATCH --open-mode=append
#SBATCH --output=logs/slurm-%x-%j.out

set -euo pipefail

CONFIG=${1:?usage: slurm_sweep.sh CONFIG.yaml [key=value ... | @overrides.txt]}
shift
ARGS=()
for a in "$@"; do
  if [[ $a == @* ]]; then  # @file: this array task's line of overrides
    line=$(sed -n "${SLURM_ARRAY_TASK_ID:-1}p" "${a#@}")
    read -r -a more <<< "$line"
    ARGS+=("${more[@]}")
  else
    ARGS+=("$a")
  fi
done

# source .venv/bin/activate                     # or: module load ...; conda activate ...
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-8}
export PYTHONUNBUFFERED=1
export LMPROF_LOG_CAPTURED=1                   # Slurm already keeps stdout (logs/slurm-*.out)
# export NCCL_DEBUG=WARN NCCL_SOCKET_IFNAME=ib0 # the inter-node interface, if not found

NODES=${SLURM_JOB_NUM_NODES:-1}
GPUS=${SLURM_GPUS_PER_NODE:-8}
GPUS=${GPUS##*:}                                # "h200:8" -> 8
HEAD=$(scontrol show hostnames "${SLURM_JOB_NODELIST}" | head -n 1)
PORT=$((29500 + ${SLURM_JOB_ID:-0} % 1000))

# Resume is always on: a first start finds no checkpoint and starts fresh; a requeued job
# continues from the newest complete one (same data order, the metrics CSV continues).
ARGS+=("checkpoint.resume=auto" "system.num_gpus=$((NODES * GPUS))")

# c10d rendezvous on the first node; every node runs the same command. --max-restarts 0: a
# failed worker ends the job (requeue decides), torchrun does not retry on its own.
srun --kill-on-bad-exit=1 python -m torch.distributed.run \
  --nnodes="$NODES" --nproc-per-node="$GPUS" \
  --rdzv-backend=c10d --rdzv-endpoint="$HEAD:$PORT" --rdzv-id="${SLURM_JOB_ID:-lmprof}" \
  --max-restarts=0 \
  -m lmprof run "$CONFIG" "${ARGS[@]}" &
PID=$!

# With `--signal=B:TERM@120` only this batch script gets SIGTERM; pass it on to srun, which
# forwards it to torchrun on every node, which forwards it to the workers: they finish the
# step, write a checkpoint and exit 130 (status `interrupted`). Then requeue.
on_term() {
  echo "lmprof: SIGTERM, asking the run to checkpoint and stop"
  kill -TERM "$PID" 2>/dev/null || true
  wait "$PID" || true
  scontrol requeue "${SLURM_JOB_ID}" || true
  exit 0
}
trap on_term TERM

set +e
wait "$PID"
rc=$?
# `wait` returns early (rc > 128) when the trap fires; on_term has handled it then.
exit $rc
