#!/usr/bin/env bash
# A one-node SLURM cluster on this machine for the launcher integration tests (tests/test_slurm.py), kept
# entirely inside one directory that it owns and removes on stop.
#   bash .ci/slurm_local.sh install     # apt-get install slurmctld slurmd munge (the only step that changes the host)
#   bash .ci/slurm_local.sh start DIR   # config, keys, state, logs, sockets, pid files: all under DIR
#   bash .ci/slurm_local.sh env DIR     # the variables a client needs: SLURM_CONF, PATH (sacct stand-in), marker
#   bash .ci/slurm_local.sh stop DIR    # end its jobs, daemons and job steps, then remove DIR
#   bash .ci/slurm_local.sh status DIR
# It never writes /etc/slurm, /etc/munge or /usr/local, never uses the host's munged, and never stops a
# process by name: everything it starts carries PRUNING_SLURM_LOCAL=DIR in its environment (the daemons,
# slurmstepd and the jobs' processes inherit it), and `stop` ends exactly those processes. Its daemons listen
# on free ports, so a real SLURM on the same machine is neither used nor disturbed. A DIR holding a
# slurm.conf that this script did not write is refused. Needs root (slurmd runs jobs as their user).
set -euo pipefail
cmd=${1:-}
unset PRUNING_SLURM_LOCAL  # only the processes started below carry it (never this script or its caller)
MARK="# written by .ci/slurm_local.sh"

die() { echo "slurm_local: $*" >&2; exit "${2:-1}"; }

dir_arg() {
  [ -n "${1:-}" ] || die "usage: $0 start|env|stop|status DIR" 2
  mkdir -p "$1" && DIR=$(cd "$1" && pwd)
  if [ -e "$DIR/slurm.conf" ] && ! head -1 "$DIR/slurm.conf" | grep -qF "$MARK"; then
    die "$DIR/slurm.conf was not written by this script; refusing to touch it" 6
  fi
}

install() {
  if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null; then return; fi
  [ "$(id -u)" = 0 ] || die "installing slurmctld slurmd munge needs root" 3
  echo "[slurm_local] installing slurmctld slurmd munge (apt)"
  local log; log=$(mktemp)
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurmctld slurmd munge >"$log" 2>&1 || {
    apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurmctld slurmd munge \
      >"$log" 2>&1; } || { cat "$log" >&2; rm -f "$log"; exit 4; }
  rm -f "$log"
}

ancestors() {  # this script and the processes above it: never ours to stop, whatever their environment
  local pid=$$
  while [ -n "$pid" ] && [ "$pid" -gt 1 ]; do
    echo "$pid"
    pid=$(awk '{print $4}' "/proc/$pid/stat" 2>/dev/null || true)
  done
}

ours() {  # PIDs of every live process carrying this cluster's marker (daemons, slurmstepd, job processes)
  local f pid skip
  skip=" $(ancestors | xargs) "
  for f in /proc/[0-9]*/environ; do
    pid=${f#/proc/}; pid=${pid%/environ}
    case "$skip" in *" $pid "*) continue ;; esac
    if tr '\0' '\n' 2>/dev/null < "$f" | grep -qxF "PRUNING_SLURM_LOCAL=$DIR"; then
      grep -q '^State:.*Z' "/proc/$pid/status" 2>/dev/null || echo "$pid"
    fi
  done
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

saved_next_id() {  # above every job id this directory's cluster handed out (also one whose daemons died)
  local saved=0 id
  [ -s "$DIR/next_job_id" ] && saved=$(tr -dc 0-9 < "$DIR/next_job_id")
  saved=${saved:-0}
  for id in $(ls -d "$DIR"/state/ctld/hash.*/job.* "$DIR"/state/d/job* 2>/dev/null | sed 's/.*job\.\{0,1\}0*//'); do
    [[ "$id" =~ ^[0-9]+$ ]] && [ "$id" -ge "$saved" ] && saved=$(( id + 1 ))
  done
  echo "$saved"
}

configure() {
  local host cpus mem first_id ctld_port d_port
  host=$(hostname -s)
  cpus=$(( $(nproc) > 8 ? $(nproc) : 8 ))
  mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))
  mem=$(( mem > 66560 ? mem : 66560 ))  # 65 GB: the launcher's default --mem=64GB fits
  first_id=$(( ($(date +%s) - 1735689600) / 60 ))  # job ids never repeat across starts (minutes since 2025,
  [ "$NEXT_ID" -gt "$first_id" ] && first_id=$NEXT_ID  # or above what an earlier start in DIR handed out)
  ctld_port=$(free_port); d_port=$(free_port)
  while [ "$d_port" = "$ctld_port" ]; do d_port=$(free_port); done
  mkdir -p "$DIR/state/ctld" "$DIR/state/d" "$DIR/log" "$DIR/run" "$DIR/munge" "$DIR/bin"
  chmod 700 "$DIR/munge"
  dd if=/dev/urandom of="$DIR/munge/munge.key" bs=1 count=1024 2>/dev/null
  chmod 400 "$DIR/munge/munge.key"
  echo "NodeName=$host Name=gpu File=/dev/null" > "$DIR/gres.conf"
  cat > "$DIR/slurm.conf" <<EOF
