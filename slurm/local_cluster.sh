#!/usr/bin/env bash
# A one-node SLURM cluster on 127.0.0.1, with accounting, for trying the SLURM executor
# on a laptop and for the tests. Debian/Ubuntu, as root, no systemd needed.
#
#   sudo bash slurm/local_cluster.sh          # install if needed, (re)start, wait until idle
#   sudo bash slurm/local_cluster.sh stop     # stop every daemon it started
#   bash slurm/local_cluster.sh status        # exit 0 when the node is idle or busy
#
# Idempotent: running it again on a healthy cluster changes nothing and takes about a
# second. A changed slurm.conf restarts the daemons (slurmctld does not pick up node
# or auth changes from `scontrol reconfigure`).
#
# Why each unusual setting is here:
# - accounting through slurmdbd + MariaDB: submitit reads job states with sacct, and
#   with accounting_storage/none a cancelled job is never seen to end;
# - AuthInfo=cred_expire=5: a requeued job waits cred_expire + 1 s before it may start
#   again (121 s by default);
# - sched_interval=1, bf_interval=1: pending jobs are looked at every second;
# - proctrack/linuxproc, task/none, jobacct_gather/none: no cgroups in containers;
# - SlurmdParameters=config_overrides: the node may declare more CPUs than it has
#   (SAGAN_SLURM_CPUS), so that tests can run several one-CPU jobs at once;
# - three partitions on the one node, so that tests can preempt for real
#   (PreemptType=preempt/partition_prio): a job in `urgent` (PriorityTier 2) takes
#   the CPUs of running jobs in `debug` (the default; PreemptMode=REQUEUE: SLURM
#   requeues them) or `debug-cancel` (PreemptMode=CANCEL: they end PREEMPTED);
#   SAGAN_SLURM_PREEMPT=0 leaves only `debug`, with no preemption;
# - EnforcePartLimits=ALL and MaxTime=1-00:00:00: a job asking for more time than its
#   partition allows is rejected by sbatch (as on most sites), not left pending.
set -euo pipefail

CLUSTER=${SAGAN_SLURM_CLUSTER:-local}
HOST=$(hostname -s)
CPUS=${SAGAN_SLURM_CPUS:-$(nproc)}
MEM_MB=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 512 ))
CONF_DIR=/etc/slurm
LOG_DIR=/var/log/slurm
DB_PASS=${SAGAN_SLURM_DB_PASS:-slurm}
PREEMPT=${SAGAN_SLURM_PREEMPT:-1}

say() { echo "local_cluster: $*" >&2; }
die() { say "error: $*"; exit 1; }

alive() {  # alive PIDFILE: the process named in PIDFILE is running
  [[ -s $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null
}

wait_for() {  # wait_for SECONDS WHAT CMD...: poll CMD until it succeeds
  local limit=$1 what=$2 i
  shift 2
  for ((i = 0; i < limit * 10; i++)); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.1
  done
  die "$what did not come up within ${limit}s; see $LOG_DIR/"
}

node_up() {
  local st
  st=$(sinfo -h -n "$HOST" -o %T 2>/dev/null) || return 1
  # A trailing '*' (idle*) means slurmctld gets no answer from the node's slurmd.
  [[ $st == *'*' ]] && return 1
  [[ $st == idle* || $st == mixed* || $st == allocated* ]]
}

# slurmctld does not take back on its own a node it drained or set down (an earlier
# crash, a failed job, a restart it missed): resume such a node, then wait for it.
resume_and_check_node() {
  local st
  st=$(sinfo -h -n "$HOST" -o %T 2>/dev/null) || return 1
  case $st in
    down* | drain* | fail*) scontrol update nodename="$HOST" state=resume >/dev/null 2>&1 ;;
  esac
  node_up
}

stop_all() {
  local pf
  for pf in /run/slurmd.pid /run/slurmctld.pid /run/slurmdbd.pid; do
    if alive "$pf"; then kill "$(cat "$pf")"; fi
  done
  for pf in /run/slurmd.pid /run/slurmctld.pid /run/slurmdbd.pid; do
    while alive "$pf"; do sleep 0.1; done
    rm -f "$pf"
  done
}

case "${1:-start}" in
  status)
    node_up && { sinfo; exit 0; }
    say "the node is not up"; exit 1 ;;
  stop)
    stop_all
    say "slurm daemons stopped (munge and MariaDB left running)"
    exit 0 ;;
  start) ;;
  *) die "unknown command '$1' (start, stop, status)" ;;
