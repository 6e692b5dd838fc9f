#!/usr/bin/env bash
# scripts/slurm-cluster.sh -- a real, local Slurm cluster for qcg-hier tests and CI.
#
# Runs one slurmctld plus N slurmd daemons on THIS host, one slurmd per virtual
# node n1..nN ("multiple slurmd": `slurmd -N nX`, each on its own TCP port), with
# munge authentication through a private munged.  Debian 12's Slurm 22.05 packages
# support this out of the box.  Needs root (SlurmUser=root); no systemd needed.
#
# Usage:
#   scripts/slurm-cluster.sh install              apt-get install slurmctld slurmd slurm-client munge
#                                                 (no-op when already installed)
#   scripts/slurm-cluster.sh start [NODES] [CPUS] start NODES virtual nodes x CPUS CPUs (default 4 x 4)
#                                                 and wait until all are idle; no-op if already
#                                                 running with the same shape, else restart
#   scripts/slurm-cluster.sh status               daemon pids + sinfo; exit 3 if not (fully) running
#   scripts/slurm-cluster.sh stop                 cancel jobs, stop the daemons this script started
#   scripts/slurm-cluster.sh env                  print export lines:  eval "$(scripts/slurm-cluster.sh env)"
#   scripts/slurm-cluster.sh selftest             quick checks: sinfo, srun over all nodes, sbatch,
#                                                 salloc + --overlap / --exact steps
#
# Then use it from any shell:
#   eval "$(scripts/slurm-cluster.sh env)"        # sets SLURM_CONF
#   sinfo; srun -N4 -n4 printenv SLURMD_NODENAME; salloc -N2 ...; sbatch ...
#
# All virtual nodes are this host: `hostname` is the same everywhere, identify the
# node with $SLURMD_NODENAME inside a step.
#
# Environment (all optional):
#   QCG_SLURM_DIR            state dir: config, logs, spool, pid files, munge key/socket
#                            [/tmp/qcg-hier-slurm]
#   QCG_SLURM_CTLD_PORT      slurmctld port                               [16917]
#   QCG_SLURM_SLURMD_PORT    slurmd port base; node i listens on base+i  [17100]
#   QCG_SLURM_START_TIMEOUT  seconds `start` waits for idle nodes         [60]
#
# Nothing is written outside the state dir (apt-get install aside: /etc/slurm,
# /etc/munge are never touched).  `stop` signals only pids read from this script's
# own pid files after checking /proc/PID/comm (munged, slurmctld, slurmd), plus, as
# a last resort, slurmstepd processes whose environment carries this cluster's
# marker variable (they are children of our slurmd) and the task processes under
# them.  It never uses pkill/killall.

set -euo pipefail

# daemons live in sbin; CI shells do not always have it on PATH
PATH="$PATH:/usr/sbin:/sbin"

# Do not let an outer Slurm job (or salloc shell) leak into this cluster.
while read -r _v; do
    case "$_v" in SLURM_*|SRUN_*|SALLOC_*|SBATCH_*) unset "$_v" ;; esac
done < <(compgen -e)
unset _v

DIR="${QCG_SLURM_DIR:-/tmp/qcg-hier-slurm}"
CTLD_PORT="${QCG_SLURM_CTLD_PORT:-16917}"
NODE_PORT_BASE="${QCG_SLURM_SLURMD_PORT:-17100}"
START_TIMEOUT="${QCG_SLURM_START_TIMEOUT:-60}"
PACKAGES=(slurmctld slurmd slurm-client munge)

ETC="$DIR/etc"
CONF="$ETC/slurm.conf"
SHAPE="$ETC/shape"          # "NODES CPUS" of the running cluster
LOGS="$DIR/log"
SPOOL="$DIR/spool"
PIDS="$DIR/run"
MUNGE_KEYDIR="$DIR/munge"
MUNGE_SOCKET="$PIDS/munge.socket"
MARKER="QCG_SLURM_CLUSTER_DIR"  # env var given to our daemons, inherited by slurmstepd

