#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, for the launcher integration tests (tests/test_slurm.py).
#   bash .ci/slurm_local.sh start   # install slurmctld/slurmd/munge if missing, configure, start, wait for idle
#   bash .ci/slurm_local.sh stop    # stop the daemons
#   bash .ci/slurm_local.sh status
# Needs root (it writes /etc/slurm/slurm.conf and runs the daemons) and apt for the packages (Debian's
# slurm-wlm 22.05). One node with this machine's cores and memory, partition `cpu`, no GPUs, no cgroups.
set -euo pipefail
cmd=${1:-start}
host=$(hostname -s)
state=/var/spool/slurm-local
conf=/etc/slurm/slurm.conf

need_root() {
  if [ "$(id -u)" != 0 ]; then
    echo "slurm_local: needs root (writes $conf, starts munged, slurmctld, slurmd); run as root or skip" >&2
    exit 3
  fi
}

install() {
  if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null; then return; fi
  echo "[slurm_local] installing slurmctld slurmd munge (apt)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurmctld slurmd munge >/tmp/slurm_local_apt.log 2>&1 || {
    apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurmctld slurmd munge \
      >/tmp/slurm_local_apt.log 2>&1; } || { cat /tmp/slurm_local_apt.log >&2; exit 4; }
}

configure() {
  mkdir -p /etc/slurm "$state/ctld" "$state/d" /var/log/slurm /run/munge
  [ -s /etc/munge/munge.key ] || mungekey --create --force >/dev/null 2>&1 \
    || dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 2>/dev/null
  chown munge:munge /etc/munge/munge.key /run/munge && chmod 400 /etc/munge/munge.key
  cpus=$(( $(nproc) > 8 ? $(nproc) : 8 ))
  mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))
  mem=$(( mem > 66560 ? mem : 66560 ))  # 65 GB: the launcher's default --mem=64GB fits
  echo "NodeName=$host Name=gpu File=/dev/null" > /etc/slurm/gres.conf
  cat > "$conf" <<EOF
# written by .ci/slurm_local.sh: a one-node test cluster
ClusterName=local
SlurmctldHost=$host
SlurmUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
SchedulerType=sched/backfill
MpiDefault=none
ReturnToService=2
StateSaveLocation=$state/ctld
SlurmdSpoolDir=$state/d
SlurmctldPidFile=$state/slurmctld.pid
SlurmdPidFile=$state/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
FirstJobId=$first_job_id
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
KillWait=5
SlurmdParameters=config_overrides
GresTypes=gpu
MinJobAge=3600
InactiveLimit=0
NodeName=$host CPUs=$cpus RealMemory=$mem Gres=gpu:1 State=UNKNOWN
PartitionName=cpu Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
}

shim_sacct() {
  # No accounting database on this one-node cluster, so the real sacct only says "accounting storage is
  # disabled" and submitit never learns that a task was cancelled or timed out. This stand-in answers
  # submitit's query (sacct -o JobID,State,NodeList --parsable2 -j IDS) from `scontrol show job`, which
  # keeps finished jobs for MinJobAge; any other use goes to the real sacct.
  cat > /usr/local/bin/sacct <<'SHIM'
#!/usr/bin/env bash
# written by .ci/slurm_local.sh (test cluster without accounting): see shim_sacct there
args=("$@"); ids=""
while [ $# -gt 0 ]; do case "$1" in -j|--jobs) ids="$2"; shift 2 ;; *) shift ;; esac; done
if [ -z "$ids" ] || /usr/bin/sacct -n -j 1 >/dev/null 2>&1; then exec /usr/bin/sacct "${args[@]}"; fi
echo "JobID|State|NodeList"
for id in ${ids//,/ }; do
  scontrol -o show job "$id" 2>/dev/null | while read -r line; do
    get() { sed -n "s/.*[[:space:]]$1=\([^[:space:]]*\).*/\1/p" <<<" $line"; }
    arr=$(get ArrayJobId); task=$(get ArrayTaskId); name=$(get JobId)
    if [ -n "$arr" ] && [ -n "$task" ]; then
      case "$task" in *[-,%]*) name="${arr}_[${task}]" ;; *) name="${arr}_${task}" ;; esac
    fi
    echo "$name|$(get JobState)|$(get NodeList)"
  done
done
SHIM
  chmod 755 /usr/local/bin/sacct
}