$MARK: a one-node test cluster in $DIR
ClusterName=pruninglocal
SlurmctldHost=$host
SlurmctldPort=$ctld_port
SlurmdPort=$d_port
SlurmUser=root
AuthType=auth/munge
AuthInfo=socket=$DIR/munge/munge.socket
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
SchedulerType=sched/backfill
MpiDefault=none
ReturnToService=2
StateSaveLocation=$DIR/state/ctld
SlurmdSpoolDir=$DIR/state/d
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
FirstJobId=$first_id
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
  # disabled" and submitit never learns that a task was cancelled or timed out. This stand-in (first on the
  # PATH that `env` prints, never installed system-wide) answers submitit's query (sacct -o JobID,State,NodeList
  # --parsable2 -j IDS) from `scontrol show job`, which keeps finished jobs for MinJobAge.
  cat > "$DIR/bin/sacct" <<'SHIM'
#!/usr/bin/env bash
# written by .ci/slurm_local.sh (test cluster without accounting): see shim_sacct there
ids=""
while [ $# -gt 0 ]; do case "$1" in -j|--jobs) ids="$2"; shift 2 ;; *) shift ;; esac; done
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
  chmod 755 "$DIR/bin/sacct"
}

client_env() {
  echo "export SLURM_CONF=$DIR/slurm.conf PATH=$DIR/bin:\$PATH PRUNING_SLURM_LOCAL=$DIR"
}

start() {
  [ "$(id -u)" = 0 ] || die "needs root (slurmd runs the jobs); run as root or leave the SLURM tests off" 3
  for b in slurmctld slurmd munged sbatch; do
    command -v "$b" >/dev/null || die "$b is not installed; run: bash $0 install" 4
  done
  stop_processes  # an earlier cluster in this DIR whose daemons died (their jobs would hold the node)
  NEXT_ID=$(saved_next_id)
  rm -rf "$DIR/state" "$DIR/log" "$DIR/run" "$DIR/munge" "$DIR/bin"
  configure
  shim_sacct
  export SLURM_CONF=$DIR/slurm.conf
  env PRUNING_SLURM_LOCAL="$DIR" munged --force --socket="$DIR/munge/munge.socket" --key-file="$DIR/munge/munge.key" \
    --pid-file="$DIR/run/munged.pid" --log-file="$DIR/log/munged.log" --seed-file="$DIR/munge/munge.seed"
  env PRUNING_SLURM_LOCAL="$DIR" slurmctld -f "$DIR/slurm.conf"
  env PRUNING_SLURM_LOCAL="$DIR" slurmd -f "$DIR/slurm.conf"
  local s
  for _ in $(seq 1 60); do
    s=$(sinfo -h -o %T 2>/dev/null | head -1 || true)
    if [ "$s" = idle ]; then echo "[slurm_local] node $(hostname -s) idle (partition cpu) in $DIR"; return 0; fi
    sleep 1
  done
  echo "slurm_local: the node did not become idle (state: ${s:-none}); logs in $DIR/log" >&2
  tail -n 20 "$DIR"/log/*.log >&2 || true
  exit 5
}

stop_processes() {
  local pids
  if [ -s "$DIR/slurm.conf" ] && [ -n "$(ours)" ]; then  # end the jobs through the scheduler first
    SLURM_CONF=$DIR/slurm.conf timeout 20 scontrol show config 2>/dev/null \
      | awk -F= '/^NEXT_JOB_ID/ {gsub(/ /, "", $2); print $2}' > "$DIR/next_job_id.new" || true
    if [ -s "$DIR/next_job_id.new" ]; then mv "$DIR/next_job_id.new" "$DIR/next_job_id"; else rm -f "$DIR/next_job_id.new"; fi
    SLURM_CONF=$DIR/slurm.conf timeout 20 scancel --quiet --full --partition=cpu 2>/dev/null || true
    for _ in $(seq 1 20); do
      [ -z "$(SLURM_CONF=$DIR/slurm.conf timeout 5 squeue -h -o %i 2>/dev/null)" ] && break; sleep 0.5
    done
  fi
  pids=$(ours)
  [ -n "$pids" ] && kill $pids 2>/dev/null || true
  for _ in $(seq 1 20); do [ -z "$(ours)" ] && break; sleep 0.5; done
  pids=$(ours)
  [ -n "$pids" ] && kill -9 $pids 2>/dev/null || true
  for _ in $(seq 1 20); do [ -z "$(ours)" ] && return 0; sleep 0.25; done
  die "processes of the cluster in $DIR survived SIGKILL: $(ours)" 7
}

stop() {
  stop_processes
  rm -rf "$DIR"
  echo "[slurm_local] stopped; $DIR removed"
}

case "$cmd" in
  install) install ;;
  start) dir_arg "${2:-}"; start ;;
  env) dir_arg "${2:-}"; client_env ;;
  stop) dir_arg "${2:-}"; stop ;;
  status) dir_arg "${2:-}"; SLURM_CONF=$DIR/slurm.conf sinfo; SLURM_CONF=$DIR/slurm.conf squeue; echo "processes: $(ours | xargs)" ;;
  *) die "usage: $0 install | start|env|stop|status DIR" 2 ;;
esac
