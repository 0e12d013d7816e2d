#!/usr/bin/env bash
# A real single-node SLURM cluster with accounting on this Debian 12 machine, as root: what
# tests/test_slurm.py runs the workflow on (`snakemake --profile profiles/slurm`).
#
#   bash .ci/slurm-single-node.sh start [STATE_DIR]  # munge, MariaDB, slurmdbd, slurmctld, slurmd (default /tmp/utrc-slurm)
#   bash .ci/slurm-single-node.sh stop  [STATE_DIR]  # stops what `start` started, by the pid files in STATE_DIR
#
# Needs Debian's slurm-wlm (22.05), slurmdbd, munge and mariadb-server (.ci/run installs them).
# Accounting (slurmdbd on MariaDB) is not optional: the Snakemake SLURM executor plugin asks `sacct` for
# each job's state, and without accounting it submits the jobs and then waits forever.
# The cluster: one node `localhost` with this machine's cores and 90 % of its memory, in one partition
# named `gpu` (Default) — the name profiles/slurm/config.yaml sets, so the test runs that profile
# unchanged — and one account `test` for root. Job comments are stored, so `sacct -o Comment` names
# the rule of each job (the plugin puts it there).
# `start` is idempotent: with a controller already answering, it does nothing.
set -euo pipefail
cmd=${1:?start|stop}
dir=${2:-/tmp/utrc-slurm}

if [ "$cmd" = stop ]; then  # the daemons `start` started (listed in $dir/started, last first), by their pid files
  if [ -f "$dir/started" ]; then
    tac "$dir/started" | while read -r pidfile; do
      [ -f "$pidfile" ] && kill "$(cat "$pidfile")" 2>/dev/null || true
    done
    rm -f "$dir/started"
  fi
  exit 0
fi

[ "$cmd" = start ] || { echo "usage: $0 start|stop [STATE_DIR]" >&2; exit 2; }
for daemon in munged mariadbd slurmdbd slurmctld slurmd; do
  command -v "$daemon" >/dev/null || [ -x "/usr/sbin/$daemon" ] \
    || { echo "error: $daemon is not installed (apt-get install slurm-wlm slurmdbd munge mariadb-server)" >&2; exit 2; }
done
[ "$(id -u)" -eq 0 ] || { echo "error: $0 start must run as root (it writes /etc/slurm and starts daemons)" >&2; exit 2; }
if scontrol ping 2>/dev/null | grep -q "is UP"; then
  sinfo
  exit 0
fi

mkdir -p "$dir"/{state,spool,mysql,log} /run/munge /run/mysqld
started() { echo "$1" >>"$dir/started"; }
chown munge:munge /run/munge
chown mysql:mysql "$dir/mysql" /run/mysqld
[ -f /etc/munge/munge.key ] || /usr/sbin/mungekey -c
chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
if ! munge -n >/dev/null 2>&1; then
  su -s /bin/sh munge -c "/usr/sbin/munged --pid-file=/run/munge/munged.pid"
  started /run/munge/munged.pid
fi

# where the machine's own MariaDB already runs (Debian's postinst starts it where services run), it serves: a
# second server cannot take its socket and port
if ! mariadb -u root -e "select 1" >/dev/null 2>&1; then
  [ -d "$dir/mysql/mysql" ] || mariadb-install-db --user=mysql --datadir="$dir/mysql" >"$dir/log/mariadb-init.log" 2>&1
  setsid mariadbd --user=mysql --datadir="$dir/mysql" --socket=/run/mysqld/mysqld.sock --bind-address=127.0.0.1 \
    --pid-file=/run/mysqld/mariadb.pid >"$dir/log/mariadb.log" 2>&1 </dev/null &
  started /run/mysqld/mariadb.pid
  for _ in $(seq 60); do mariadb -u root -e "select 1" >/dev/null 2>&1 && break; sleep 1; done
fi
mariadb -u root -e "CREATE DATABASE IF NOT EXISTS slurm_acct_db; CREATE USER IF NOT EXISTS 'slurm'@'localhost' \
  IDENTIFIED BY 'slurm'; GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;"

mkdir -p /etc/slurm
cat >/etc/slurm/slurmdbd.conf <<CONF
AuthType=auth/munge
DbdHost=localhost
DbdPort=6819
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=slurm
StorageLoc=slurm_acct_db
PidFile=$dir/slurmdbd.pid
LogFile=$dir/log/slurmdbd.log
CONF
chmod 600 /etc/slurm/slurmdbd.conf
memory_mb=$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)
cat >/etc/slurm/slurm.conf <<CONF
ClusterName=local
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
JobAcctGatherType=jobacct_gather/linux
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=6819
AccountingStoreFlags=job_comment
ReturnToService=2
NodeName=localhost CPUs=$(nproc) RealMemory=$memory_mb State=UNKNOWN
PartitionName=gpu Nodes=localhost Default=YES MaxTime=INFINITE State=UP
CONF

/usr/sbin/slurmdbd
started "$dir/slurmdbd.pid"
for _ in $(seq 60); do sacctmgr -n list cluster >/dev/null 2>&1 && break; sleep 1; done
sacctmgr -i add cluster local >/dev/null 2>&1 || true
sacctmgr -i add account test >/dev/null 2>&1 || true
sacctmgr -i add user root account=test >/dev/null 2>&1 || true
/usr/sbin/slurmctld
started "$dir/slurmctld.pid"
/usr/sbin/slurmd
started "$dir/slurmd.pid"
for _ in $(seq 60); do sinfo -h -o %t 2>/dev/null | grep -q idle && break; sleep 1; done
sinfo
sinfo -h -o %t | grep -q idle || { echo "error: the node did not come up; logs in $dir/log" >&2; exit 1; }