fresh_state() {
  # An earlier cluster's state can hold jobs whose nodes died with it (a machine that ran the tests before, or
  # daemons killed mid-job): recovered, they keep the node `allocated` for ever. So every start begins with
  # empty state. Job ids still never repeat across starts (a sweep directory or log may hold an earlier id):
  # the first id is above the next id saved by `stop`, above every job the old state still holds (jobs
  # of a cluster that died without `stop`), and at least the minutes since 2025-01-01.
  local saved=0 minutes id
  [ -s "$state/next_job_id" ] && saved=$(tr -dc 0-9 < "$state/next_job_id")
  saved=${saved:-0}
  for id in $(ls -d "$state"/ctld/hash.*/job.* "$state"/d/job* 2>/dev/null | sed 's/.*job\.\{0,1\}0*//'); do
    [[ "$id" =~ ^[0-9]+$ ]] && [ "$id" -ge "$saved" ] && saved=$(( id + 1 ))
  done
  minutes=$(( ($(date +%s) - 1735689600) / 60 ))
  first_job_id=$(( saved > minutes ? saved : minutes ))
  rm -rf "$state/ctld" "$state/d"
}

kill_leftovers() {
  # slurmstepd and the job processes of a cluster whose daemons are gone outlive them: stop them too, or an
  # orphaned job from an earlier run keeps using the cores. Job processes carry SLURM_CLUSTER_NAME=local.
  pkill -x slurmstepd 2>/dev/null || true
  local pid self=$$
  for pid in $(grep -l -a -s -x -z "SLURM_CLUSTER_NAME=local" /proc/[0-9]*/environ 2>/dev/null | cut -d/ -f3); do
    [ "$pid" = "$self" ] || [ "$pid" = "$PPID" ] || kill "$pid" 2>/dev/null || true
  done
}

start() {
  need_root
  install
  stop quiet
  fresh_state
  configure
  shim_sacct
  pgrep -x munged >/dev/null || munged --force
  slurmctld
  slurmd
  for _ in $(seq 1 60); do
    s=$(sinfo -h -o %T 2>/dev/null | head -1 || true)
    if [ "$s" = idle ]; then echo "[slurm_local] node $host idle (partition cpu, first job id $first_job_id)"; return 0; fi
    sleep 1
  done
  echo "slurm_local: the node did not become idle (state: ${s:-none}); logs in /var/log/slurm" >&2
  tail -n 20 /var/log/slurm/slurmctld.log /var/log/slurm/slurmd.log >&2 || true
  exit 5
}

stop() {
  mkdir -p "$state"
  if pgrep -x slurmctld >/dev/null; then
    # remember where job ids got to (see fresh_state), and end the jobs still queued or running
    timeout 20 scontrol show config 2>/dev/null | awk -F= '/^NEXT_JOB_ID/ {gsub(/ /, "", $2); print $2}' \
      > "$state/next_job_id.new" && [ -s "$state/next_job_id.new" ] && mv "$state/next_job_id.new" "$state/next_job_id"
    rm -f "$state/next_job_id.new"
    timeout 20 scancel --quiet --full --partition=cpu 2>/dev/null || true
    for _ in $(seq 1 20); do [ -z "$(timeout 5 squeue -h -o %i 2>/dev/null)" ] && break; sleep 0.5; done
  fi
  pkill -x slurmd 2>/dev/null || true
  pkill -x slurmctld 2>/dev/null || true
  for _ in $(seq 1 20); do { pgrep -x slurmd || pgrep -x slurmctld; } >/dev/null || break; sleep 0.5; done
  kill_leftovers
  [ "${1:-}" = quiet ] || echo "[slurm_local] stopped"
}

case "$cmd" in
  start) start ;;
  stop) stop ;;
  status) sinfo && squeue ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
