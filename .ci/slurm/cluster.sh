#!/usr/bin/env bash
# A single-node Slurm cluster on loopback, for CI: Debian's Slurm 22.05 and
# munge, started and stopped by hand (no systemd).
#
#   bash .ci/slurm/cluster.sh install   # apt-get install munge slurmctld slurmd slurm-client
#   bash .ci/slurm/cluster.sh start     # write the config, start munged, slurmctld, slurmd
#   bash .ci/slurm/cluster.sh stop      # stop the three daemons by PID, remove pidfiles
#   bash .ci/slurm/cluster.sh status    # sinfo + squeue --states=all
#
# The config goes where every Slurm command looks for it, /etc/slurm/slurm.conf
# (+ gres.conf): the plugin's job step strips SLURM_* variables, SLURM_CONF
# included, before its `srun`, so a config elsewhere is not found inside jobs.
# `start` refuses to overwrite a slurm.conf it did not write; `stop` removes its
# own. State, logs and pidfiles live in $SLURM_CI_DIR (default /tmp/multimag-slurm).
#
# The node advertises SLURM_CI_CPUS CPUs (default 16), SLURM_CI_MEM_MB memory
# (default 64000) and one GPU whose device file is /dev/null, whatever the
# machine has (SlurmdParameters=config_overrides, task/none: nothing is
# enforced), so the profile's real requests (cpus_per_task, mem_mb, gpu) are
# accepted. A job that asks for more than that fails at submission
# (EnforcePartLimits=ALL) instead of pending forever.
set -euo pipefail

DIR=${SLURM_CI_DIR:-/tmp/multimag-slurm}
ETC=/etc/slurm
CONF=$ETC/slurm.conf
MARK="# written by .ci/slurm/cluster.sh"
HOST=$(hostname -s)
CPUS=${SLURM_CI_CPUS:-16}
MEM_MB=${SLURM_CI_MEM_MB:-64000}
CTLD_PORT=${SLURM_CI_CTLD_PORT:-6817}
SLURMD_PORT=${SLURM_CI_SLURMD_PORT:-6818}
MUNGE_PID=/run/munge/munged.pid

log() { echo "[slurm-ci] $*" >&2; }

install_packages() {
    if command -v slurmctld >/dev/null && command -v slurmd >/dev/null \
        && command -v sbatch >/dev/null && command -v munged >/dev/null; then
        log "Slurm and munge already installed"
        return
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null
    apt-get install -y -q --no-install-recommends munge slurmctld slurmd slurm-client >/dev/null
    log "installed $(dpkg-query -W -f='slurmctld ${Version}' slurmctld)"
}

write_config() {
    if [[ -f $CONF ]] && ! grep -qxF "$MARK" "$CONF"; then
        log "$CONF exists and was not written by this script: not touching a real cluster"
        return 1
    fi
    mkdir -p "$ETC" "$DIR"/ctld "$DIR"/slurmd "$DIR"/log "$DIR"/run
    cat > "$CONF" <<EOF
$MARK
# one node on loopback, for CI only; state and logs in $DIR
ClusterName=multimagci
SlurmctldHost=$HOST(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
SwitchType=switch/none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
SlurmdParameters=config_overrides
EnforcePartLimits=ALL
ReturnToService=2
# bind to the node's address (127.0.0.1), not to every interface
CommunicationParameters=NoCtldInAddrAny,NoInAddrAny
MinJobAge=3600
KillWait=5
InactiveLimit=0
GresTypes=gpu
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
StateSaveLocation=$DIR/ctld
SlurmdSpoolDir=$DIR/slurmd
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM_MB Gres=gpu:1 State=UNKNOWN
PartitionName=ci Nodes=$HOST Default=YES MaxTime=7-00:00:00 State=UP
EOF
    # The GPU is /dev/null: a job that asks for one is scheduled and sees no
    # CUDA device, so the code under test takes its CPU path.
    printf '%s\nNodeName=%s Name=gpu File=/dev/null\n' "$MARK" "$HOST" > "$ETC/gres.conf"
}

alive() { [[ -f $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

start_munge() {
    if alive $MUNGE_PID; then
        log "munged already running (pid $(cat $MUNGE_PID))"
        return
    fi
    rm -f $MUNGE_PID
    # Debian's policy-rc.d kept the package from starting it: do it by hand.
    install -d -o munge -g munge -m 0755 /run/munge
    install -d -o munge -g munge -m 0700 /var/log/munge /var/lib/munge
    if [[ ! -s /etc/munge/munge.key ]]; then
        mungekey --create --keyfile /etc/munge/munge.key
        chown munge:munge /etc/munge/munge.key
        chmod 0400 /etc/munge/munge.key
    fi
    runuser -u munge -- /usr/sbin/munged
    for _ in $(seq 50); do alive $MUNGE_PID && break; sleep 0.1; done
    munge -n | unmunge >/dev/null
    log "munged running (pid $(cat $MUNGE_PID))"
}

start() {
    install_packages
    write_config
    start_munge
    if ! alive "$DIR/run/slurmctld.pid"; then
        # a fresh queue: no state from an earlier run of this script
        rm -rf "$DIR/run/slurmctld.pid" "$DIR/ctld" && mkdir -p "$DIR/ctld"
        /usr/sbin/slurmctld -f "$CONF"
    fi
    if ! alive "$DIR/run/slurmd.pid"; then
        rm -f "$DIR/run/slurmd.pid"
        /usr/sbin/slurmd -f "$CONF"
    fi
    local state=""
    for _ in $(seq 150); do
        state=$(sinfo -h -n "$HOST" -o %T 2>/dev/null || true)
        [[ $state == idle* || $state == mixed* || $state == allocated* ]] && break
        sleep 0.2
    done
    if [[ $state != idle* && $state != mixed* && $state != allocated* ]]; then
        log "the node did not come up (state '$state'); logs:"
        tail -n 20 "$DIR"/log/slurmctld.log "$DIR"/log/slurmd.log >&2 || true
        return 1
    fi
    log "cluster up: node $HOST ($CPUS CPUs, $MEM_MB MB, gpu:1 on /dev/null), partition ci"
}

stop_pidfile() {
    local name=$1 pidfile=$2
    if alive "$pidfile"; then
        local pid
        pid=$(cat "$pidfile")
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        if kill -0 "$pid" 2>/dev/null; then
            log "$name (pid $pid) ignored SIGTERM; SIGKILL"
            kill -9 "$pid" 2>/dev/null || true
        fi
        log "stopped $name (pid $pid)"
    fi
    rm -f "$pidfile"
}

stop() {
    if [[ -f $CONF ]] && alive "$DIR/run/slurmctld.pid"; then
        scancel --user="$(id -un)" 2>/dev/null || true
    fi
    stop_pidfile slurmd "$DIR/run/slurmd.pid"
    stop_pidfile slurmctld "$DIR/run/slurmctld.pid"
    stop_pidfile munged $MUNGE_PID
    local f
    for f in "$CONF" "$ETC/gres.conf"; do
        if [[ -f $f ]] && grep -qxF "$MARK" "$f"; then rm -f "$f"; fi
    done
}

status() {
    sinfo
    squeue --states=all -o '%.8i %.9P %.40k %.10T %.8M %R'
}

case "${1:-}" in
    install) install_packages ;;
    start) start ;;
    stop) stop ;;
    status) status ;;
    *) echo "usage: $0 install|start|stop|status" >&2; exit 2 ;;
esac
