#!/usr/bin/env bash
# A real single-node SLURM cluster on this machine, for trying and testing the
# `hydra/launcher=slurm` path (tests marked `slurm`, run by .ci/run).
#
#   scripts/local_slurm.sh start    # install (Debian packages) if needed, configure, start; idempotent
#   scripts/local_slurm.sh stop     # stop the daemons this script started (by their pid files)
#   scripts/local_slurm.sh status   # sinfo + which daemons run
#
# What it runs: munged (authentication), MariaDB + slurmdbd (job accounting: submitit
# reads job states with `sacct` and can wait forever without it), slurmctld and
# `slurmd -N localhost`. Needs root (apt-get, daemons); on a machine without apt or
# root it exits non-zero with the reason, and the slurm tests skip.
# Facts this follows: Debian slurm-wlm 22.05 on one node, with munge and slurmdbd on MariaDB.
set -euo pipefail

CLUSTER=localcluster
CONF_DIR=/etc/slurm
STATE_DIR=/var/spool/slurmctld
SPOOL_DIR=/var/spool/slurmd
LOG_DIR=/var/log/slurm
RUN_DIR=/run/slurm
DB_PASS=slurmlocal  # a local, socket-only database; not a secret worth protecting
PACKAGES=(munge mariadb-server slurmctld slurmd slurmdbd slurm-client)

say() { echo "[local_slurm] $*"; }
die() { echo "[local_slurm] ERROR: $*" >&2; exit 1; }

