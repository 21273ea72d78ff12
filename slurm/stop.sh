#!/usr/bin/env bash
# Stop the single-node SLURM that slurm/start.sh started: only the processes whose pid files it wrote, in
# reverse order, each waited for. Idempotent: nothing recorded, nothing done.
set -uo pipefail

STATE=${DYNAMICS_SLURM_STATE:-/var/lib/dynamics-slurm}

stop() {  # stop NAME: TERM the recorded pid, wait up to 20 s, then KILL
    local file="$STATE/$1.pid" pid
    [ -s "$file" ] || return 0
    pid=$(cat "$file")
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null
        for _ in $(seq 100); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.2
        done
        kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null
    fi
    rm -f "$file"
}

if [ -d "$STATE" ] && command -v scancel >/dev/null && [ -s "$STATE/slurmctld.pid" ]; then
    scancel --user="$(id -un)" >/dev/null 2>&1 || true  # jobs left by a test that failed
fi
for name in slurmd slurmctld slurmdbd mariadbd munged; do
    stop "$name"
done
echo "slurm/stop.sh: stopped" >&2
