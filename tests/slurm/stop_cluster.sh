#!/usr/bin/env bash
# Stop the cluster started by start_cluster.sh TEMPDIR. Leaves TEMPDIR (logs) in place.
set -uo pipefail
T=${1:?usage: $0 TEMPDIR}
T=$(cd "$T" && pwd)

# 1. cancel everything still queued/running, give job steps a moment to die
if [ -e "$T/slurmctld.pid" ] && kill -0 "$(cat "$T/slurmctld.pid")" 2>/dev/null; then
  scancel --full --signal=KILL -u root 2>/dev/null; scancel -u root 2>/dev/null
  for _ in $(seq 50); do [ -z "$(squeue -h -o %i 2>/dev/null)" ] && break; sleep 0.2; done
fi

# 2. SIGTERM the three daemons (each needs ~1.5-2 s to exit; do it in parallel)
pids=()
for pf in "$T/slurmd.pid" "$T/slurmctld.pid" "$T/munge/munged.pid"; do
  [ -e "$pf" ] || continue
  pid=$(cat "$pf")
  kill -TERM "$pid" 2>/dev/null && pids+=("$pid") || rm -f "$pf"   # stale pid file
done
for _ in $(seq 100); do            # wait up to 10 s
  alive=0; for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
  [ $alive = 0 ] && break; sleep 0.1
done
for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && { echo "pid $p still alive: SIGKILL" >&2; kill -KILL "$p"; }; done
rm -f "$T/slurmd.pid" "$T/slurmctld.pid" "$T/munge/munged.pid"  # only left over after SIGKILL
echo "cluster in $T stopped"