case "$DIR" in
    /*) ;;
    *) echo "QCG_SLURM_DIR must be an absolute path" >&2; exit 2 ;;
esac
case "${DIR%/}" in
    ""|/tmp|/etc|/usr|/var|/root|/home|/work) echo "refusing QCG_SLURM_DIR=$DIR" >&2; exit 2 ;;
esac

say() { printf '[slurm-cluster] %s\n' "$*" >&2; }
fail() { say "ERROR: $*"; exit 1; }
clock() { date +%s%N; }
since() { echo "$(( ($(clock) - $1) / 1000000 ))" | awk '{printf "%.2f", $1 / 1000}'; }

# -------------------------------------------------------------- processes ----

# live_pid PIDFILE COMM: print the pid and succeed iff that process is alive,
# its /proc/PID/comm is COMM and it belongs to this cluster (a stale pid file
# must not make us signal somebody else's slurmd after a pid was reused).
live_pid() {
    local pid
    [[ -s "$1" ]] || return 1
    pid="$(tr -cd '0-9' < "$1")"
    [[ -n "$pid" ]] && is_comm "$pid" "$2" && is_ours "$pid" || return 1
    echo "$pid"
}

# is_ours PID: started for this cluster: its command line names a file in the
# state dir (-f slurm.conf, --socket=...), or its environment has our marker
# or our SLURM_CONF (also true for a slurmd restarted by hand with -f $SLURM_CONF).
is_ours() {
    local args
    args="$(tr '\0' '\n' < "/proc/$1/cmdline" 2>/dev/null || true)"
    [[ "$args" == *"$DIR/"* ]] && return 0
    has_env "$1" "$MARKER=$DIR" || has_env "$1" "SLURM_CONF=$CONF"
}

# has_env PID NAME=VALUE: that exact entry is in the process's environment
has_env() {
    local envs
    envs="$(tr '\0' '\n' < "/proc/$1/environ" 2>/dev/null || true)"
    [[ $'\n'"$envs"$'\n' == *$'\n'"$2"$'\n'* ]]
}

# is_comm PID COMM: PID is a live (not zombie) process named COMM.  PID 1 here
# may be slow to reap orphans, so a zombie must count as gone.
is_comm() {
    local stat
    [[ "$(cat "/proc/$1/comm" 2>/dev/null || true)" == "$2" ]] || return 1
    stat="$(cat "/proc/$1/stat" 2>/dev/null || true)"
    stat="${stat##*) }"
    [[ -n "$stat" && "${stat:0:1}" != Z && "${stat:0:1}" != X ]]
}

# terminate COMM GRACE PID...: SIGTERM, wait up to GRACE s, then SIGKILL,
# re-checking the process name every time before signalling.
terminate() {
    local comm="$1" grace="$2" pid i alive
    shift 2
    (($#)) || return 0
    for pid in "$@"; do is_comm "$pid" "$comm" && kill -TERM "$pid" 2>/dev/null || true; done
    for ((i = 0; i < grace * 10; i++)); do
        alive=0
        for pid in "$@"; do is_comm "$pid" "$comm" && alive=1; done
        ((alive)) || return 0
        sleep 0.1
    done
    for pid in "$@"; do
        if is_comm "$pid" "$comm"; then
            say "$comm $pid ignored SIGTERM for ${grace}s: SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    done
}

# stop_by_pidfiles COMM GRACE PIDFILE...
stop_by_pidfiles() {
    local comm="$1" grace="$2" f pid found=()
    shift 2
    for f in "$@"; do
        [[ -e "$f" ]] || continue
        if pid="$(live_pid "$f" "$comm")"; then found+=("$pid"); fi
        rm -f "$f"
    done
    ((${#found[@]})) || return 0
    terminate "$comm" "$grace" "${found[@]}"
    say "stopped $comm (pid ${found[*]})"
}

# slurmstepd processes started by one of our slurmd (marker in their environment)
our_stepds() {
    local p pid
    for p in /proc/[0-9]*; do
        pid="${p#/proc/}"
        is_comm "$pid" slurmstepd || continue
        if has_env "$pid" "$MARKER=$DIR"; then echo "$pid"; fi
    done
}

# descendants PID...: every descendant of the given pids, as "pid comm" lines
descendants() {
    ps -e -o pid=,ppid=,comm= | awk -v roots="$*" '
        BEGIN { n = split(roots, r, " "); for (i = 1; i <= n; i++) mark[r[i]] = 1 }
        { parent[$1] = $2; c = $0; sub(/^ *[0-9]+ +[0-9]+ /, "", c); name[$1] = c }
        END {
            do {
                grew = 0
                for (p in parent) if (!(p in mark) && (parent[p] in mark)) { mark[p] = 1; grew = 1; print p, name[p] }
            } while (grew)
        }'
}

# Last resort for `stop`: step daemons of this cluster that outlived their job
# (e.g. slurmctld had died, so scancel could not reach them), and the task
# processes under them.  slurmstepd ignores SIGTERM, and its tasks survive a
# SIGKILL of slurmstepd, so the tasks go first.
kill_leftover_steps() {
    local stepds=() kids=() line pid comm i alive sig
    mapfile -t stepds < <(our_stepds)
    ((${#stepds[@]})) || return 0
    mapfile -t kids < <(descendants "${stepds[@]}")
    say "leftover slurmstepd of this cluster: ${stepds[*]} (${#kids[@]} task processes)"
    for sig in TERM KILL; do
        for line in "${kids[@]}"; do
            read -r pid comm <<< "$line"
            is_comm "$pid" "$comm" && kill "-$sig" "$pid" 2>/dev/null || true
        done
        for ((i = 0; i < 30; i++)); do
            alive=0
            for line in "${kids[@]}"; do
                read -r pid comm <<< "$line"
                is_comm "$pid" "$comm" && alive=1
            done
            ((alive)) || break
            sleep 0.1
        done
    done
    for pid in "${stepds[@]}"; do is_comm "$pid" slurmstepd && kill -KILL "$pid" 2>/dev/null || true; done
}

port_busy() {  # port_busy PORT: something listens on TCP PORT
    local hex
    hex="$(printf ':%04X' "$1")"
    awk -v h="$hex" 'substr($2, length($2) - 4) == h && $4 == "0A" { f = 1 } END { exit !f }' \
        /proc/net/tcp /proc/net/tcp6 2>/dev/null
}

node_list() { local i; for ((i = 1; i <= $1; i++)); do echo "n$i"; done; }

ctld_alive() { live_pid "$PIDS/slurmctld.pid" slurmctld >/dev/null; }

# everything of an N-node cluster is alive
all_alive() {
    local n
    live_pid "$PIDS/munged.pid" munged >/dev/null || return 1
    ctld_alive || return 1
    for n in $(node_list "$1"); do live_pid "$PIDS/slurmd-$n.pid" slurmd >/dev/null || return 1; done
}

log_tail() {  # show the end of every log, for failures
    local f
    for f in "$LOGS"/*.log "$LOGS"/*.out; do
        [[ -s "$f" ]] || continue
        echo "----- tail of $f" >&2
        tail -n "${1:-15}" "$f" >&2
    done
}

idle_count() { sinfo -h -N -t idle -o '%N' 2>/dev/null | sort -u | wc -l; }

# ----------------------------------------------------------------- install ---
cmd_install() {
    local p missing=()
    for p in "${PACKAGES[@]}"; do
        [[ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)" == "install ok installed" ]] \
            || missing+=("$p")
    done
    if ((${#missing[@]} == 0)); then
        say "already installed: ${PACKAGES[*]} ($(slurmd -V 2>/dev/null || echo '?'))"
        return 0
    fi
    ((EUID == 0)) || fail "install needs root"
    local t0 own_policy=0 rc=0 aptlog
    t0="$(clock)"
    aptlog="$(mktemp /tmp/qcg-slurm-apt.XXXXXX)"
    # The packages' maintainer scripts would start system-wide munged/slurmd via
    # their init scripts; a policy-rc.d that says "no" prevents that.
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\n# temporary, from qcg-hier scripts/slurm-cluster.sh\nexit 101\n' > /usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        own_policy=1
    fi
    say "apt-get update"
    apt-get update -qq > "$aptlog" 2>&1 || rc=$?
    if ((rc == 0)); then
        say "apt-get install --no-install-recommends ${missing[*]}"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            "${PACKAGES[@]}" >> "$aptlog" 2>&1 || rc=$?
    fi
    ((own_policy)) && rm -f /usr/sbin/policy-rc.d
    if ((rc != 0)); then
        tail -n 25 "$aptlog" >&2
        fail "apt-get failed (exit $rc); full log: $aptlog"
    fi
    rm -f "$aptlog"
    say "installed in $(since "$t0")s: $(slurmd -V)"
}

# ------------------------------------------------------------------- start ---
# render_conf NODES CPUS: the complete slurm.conf on stdout.  It is a pure
# function of the shape and the settings, so comparing it with the running
# config tells whether a restart is needed.
render_conf() {
    local nodes="$1" cpus="$2" mem_mb
    mem_mb=$(($(awk '/^MemTotal:/ {print $2}' /proc/meminfo) / 1024 / nodes))
    ((mem_mb > 16384)) && mem_mb=16384
    ((mem_mb < 100)) && mem_mb=100
    cat <<EOF
# Generated by qcg-hier scripts/slurm-cluster.sh: $nodes nodes x $cpus CPUs on one host.
ClusterName=qcghier
SlurmctldHost=localhost
SlurmctldPort=$CTLD_PORT
SlurmdPort=$((NODE_PORT_BASE + 1))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCKET
CredType=cred/munge
StateSaveLocation=$SPOOL/ctld
SlurmdSpoolDir=$SPOOL/%n
SlurmctldPidFile=$PIDS/slurmctld.pid
SlurmdPidFile=$PIDS/slurmd-%n.pid
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
MailProg=/bin/true
# no cgroups (no systemd here, and N slurmd share one host)
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SwitchType=switch/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
# fast scheduling for tests: no 3 s batch-job delay, frequent full and backfill passes
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0,sched_interval=10,bf_interval=5
# virtual nodes claim more CPUs than the host has: trust slurm.conf, do not drain
SlurmdParameters=config_overrides
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=60
InactiveLimit=0
KillWait=5
MinJobAge=60
NodeName=n[1-$nodes] NodeHostname=localhost NodeAddr=127.0.0.1 Port=[$((NODE_PORT_BASE + 1))-$((NODE_PORT_BASE + nodes))] CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
}

start_munged() {
    local i
    if [[ ! -s "$MUNGE_KEYDIR/munge.key" ]]; then
        # key kept across restarts; 1024 random bytes, private
        head -c 1024 /dev/urandom > "$MUNGE_KEYDIR/munge.key"
        chmod 600 "$MUNGE_KEYDIR/munge.key"
    fi
    rm -f "$MUNGE_SOCKET" "$MUNGE_SOCKET.lock"
    env "$MARKER=$DIR" munged --key-file="$MUNGE_KEYDIR/munge.key" --socket="$MUNGE_SOCKET" \
        --pid-file="$PIDS/munged.pid" --log-file="$LOGS/munged.log" \
        --seed-file="$MUNGE_KEYDIR/munged.seed" --num-threads=8 \
        < /dev/null >> "$LOGS/munged.out" 2>&1 9>&- \
        || { log_tail; fail "munged did not start"; }
    for ((i = 0; i < 50; i++)); do
        [[ -S "$MUNGE_SOCKET" ]] && live_pid "$PIDS/munged.pid" munged >/dev/null && break
        sleep 0.1
    done
    echo ping | munge -S "$MUNGE_SOCKET" 2>/dev/null | unmunge -S "$MUNGE_SOCKET" >/dev/null 2>&1 \
        || { log_tail; fail "munge credential round trip failed"; }
}

cmd_start() {
    local nodes="${1:-4}" cpus="${2:-4}"
    if ! [[ "$nodes" =~ ^[1-9][0-9]*$ ]] || ((nodes > 256)); then fail "NODES must be 1..256, got '$nodes'"; fi
    [[ "$cpus" =~ ^[1-9][0-9]*$ ]] || fail "CPUS must be a positive integer, got '$cpus'"
    ((EUID == 0)) || fail "start needs root (SlurmUser=root)"
    local d
    for d in munged slurmctld slurmd sinfo srun; do
        command -v "$d" >/dev/null || fail "$d not found: run '$0 install' first"
    done

    local wanted
    wanted="$(render_conf "$nodes" "$cpus")"
    if all_alive "$nodes" && [[ -f "$CONF" && "$(cat "$CONF")" == "$wanted" ]] \
        && [[ "$(cat "$SHAPE" 2>/dev/null)" == "$nodes $cpus" ]]; then
        say "already running: $nodes nodes x $cpus CPUs ($CONF)"
        return 0
    fi
    if ctld_alive || compgen -G "$PIDS/*.pid" >/dev/null; then
        say "running with another shape or a dead daemon: restarting"
        cmd_stop
    fi

    local p
    for p in "$CTLD_PORT" $(seq $((NODE_PORT_BASE + 1)) $((NODE_PORT_BASE + nodes))); do
        port_busy "$p" && fail "TCP port $p is in use (set QCG_SLURM_CTLD_PORT / QCG_SLURM_SLURMD_PORT)"
    done
    getent hosts "$(hostname)" >/dev/null \
        || say "WARNING: hostname '$(hostname)' does not resolve; srun/salloc may fail"

    local t0 n i
    t0="$(clock)"
    say "starting $nodes nodes x $cpus CPUs in $DIR"
    # fresh controller state and logs on every start (job ids restart at 1)
    rm -rf "${DIR:?}/etc" "${DIR:?}/log" "${DIR:?}/spool" "${DIR:?}/run"
    mkdir -p "$ETC" "$LOGS" "$SPOOL/ctld" "$PIDS" "$MUNGE_KEYDIR"
    for n in $(node_list "$nodes"); do mkdir -p "$SPOOL/$n"; done
    # munged: socket dir must be traversable by all, key dir private
    chmod 755 "$DIR" "$PIDS"
    chmod 700 "$MUNGE_KEYDIR"
    printf '%s\n' "$wanted" > "$CONF"
    echo "$nodes $cpus" > "$SHAPE"
    printf 'export SLURM_CONF=%s\n' "$CONF" > "$DIR/env.sh"
    export SLURM_CONF="$CONF"

    start_munged

    env "$MARKER=$DIR" slurmctld -f "$CONF" < /dev/null >> "$LOGS/slurmctld.out" 2>&1 9>&- \
        || { log_tail; fail "slurmctld did not start"; }
    for ((i = 0; i < 100; i++)); do
        scontrol ping 2>/dev/null | grep -q 'is UP' && break
        sleep 0.1
    done
    ctld_alive || { log_tail 30; fail "slurmctld is not running"; }

    for n in $(node_list "$nodes"); do
        env "$MARKER=$DIR" slurmd -f "$CONF" -N "$n" < /dev/null >> "$LOGS/slurmd-$n.out" 2>&1 9>&- \
            || { log_tail; fail "slurmd -N $n did not start"; }
    done

    local idle=0 deadline=$((SECONDS + START_TIMEOUT))
    while :; do
        idle="$(idle_count)"
        ((idle >= nodes)) && break
        if ((SECONDS >= deadline)); then
            sinfo -N -l >&2 || true
            log_tail 20
            fail "only $idle of $nodes nodes idle after ${START_TIMEOUT}s (logs in $LOGS)"
        fi
        sleep 0.1
    done
    say "up in $(since "$t0")s: $nodes idle nodes n[1-$nodes] x $cpus CPUs, partition debug"
    say "use it with:  export SLURM_CONF=$CONF"
}

# ------------------------------------------------------------------ status ---
cmd_status() {
    local f pid name ok=0
    export SLURM_CONF="$CONF"
    for f in "$PIDS/munged.pid" "$PIDS/slurmctld.pid" "$PIDS"/slurmd-*.pid; do
        [[ -e "$f" ]] || continue
        name="${f##*/}"; name="${name%.pid}"
        if pid="$(live_pid "$f" "${name%%-*}")"; then
            printf '%-12s pid %s\n' "$name" "$pid"
        else
            printf '%-12s DEAD (stale pid file)\n' "$name"; ok=1
        fi
    done
    if ! ctld_alive || [[ ! -f "$SHAPE" ]]; then
        echo "cluster not running ($DIR)"
        return 3
    fi
    local nodes cpus
    read -r nodes cpus < "$SHAPE"
    all_alive "$nodes" || ok=1
    echo "shape: $nodes nodes x $cpus CPUs   SLURM_CONF=$CONF"
    sinfo -N -o '%N %T %c %m' || ok=1
    squeue || true
    ((ok == 0)) || { echo "cluster degraded: a daemon is not running"; return 3; }
}

