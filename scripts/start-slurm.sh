#!/usr/bin/env bash
# Start a single-node Slurm (munge + slurmctld + slurmd) by hand, no systemd, state under /tmp.
# For CI and developers' machines: `sudo scripts/start-slurm.sh` (Debian packages slurm-wlm and
# munge must be installed). Prints the SLURM_CONF to export; idempotent.
set -euo pipefail

base=${EMLIVE_SLURM_DIR:-/tmp/emlive-slurm}
cpus=${EMLIVE_SLURM_CPUS:-8}          # advertised CPUs (config_overrides lets a 2-core node offer more)
mkdir -p "$base"/{state,spool,log}
conf="$base/slurm.conf"

real_mb=$(slurmd -C | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p')
memory_mb=$(( real_mb * 3 / 4 ))

cat > "$conf" <<CONF
ClusterName=emlive
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$base/state
SlurmdSpoolDir=$base/spool
SlurmctldPidFile=$base/slurmctld.pid
SlurmdPidFile=$base/slurmd.pid
SlurmctldLogFile=$base/log/slurmctld.log
SlurmdLogFile=$base/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerParameters=batch_sched_delay=0
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
SlurmdParameters=config_overrides
ReturnToService=2
MpiDefault=none
InactiveLimit=0
KillWait=5
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$memory_mb State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
CONF
export SLURM_CONF=$conf

# munge: a key, its run folder, the daemon as the munge user
if [ ! -s /etc/munge/munge.key ]; then
    mkdir -p /etc/munge
    dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none
fi
chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
mkdir -p /run/munge /var/log/munge /var/lib/munge
chown munge:munge /run/munge /var/log/munge /var/lib/munge
if ! pgrep -x munged >/dev/null; then
    runuser -u munge -- /usr/sbin/munged
fi

if ! scontrol ping 2>/dev/null | grep -q UP; then
    pkill -x slurmctld 2>/dev/null || true
    slurmctld -c -f "$conf"
fi
if ! pgrep -x slurmd >/dev/null; then
    slurmd -N localhost -f "$conf"
fi

for _ in $(seq 1 30); do
    if scontrol ping 2>/dev/null | grep -q UP && sinfo -h -o %T 2>/dev/null | grep -qE 'idle|mix|alloc'; then
        echo "SLURM_CONF=$conf"
        exit 0
    fi
    sleep 1
done
echo "Slurm did not come up; logs in $base/log" >&2
tail -n 20 "$base"/log/*.log >&2 || true
exit 1
