# shellcheck shell=bash
# dev-stack part: paths, messages, locks, ports, run-dir state and process helpers, shared by every other part.
# Sourced by scripts/dev-stack (which sets HERE, the scripts directory); not meant to be run on its own.

GLOWD_CACHE=${GLOWD_CACHE:-$HOME/.cache/glowd}
DS_CACHE=$GLOWD_CACHE/devstack
RUN=${GLOWD_DEVSTACK_DIR:-$DS_CACHE/run}
DS_PARTS=$HERE/devstack
TIMEOUT=${GLOWD_DEVSTACK_TIMEOUT:-90}

log() { echo "dev-stack: $*" >&2; }
die() { echo "dev-stack: error: $*" >&2; exit 1; }
need() { command -v "$1" >/dev/null 2>&1 || die "$1 not found ($2)"; }

with_lock() { # with_lock FILE CMD...: serialise concurrent dev-stack calls on the same cache / run dir
    local f=$1; shift
    mkdir -p "$(dirname "$f")"
    if command -v flock >/dev/null 2>&1; then
        ( flock -w 900 9 || die "timed out waiting for lock $f"; "$@" ) 9>"$f"
    else
        "$@"
    fi
}

hex() { od -An -N"$1" -tx1 /dev/urandom | tr -d ' \n'; } # hex N: 2N random hex digits

# ---------------------------------------------------------------------------------------------------- ports
port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

pick_ports() { # pick_ports N: N distinct free ports below the kernel's ephemeral range (so that client sockets
               # cannot take them while a service is stopped for a fault test)
    local n=$1 p picked=" "
    while (( n > 0 )); do
        p=$(( 20000 + RANDOM % 12000 ))
        [[ $picked == *" $p "* ]] && continue
        if command -v ss >/dev/null 2>&1; then
            [[ -n $(ss -Htan "sport = :$p" 2>/dev/null) ]] && continue
        fi
        port_in_use "$p" && continue
        picked+="$p "; n=$((n - 1))
    done
    # shellcheck disable=SC2086 # unquoted on purpose: one space between ports, none around them
    echo $picked
}

# ---------------------------------------------------------------------------------------------------- state
# $RUN/state.env (the main stack's ports and cluster id) is written last by init_run (kafka.sh): its presence means
# the run dir is complete.
# shellcheck source=/dev/null
load_state() { [[ -f $RUN/state.env ]] && source "$RUN/state.env"; }
have_state() { [[ -f $RUN/state.env ]]; }
need_state() { have_state || die "not up; run: $0 up"; load_state; }

# ---------------------------------------------------------------------------------------------------- processes
pid_of() { # pid_of NAME: the recorded pid if that process is still ours and alive
    local f=$RUN/$1.pid pid
    [[ -f $f ]] || return 1
    pid=$(<"$f")
    [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null || return 1
    case $1 in
        kafka|kafka-secure) grep -qa 'kafka.Kafka' "/proc/$pid/cmdline" 2>/dev/null || return 1 ;;
        minio) grep -qa 'minio' "/proc/$pid/cmdline" 2>/dev/null || return 1 ;;
        moto) grep -qa 'moto_server' "/proc/$pid/cmdline" 2>/dev/null || return 1 ;;
        garage) grep -qa 'garage' "/proc/$pid/cmdline" 2>/dev/null || return 1 ;;
    esac
    echo "$pid"
}

launch() { # launch NAME LOGFILE CMD...: start detached (own session, no tty, survives this script); record pid
    local name=$1 logf=$2; shift 2
    # A process that died without `stop_proc` (SIGKILL, a reboot) leaves its pid file: the wait below would take
    # that stale pid for the new one, and the startup check would call a healthy start dead.
    rm -f "$RUN/$name.pid"
    # fd 9 is dev-stack's lock: a daemon holding it would block the next call; close every fd above 2
    # shellcheck disable=SC2016 # $$, $0 and $@ are the inner bash's
    setsid bash -c 'for fd in /proc/$$/fd/*; do fd=${fd##*/}; ((fd > 2)) && eval "exec $fd>&-"; done 2>/dev/null
                    echo $$ >"$0"; exec "$@"' "$RUN/$name.pid" "$@" </dev/null >>"$logf" 2>&1 9>&- &
    local i; for i in $(seq 50); do [[ -s $RUN/$name.pid ]] && break; sleep 0.05; done
}

stop_proc() { # stop_proc NAME GRACE_SECONDS [--kill]
    local name=$1 grace=$2 sig=TERM pid i
    [[ ${3:-} == --kill ]] && sig=KILL
    if pid=$(pid_of "$name"); then
        kill -s "$sig" "$pid" 2>/dev/null || true
        for ((i = 0; i < grace * 10; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        if kill -0 "$pid" 2>/dev/null; then
            log "$name (pid $pid) still running after ${grace}s, sending SIGKILL"
            kill -s KILL "$pid" 2>/dev/null || true
            for ((i = 0; i < 50; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        fi
        log "stopped $name (pid $pid, SIG$sig)"
    fi
    rm -f "$RUN/$name.pid"
}

wait_port() { # wait_port NAME PORT: until something listens, failing early when the process died
    local name=$1 port=$2 deadline=$((SECONDS + TIMEOUT))
    until port_in_use "$port"; do
        pid_of "$name" >/dev/null || { tail -n 30 "$RUN/logs/$name.log" >&2; die "$name exited during startup (log: $RUN/logs/$name.log)"; }
        (( SECONDS < deadline )) || die "$name did not open 127.0.0.1:$port within ${TIMEOUT}s (log: $RUN/logs/$name.log)"
        sleep 0.2
    done
}