esac

[[ $(id -u) -eq 0 ]] || die "run as root (it installs packages and starts daemons)"

# -- packages ---------------------------------------------------------------------
need=()
for pkg in slurmctld slurmd slurm-client slurmdbd munge mariadb-server; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if ((${#need[@]})); then
  say "installing ${need[*]}"
  command -v apt-get >/dev/null || die "apt-get not found: install ${need[*]} yourself"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  apt-get install -y -q "${need[@]}" >/dev/null
fi

mkdir -p "$CONF_DIR" "$LOG_DIR" /var/spool/slurmctld /var/spool/slurmd /run/munge

# -- configuration ----------------------------------------------------------------
limits="Nodes=ALL MaxTime=1-00:00:00 State=UP"
if [[ $PREEMPT == 1 ]]; then
  preempt="PreemptType=preempt/partition_prio
PreemptMode=REQUEUE"
  partitions="PartitionName=debug $limits Default=YES PriorityTier=1 PreemptMode=REQUEUE
PartitionName=debug-cancel $limits PriorityTier=1 PreemptMode=CANCEL
PartitionName=urgent $limits PriorityTier=2 PreemptMode=OFF"
else
  preempt="PreemptType=preempt/none"
  partitions="PartitionName=debug $limits Default=YES"
fi
conf=$(cat <<EOF
# Written by sagan-bench slurm/local_cluster.sh: one node on 127.0.0.1.
ClusterName=$CLUSTER
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=cred_expire=5
CredType=cred/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1,bf_interval=1
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
ReturnToService=2
MpiDefault=none
KillWait=5
MinJobAge=600
EnforcePartLimits=ALL
$preempt
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
$partitions
EOF
)
dbd=$(cat <<EOF
# Written by sagan-bench slurm/local_cluster.sh.
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
SlurmUser=root
PidFile=/run/slurmdbd.pid
LogFile=$LOG_DIR/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=$DB_PASS
StorageLoc=slurm_acct_db
EOF
)
changed=0
if [[ ! -f $CONF_DIR/slurm.conf ]] || [[ $(cat "$CONF_DIR/slurm.conf") != "$conf" ]]; then
  printf '%s\n' "$conf" >"$CONF_DIR/slurm.conf"
  changed=1
fi
if [[ ! -f $CONF_DIR/slurmdbd.conf ]] || [[ $(cat "$CONF_DIR/slurmdbd.conf") != "$dbd" ]]; then
  printf '%s\n' "$dbd" >"$CONF_DIR/slurmdbd.conf"
  changed=1
fi
chmod 600 "$CONF_DIR/slurmdbd.conf"
if ((changed)); then
  say "configuration written; restarting the slurm daemons"
  stop_all
fi

# -- munge ------------------------------------------------------------------------
[[ -s /etc/munge/munge.key ]] || {
  dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
  chown munge:munge /etc/munge/munge.key
  chmod 400 /etc/munge/munge.key
}
chown munge:munge /run/munge
if ! munge -n </dev/null >/dev/null 2>&1; then
  rm -f /run/munge/munged.pid
  runuser -u munge -- /usr/sbin/munged
  wait_for 10 munged bash -c 'munge -n | unmunge'
fi

# -- MariaDB ----------------------------------------------------------------------
if ! mariadb -e 'select 1' >/dev/null 2>&1; then
  mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld
  # Detached from this script's output, so a caller that pipes it does not wait on it.
  (cd / && exec setsid mysqld_safe </dev/null >/dev/null 2>&1 &)
  wait_for 60 MariaDB mariadb -e 'select 1'
fi
mariadb <<EOF
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DB_PASS';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
FLUSH PRIVILEGES;
EOF

# -- slurmdbd, the cluster's record, slurmctld, slurmd ---------------------------
if ! alive /run/slurmdbd.pid; then
  slurmdbd
  wait_for 30 slurmdbd sacctmgr -n list cluster
fi
if ! sacctmgr -n -P list cluster format=Cluster | grep -qx "$CLUSTER"; then
  sacctmgr -i add cluster "$CLUSTER" >/dev/null
fi
if ! alive /run/slurmctld.pid; then
  slurmctld
  wait_for 30 slurmctld scontrol ping
fi
if ! alive /run/slurmd.pid; then
  slurmd
fi
wait_for 60 "node $HOST" resume_and_check_node
say "up: node $HOST with $CPUS CPUs, partitions $(sinfo -h -o %R | paste -sd, -), cluster $CLUSTER"
sinfo