running() {  # running PIDFILE: the process named in the pid file is alive
  [[ -s "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null
}

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...: poll until COMMAND succeeds
  local seconds=$1 what=$2
  shift 2
  for ((i = 0; i < seconds * 2; i++)); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.5
  done
  die "$what did not come up within ${seconds}s (logs: $LOG_DIR/, /var/log/mysql/)"
}

install_packages() {
  local missing=()
  for cmd in munged mariadbd slurmctld slurmd slurmdbd sinfo sacct; do
    command -v "$cmd" >/dev/null 2>&1 || [[ -x /usr/sbin/$cmd ]] || missing+=("$cmd")
  done
  if ((${#missing[@]} == 0)); then
    say "packages already installed"
    return
  fi
  [[ $EUID -eq 0 ]] || die "missing ${missing[*]}; run as root to apt-get install ${PACKAGES[*]}"
  command -v apt-get >/dev/null || die "missing ${missing[*]} and no apt-get (Debian/Ubuntu only); install SLURM by hand"
  say "installing ${PACKAGES[*]} (apt-get, ~30 s)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}" >/dev/null
}

write_config() {
  local cpus mem_mb
  cpus=$(nproc)
  # RealMemory a little under the machine's: slurmd drains a node that reports less than configured.
  mem_mb=$(($(awk '/MemTotal/ {print int($2 / 1024)}' /proc/meminfo) - 1024))
  mkdir -p "$CONF_DIR" "$STATE_DIR" "$SPOOL_DIR" "$LOG_DIR" "$RUN_DIR"
  local previous=""
  [[ -f "$CONF_DIR/slurm.conf" ]] && previous=$(cat "$CONF_DIR/slurm.conf")
  cat >"$CONF_DIR/slurm.conf" <<EOF
# Written by scripts/local_slurm.sh: one node (this machine), one partition.
ClusterName=$CLUSTER
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$STATE_DIR
SlurmdSpoolDir=$SPOOL_DIR
SlurmctldPidFile=$RUN_DIR/slurmctld.pid
SlurmdPidFile=$RUN_DIR/slurmd.pid
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
# No cgroups in a container: track processes by parent pid, no task binding.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SchedulerType=sched/backfill
# Schedule every few seconds (defaults: 60 s main loop, 30 s backfill): jobs start promptly here.
SchedulerParameters=sched_interval=5,bf_interval=5
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
# Jobs may be requeued (Lightning's auto-requeue). A requeued job waits cred_expire + 1 s
# before it may start again (default 120 s); 10 s keeps the requeue test short.
JobRequeue=1
AuthInfo=cred_expire=10
# Accounting, so that sacct (which submitit polls) knows every job.
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
  cat >"$CONF_DIR/slurmdbd.conf" <<EOF
# Written by scripts/local_slurm.sh
AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
PidFile=$RUN_DIR/slurmdbd.pid
LogFile=$LOG_DIR/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=$DB_PASS
StorageLoc=slurm_acct_db
EOF
  chmod 600 "$CONF_DIR/slurmdbd.conf"  # slurmdbd refuses a readable file holding a password
  if [[ -n "$previous" && "$previous" != "$(cat "$CONF_DIR/slurm.conf")" ]]; then
    CONFIG_CHANGED=1
  fi
  say "wrote $CONF_DIR/slurm.conf (CPUs=$cpus RealMemory=${mem_mb}MB) and slurmdbd.conf"
}

start_munge() {
  if running /run/munge/munged.pid; then say "munged already running"; return; fi
  mkdir -p /run/munge && chown munge:munge /run/munge
  [[ -s /etc/munge/munge.key ]] || { mungekey --create --force && chown munge:munge /etc/munge/munge.key; }
  runuser -u munge -- /usr/sbin/munged --force
  wait_for 10 munged bash -c 'munge -n | unmunge'
  say "started munged (pid $(cat /run/munge/munged.pid))"
}

start_mariadb() {
  if running /run/mysqld/mysqld.pid; then
    say "mariadb already running"
  else
    mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld
    # Started directly (not via an init system, which containers often lack).
    nohup mariadbd --user=mysql --pid-file=/run/mysqld/mysqld.pid --socket=/run/mysqld/mysqld.sock \
      --skip-networking=0 --bind-address=127.0.0.1 >"$LOG_DIR/mariadb.log" 2>&1 &
    wait_for 30 mariadb mariadb -u root -e "SELECT 1"
    say "started mariadb (pid $(cat /run/mysqld/mysqld.pid))"
  fi
  mariadb -u root -e "CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DB_PASS';
    GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;"
}

start_slurm() {
  if running $RUN_DIR/slurmdbd.pid; then say "slurmdbd already running"; else
    slurmdbd
    wait_for 30 slurmdbd sacctmgr -n list cluster
    say "started slurmdbd (pid $(cat $RUN_DIR/slurmdbd.pid))"
  fi
  if ! sacctmgr -n -P list cluster format=cluster | grep -qx "$CLUSTER"; then
    sacctmgr -i add cluster "$CLUSTER" >/dev/null
    say "registered cluster $CLUSTER in accounting"
  fi
  if [[ -n "${CONFIG_CHANGED:-}" ]] && running $RUN_DIR/slurmctld.pid; then
    # A changed slurm.conf: restart the SLURM daemons (some settings need more than reconfigure).
    stop_pidfile slurmd $RUN_DIR/slurmd.pid
    stop_pidfile slurmctld $RUN_DIR/slurmctld.pid
  fi
  if running $RUN_DIR/slurmctld.pid; then say "slurmctld already running"; else
    slurmctld
    wait_for 30 slurmctld scontrol ping
    say "started slurmctld (pid $(cat $RUN_DIR/slurmctld.pid))"
  fi
  if running $RUN_DIR/slurmd.pid; then say "slurmd already running"; else
    slurmd -N localhost
    wait_for 10 "slurmd's pid file" test -s $RUN_DIR/slurmd.pid
    say "started slurmd -N localhost (pid $(cat $RUN_DIR/slurmd.pid))"
  fi
  # A node left DOWN/DRAIN by an earlier run (e.g. a changed config) is put back in service.
  wait_for 30 "node localhost" bash -c 'sinfo -h -n localhost -o %T | grep -qvE "^(unk|down|not_responding)"'
  if sinfo -h -n localhost -o %T | grep -qE "drain|down"; then
    scontrol update nodename=localhost state=resume || true
  fi
  wait_for 30 "an idle node" bash -c 'sinfo -h -o %T | grep -qE "idle|mix|alloc"'
  say "cluster $CLUSTER is up:"
  sinfo
}

stop_pidfile() {  # stop_pidfile NAME PIDFILE: SIGTERM the process in the pid file, wait for it
  local name=$1 pidfile=$2 pid
  if ! running "$pidfile"; then say "$name not running"; return; fi
  pid=$(cat "$pidfile")
  kill "$pid"
  for ((i = 0; i < 40; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
  say "stopped $name (pid $pid)"
}

case "${1:-}" in
start)
  start_time=$SECONDS
  install_packages
  mkdir -p "$LOG_DIR"
  write_config
  start_munge
  start_mariadb
  start_slurm
  say "ready in $((SECONDS - start_time)) s"
  ;;
stop)
  stop_pidfile slurmd $RUN_DIR/slurmd.pid
  stop_pidfile slurmctld $RUN_DIR/slurmctld.pid
  stop_pidfile slurmdbd $RUN_DIR/slurmdbd.pid
  stop_pidfile mariadb /run/mysqld/mysqld.pid
  stop_pidfile munged /run/munge/munged.pid
  ;;
status)
  for pair in munged:/run/munge/munged.pid mariadb:/run/mysqld/mysqld.pid \
    slurmdbd:$RUN_DIR/slurmdbd.pid slurmctld:$RUN_DIR/slurmctld.pid slurmd:$RUN_DIR/slurmd.pid; do
    if running "${pair#*:}"; then say "${pair%%:*}: running (pid $(cat "${pair#*:}"))"; else say "${pair%%:*}: stopped"; fi
  done
  sinfo || true
  ;;
*)
  echo "usage: $0 start|stop|status" >&2
  exit 2
  ;;
esac