# -------------------------------------------------------------------- stop ---
cmd_stop() {
    local jobs i
    export SLURM_CONF="$CONF"
    if ctld_alive; then
        jobs="$(squeue -h -o '%A' 2>/dev/null | tr '\n' ' ' || true)"
        if [[ -n "${jobs// /}" ]]; then
            say "cancelling jobs: $jobs"
            # shellcheck disable=SC2086
            scancel $jobs 2>/dev/null || true
            for ((i = 0; i < 150; i++)); do
                [[ -z "$(squeue -h -t running,completing,pending -o '%A' 2>/dev/null)" ]] && break
                sleep 0.2
            done
        fi
    fi
    stop_by_pidfiles slurmd 15 "$PIDS"/slurmd-*.pid
    stop_by_pidfiles slurmctld 20 "$PIDS/slurmctld.pid"
    kill_leftover_steps
    stop_by_pidfiles munged 10 "$PIDS/munged.pid"
    rm -f "$SHAPE"
    say "stopped"
}

# ---------------------------------------------------------------- selftest ---
cmd_selftest() {
    ctld_alive && [[ -f "$SHAPE" ]] || fail "cluster not running: $0 start"
    local nodes cpus k tmp passed=0 failed=0 got want t0
    read -r nodes cpus < "$SHAPE"
    export SLURM_CONF="$CONF"
    k=$((nodes < 2 ? nodes : 2))
    tmp="$(mktemp -d /tmp/qcg-slurm-selftest.XXXXXX)"
    t0="$(clock)"
    local lap="$t0"
    check() {  # check NAME GOT WANT
        if [[ "$2" == "$3" ]]; then
            echo "ok    $1  ($(since "$lap")s)"; passed=$((passed + 1))
        else
            printf 'FAIL  %s\n      got:  %s\n      want: %s\n' "$1" "$2" "$3"; failed=$((failed + 1))
        fi
        lap="$(clock)"
    }
    local T="timeout 60"

    check "sinfo: $nodes idle nodes" "$(idle_count)" "$nodes"

    want="$(node_list "$nodes" | sort | tr '\n' ' ')"
    got="$($T srun -N"$nodes" -n"$nodes" printenv SLURMD_NODENAME 2>&1 | sort | tr '\n' ' ')"
    check "srun -N$nodes -n$nodes: every node answers" "$got" "$want"

    # poll instead of `sbatch --wait`, which sleeps 2 s, then 8 s, between its checks
    local job state="" i
    # shellcheck disable=SC2016  # expanded inside the job
    job="$(sbatch --parsable -N"$k" -o "$tmp/batch.out" \
        --wrap 'echo "nodes=$SLURM_JOB_NODELIST"; srun printenv SLURMD_NODENAME | sort | tr "\n" " "; echo' \
        2>&1)" || true
    [[ "$job" =~ ^[0-9]+$ ]] || { state="sbatch failed: $job"; job=""; }
    for ((i = 0; i < 600 && ${#job}; i++)); do
        state="$(squeue -h -t all -j "$job" -o '%T' 2>/dev/null || true)"
        [[ "$state" == COMPLETED || "$state" == FAILED || "$state" == CANCELLED* ]] && break
        sleep 0.1
    done
    check "sbatch job $job state" "$state" COMPLETED
    want="nodes=n[1-$k]"; ((k == 1)) && want="nodes=n1"
    check "sbatch -N$k job ran" "$(head -n1 "$tmp/batch.out" 2>/dev/null)" "$want"
    check "srun inside the batch job" "$(sed -n 2p "$tmp/batch.out" 2>/dev/null)" \
        "$(node_list "$k" | tr '\n' ' ')"

    # salloc shell (runs locally) with a long-running --overlap agent step, then an
    # --exact task step on the same node must still start while the agent runs.
    cat > "$tmp/alloc.sh" <<'EOS'
#!/bin/bash
srun -Q --overlap -N1 -n1 -w n1 sleep 20 &
agent=$!
sleep 0.5
echo "overlap=$(srun -Q --overlap -N"$SLURM_JOB_NUM_NODES" -n"$SLURM_JOB_NUM_NODES" printenv SLURMD_NODENAME | sort | tr '\n' ' ')"
echo "exact=$(srun -Q --exact -N1 -n1 -c1 -w n1 printenv SLURMD_NODENAME)"
kill "$agent" 2>/dev/null
wait
EOS
    chmod +x "$tmp/alloc.sh"
    $T salloc -Q -N"$k" --ntasks-per-node="$cpus" "$tmp/alloc.sh" > "$tmp/alloc.out" 2>&1 || true
    check "salloc -N$k + srun --overlap step" "$(grep '^overlap=' "$tmp/alloc.out")" \
        "overlap=$(node_list "$k" | tr '\n' ' ')"
    check "--exact step next to an --overlap agent" "$(grep '^exact=' "$tmp/alloc.out")" "exact=n1"

    if ((failed)); then
        echo "--- salloc output:"; cat "$tmp/alloc.out"
        echo "--- batch output:"; cat "$tmp/batch.out" 2>/dev/null || true
        log_tail 10
    fi
    rm -rf "$tmp"
    echo "selftest: $passed/$((passed + failed)) checks ok in $(since "$t0")s"
    ((failed == 0))
}

cmd_env() {
    echo "export SLURM_CONF=$CONF"
}

usage() { sed -n '2,/^$/p' "$0" | sed 's/^# \{0,1\}//'; }

# start/stop of one state dir are serialised (e.g. parallel test workers);
# fd 9 is closed for the daemons so that they do not inherit the lock.
lock_state_dir() {
    mkdir -p "$DIR"
    chmod 755 "$DIR"
    exec 9> "$DIR/.lock"
    flock -w 180 9 || fail "another slurm-cluster.sh holds $DIR/.lock for 180 s"
}

case "${1:-}" in
    install)  cmd_install ;;
    start)    shift; lock_state_dir; cmd_start "$@" ;;
    status)   cmd_status ;;
    stop)     lock_state_dir; cmd_stop ;;
    env)      cmd_env ;;
    selftest) cmd_selftest ;;
    -h|--help|help) usage ;;
    *) usage >&2; exit 2 ;;
esac
