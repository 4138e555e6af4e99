#!/usr/bin/env bash
# A one-host SLURM cluster on loopback for the SLURM test: munge, slurmctld and slurmd, all state under $1
# (default /tmp/s10-slurm). Prints the SLURM_CONF to export. Needs Debian's slurm-wlm and munge (make slurm-test
# installs them) and root (slurmd starts the job steps as the submitting user).
set -euo pipefail
state=${1:-/tmp/s10-slurm}
host=$(hostname -s)
cpus=$(nproc)
mkdir -p "$state"/{spool,ctld,log}
conf="$state/slurm.conf"
cat > "$conf" <<CONF
ClusterName=s10
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmctldPort=6817
SlurmdPort=6818
AuthType=auth/munge
StateSaveLocation=$state/ctld
SlurmdSpoolDir=$state/spool
SlurmctldPidFile=$state/slurmctld.pid
SlurmdPidFile=$state/slurmd.pid
SlurmctldLogFile=$state/log/slurmctld.log
SlurmdLogFile=$state/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SlurmdTimeout=60
InactiveLimit=0
KillWait=5
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
CONF
if ! pgrep -x munged >/dev/null; then
  [ -s /etc/munge/munge.key ] || mungekey --create --force
  mkdir -p /run/munge && chown munge:munge /run/munge 2>/dev/null || true
  munged --force 2>/dev/null || runuser -u munge -- munged --force
fi
export SLURM_CONF=$conf
pkill -x slurmctld 2>/dev/null || true
pkill -x slurmd 2>/dev/null || true
sleep 1
slurmctld -c -f "$conf"
slurmd -c -f "$conf"
for _ in $(seq 60); do
  if sinfo -h -o %T 2>/dev/null | grep -qE "^idle"; then echo "SLURM_CONF=$conf"; exit 0; fi
  sleep 1
done
echo "the cluster did not come up; logs in $state/log" >&2
sinfo >&2 || true
tail -20 "$state"/log/*.log >&2 || true
exit 1
