#!/usr/bin/env bash
# Start a single-node SLURM with accounting on this machine (as root, no systemd needed), for the tests and
# for trying the SLURM path by hand. Idempotent: a daemon already started by this script is left running.
#
#   sudo slurm/start.sh            # installs the Debian packages if missing, then starts
#   slurm/stop.sh                  # stops only what this script started (by pid)
#
# Daemons, in order, each with a pid file under $STATE: munged (as the munge user), mariadbd (--user=mysql,
# socket /run/mysqld/mysqld.sock; the accounting database and user), slurmdbd (accounting_storage/mysql),
# `sacctmgr add cluster`, slurmctld, slurmd. submitit reads job states through sacct, so accounting is needed.
# The node declares 4 CPUs per core (SlurmdParameters=config_overrides) so that several small jobs run at
# once on a 2-core machine; the test jobs use one torch thread each.
set -euo pipefail

STATE=${DYNAMICS_SLURM_STATE:-/var/lib/dynamics-slurm}
CLUSTER=dynamics
PACKAGES="slurmctld slurmd slurm-client munge slurmdbd mariadb-server"
MARK="# written by dynamics slurm/start.sh"

log() { echo "slurm/start.sh: $*" >&2; }
die() { log "$*"; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root (starts system daemons)"

if ! command -v slurmctld >/dev/null || ! command -v slurmdbd >/dev/null || ! command -v mariadbd >/dev/null \
        || ! command -v munged >/dev/null || ! command -v slurmd >/dev/null || ! command -v sbatch >/dev/null; then
    log "installing $PACKAGES"
    export DEBIAN_FRONTEND=noninteractive
    { apt-get install -y -q $PACKAGES || { apt-get update -q && apt-get install -y -q $PACKAGES; }; } \
        >"${TMPDIR:-/tmp}/dynamics-slurm-apt.log" 2>&1 \
        || die "apt-get install $PACKAGES failed (log: ${TMPDIR:-/tmp}/dynamics-slurm-apt.log)"
fi

mkdir -p "$STATE"/{log,ctld,slurmd}
chmod 755 "$STATE"

alive() {  # alive NAME: the pid recorded in $STATE/NAME.pid is a running process
    [ -s "$STATE/$1.pid" ] && kill -0 "$(cat "$STATE/$1.pid")" 2>/dev/null
}

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
    local limit=$1 what=$2
    shift 2
    for _ in $(seq $((limit * 5))); do
        "$@" >/dev/null 2>&1 && return 0
        sleep 0.2
    done
    die "$what did not come up in ${limit}s (logs in $STATE/log)"
}

write_config() {  # write_config PATH MODE: stdin to PATH, unless PATH exists and is not ours
    if [ -e "$1" ] && ! grep -qF "$MARK" "$1"; then
        die "$1 exists and was not written by this script; refusing to overwrite it"
    fi
    { echo "$MARK"; cat; } >"$1.tmp"
    chmod "$2" "$1.tmp"
    mv "$1.tmp" "$1"
}

# -- munge -------------------------------------------------------------------------------------------------
# A munged that answers (one this script started whose pid file is gone, or the machine's own) is used as it is:
# a second one cannot bind the socket.
if ! alive munged && ! (munge -n | unmunge) >/dev/null 2>&1; then
    [ -s /etc/munge/munge.key ] || { mungekey --create --keyfile=/etc/munge/munge.key 2>/dev/null \
        || dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none; }
    chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown munge:munge /run/munge /var/log/munge /var/lib/munge
    chmod 755 /run/munge
    runuser -u munge -- munged --pid-file=/run/munge/munged.pid
    wait_for 10 munged test -s /run/munge/munged.pid
    cp /run/munge/munged.pid "$STATE/munged.pid"
    wait_for 10 munged sh -c "munge -n | unmunge"
fi

# -- mariadb -----------------------------------------------------------------------------------------------
if ! alive mariadbd; then
    mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld
    if [ ! -d /var/lib/mysql/mysql ]; then
        mariadb-install-db --user=mysql --datadir=/var/lib/mysql >"$STATE/log/mariadb-install.log" 2>&1
    fi
    setsid mariadbd --user=mysql --datadir=/var/lib/mysql --socket=/run/mysqld/mysqld.sock \
        --pid-file=/run/mysqld/dynamics.pid --skip-networking=0 --bind-address=127.0.0.1 \
        --log-error="$STATE/log/mariadb.log" </dev/null >/dev/null 2>&1 &
    echo $! >"$STATE/mariadbd.pid"
    wait_for 60 mariadbd mariadb-admin --socket=/run/mysqld/mysqld.sock ping
fi
DBPASS_FILE="$STATE/dbpass"
[ -s "$DBPASS_FILE" ] || { head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$DBPASS_FILE"; chmod 600 "$DBPASS_FILE"; }
DBPASS=$(cat "$DBPASS_FILE")
mariadb --socket=/run/mysqld/mysqld.sock -e "
    CREATE DATABASE IF NOT EXISTS slurm_acct_db;
    CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DBPASS';
    ALTER USER 'slurm'@'localhost' IDENTIFIED BY '$DBPASS';
    GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';"

# -- configuration -----------------------------------------------------------------------------------------
HOST=$(hostname -s)
CORES=$(nproc)
CPUS=$((CORES * 4))
MEM_MB=$(awk '/MemTotal/ {print int($2 / 1024 * 0.8)}' /proc/meminfo)
mkdir -p /etc/slurm
write_config /etc/slurm/slurm.conf 644 <<EOF
ClusterName=$CLUSTER
SlurmctldHost=$HOST
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=cred_expire=10
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/slurmd
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2
SlurmdParameters=config_overrides
DefMemPerCPU=256
KillWait=5
MinJobAge=30
ReturnToService=2
JobRequeue=1
MpiDefault=none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=$HOST
JobAcctGatherType=jobacct_gather/none
NodeName=$HOST CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
EOF
write_config /etc/slurm/slurmdbd.conf 600 <<EOF
AuthType=auth/munge
DbdHost=$HOST
SlurmUser=root
PidFile=$STATE/slurmdbd.pid
LogFile=$STATE/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageLoc=slurm_acct_db
StorageUser=slurm
StoragePass=$DBPASS
EOF

# -- slurmdbd, the cluster, slurmctld, slurmd ------------------------------------------------------------
if ! alive slurmdbd; then
    rm -f "$STATE/slurmdbd.pid"
    slurmdbd
    wait_for 30 slurmdbd sacctmgr -n show cluster
fi
sacctmgr -n show cluster format=cluster | grep -qw "$CLUSTER" || sacctmgr -i add cluster "$CLUSTER" >/dev/null
if ! alive slurmctld; then
    rm -f "$STATE/slurmctld.pid"
    slurmctld
    wait_for 30 slurmctld scontrol ping
fi
if ! alive slurmd; then
    rm -f "$STATE/slurmd.pid"
    slurmd -N "$HOST"
    wait_for 30 slurmd test -s "$STATE/slurmd.pid"
fi
wait_for 60 "node $HOST idle" sh -c "sinfo -h -N -n $HOST -o %t | grep -Eq '^(idle|mix|alloc)'"
log "up: node $HOST, $CPUS CPUs, ${MEM_MB} MB, partition debug (sinfo, squeue, sacct work; stop with slurm/stop.sh)"
