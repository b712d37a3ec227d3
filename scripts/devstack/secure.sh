# shellcheck shell=bash
# dev-stack part, sourced by scripts/dev-stack after kafka.sh (whose jars, DevstackAdmin helper, cluster-id and
# log4j files this broker uses too).

# A second single-node KRaft broker, started only by `secure-up`, for the TLS/SASL enforcement tests (G17 in
# docs/reliability.md). Its listeners, all on 127.0.0.1:
#   SECURE    SASL_SSL, SCRAM-SHA-512, certificate for DNS:localhost + IP:127.0.0.1 (signed by a throwaway CA)
#   BADHOST   SASL_SSL, SCRAM-SHA-512, certificate for wrong-host.invalid only (same CA): hostname verification fails
#   INTERNAL  PLAINTEXT, for inter-broker traffic and this script's topic helper only (bound to 127.0.0.1; the tests
#             never point glowd at it)
#   CONTROLLER PLAINTEXT, the KRaft controller
# Its config, certificates, data and state live in $RUN/secure; its pid and log next to the main broker's
# ($RUN/kafka-secure.pid, $RUN/logs/kafka-secure.log).
SEC=$RUN/secure
SECURE_USER=glowd
SECURE_MECHANISM=SCRAM-SHA-512
SECURE_HEAP_OPTS=${SECURE_KAFKA_HEAP_OPTS:--Xmx384m -Xms64m}
SECURE_TOPICS=(glowd.jobs:6 glowd.results:1 glowd.jobs.dlq:1)

pem_escaped() { # pem_escaped FILE...: the PEM text on one line, newlines as \n (a Java properties value)
    cat "$@" | awk '{printf "%s\\n", $0}'
}

make_certs() { # a CA, the broker's certificate (localhost, 127.0.0.1) and one for a wrong host name, all throwaway
    local d=$SEC/tls
    mkdir -p "$d"
    openssl req -x509 -newkey rsa:2048 -nodes -sha256 -days 3650 -subj "/CN=glowd dev-stack throwaway CA" \
        -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
        -keyout "$d/ca.key" -out "$d/ca.pem" 2>/dev/null || die "openssl: making the CA failed"
    local name san cn
    for name in broker badhost; do
        if [[ $name == broker ]]; then san="DNS:localhost,IP:127.0.0.1"; cn=localhost
        else san="DNS:wrong-host.invalid"; cn=wrong-host.invalid; fi
        openssl req -newkey rsa:2048 -nodes -sha256 -subj "/CN=$cn" -keyout "$d/$name.key" -out "$d/$name.csr" \
            2>/dev/null || die "openssl: key for $name failed"
        printf 'subjectAltName=%s\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n' \
            "$san" >"$d/$name.ext"
        openssl x509 -req -sha256 -days 3650 -in "$d/$name.csr" -CA "$d/ca.pem" -CAkey "$d/ca.key" \
            -set_serial "0x$(hex 8)" -extfile "$d/$name.ext" \
            -out "$d/$name.crt" 2>/dev/null || die "openssl: signing the $name certificate failed"
        cat "$d/$name.crt" "$d/ca.pem" >"$d/$name.chain.pem"
    done
    chmod 600 "$d"/*.key
}

init_secure() {
    [[ -f $SEC/state.env ]] && return 0
    need openssl "the secure broker's throwaway CA and certificates are made with openssl"
    # free ports, none of them one the main stack owns (it may be stopped, so its ports can look free)
    load_state || true
    local ports p clash=1
    while (( clash )); do
        read -r -a ports <<<"$(pick_ports 4)"
        clash=0
        for p in "${ports[@]}"; do
            [[ " ${KAFKA_PORT:-} ${KAFKA_CONTROLLER_PORT:-} ${MINIO_PORT:-} ${MINIO_CONSOLE_PORT:-} " == *" $p "* ]] && clash=1
        done
    done
    rm -rf "$SEC"; mkdir -p "$SEC/data" "$RUN/logs"
    SECURE_PORT=${ports[0]} SECURE_BADHOST_PORT=${ports[1]} SECURE_INTERNAL_PORT=${ports[2]} SECURE_CONTROLLER_PORT=${ports[3]}
    # hex only: it goes into StorageTool's `[name=...,password=...]` syntax unquoted
    local password; password=$(hex 16)
    make_certs
    local l
    {
        cat <<EOF
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$SECURE_CONTROLLER_PORT
listeners=SECURE://127.0.0.1:$SECURE_PORT,BADHOST://127.0.0.1:$SECURE_BADHOST_PORT,INTERNAL://127.0.0.1:$SECURE_INTERNAL_PORT,CONTROLLER://127.0.0.1:$SECURE_CONTROLLER_PORT
advertised.listeners=SECURE://127.0.0.1:$SECURE_PORT,BADHOST://127.0.0.1:$SECURE_BADHOST_PORT,INTERNAL://127.0.0.1:$SECURE_INTERNAL_PORT
controller.listener.names=CONTROLLER
# Inter-broker and controller traffic stay on PLAINTEXT listeners bound to 127.0.0.1 (INTERNAL, CONTROLLER): only
# SECURE and BADHOST are what clients under test are pointed at.
inter.broker.listener.name=INTERNAL
listener.security.protocol.map=CONTROLLER:PLAINTEXT,INTERNAL:PLAINTEXT,SECURE:SASL_SSL,BADHOST:SASL_SSL
sasl.enabled.mechanisms=$SECURE_MECHANISM
listener.name.secure.sasl.enabled.mechanisms=$SECURE_MECHANISM
listener.name.badhost.sasl.enabled.mechanisms=$SECURE_MECHANISM
listener.name.secure.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required ;
listener.name.badhost.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required ;
# SASL sessions expire after 10 s and clients re-authenticate (KIP-368): a password changed or deleted on the
# broker reaches a running client within seconds, without a restart (the credential-rotation test)
connections.max.reauth.ms=10000
log.dirs=$SEC/data
num.partitions=1
default.replication.factor=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=6
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
min.insync.replicas=1
group.initial.rebalance.delay.ms=0
broker.session.timeout.ms=4000
broker.heartbeat.interval.ms=500
EOF
        # Per-listener PEM key stores, inline (a file-based PEM key store would need an encrypted key)
        for l in secure:broker badhost:badhost; do
            echo "listener.name.${l%%:*}.ssl.keystore.type=PEM"
            echo "listener.name.${l%%:*}.ssl.keystore.certificate.chain=$(pem_escaped "$SEC/tls/${l#*:}.chain.pem")"
            echo "listener.name.${l%%:*}.ssl.keystore.key=$(pem_escaped "$SEC/tls/${l#*:}.key")"
        done
    } >"$SEC/server.properties"
    chmod 600 "$SEC/server.properties"
    local cluster_id; cluster_id=$(random_cluster_id)
    "$JAVA" -Xmx256m -cp "$KAFKA_LIBS/*" -Dlog4j2.configurationFile="$RUN/kafka/tools-log4j2.properties" \
        kafka.tools.StorageTool format --cluster-id "$cluster_id" --config "$SEC/server.properties" \
        --add-scram "$SECURE_MECHANISM=[name=$SECURE_USER,password=$password]" \
        >"$RUN/logs/kafka-secure-format.log" 2>&1 \
        || { cat "$RUN/logs/kafka-secure-format.log" >&2; die "secure kafka storage format failed"; }
    cat >"$SEC/state.env.tmp" <<EOF
SECURE_PORT=$SECURE_PORT
SECURE_BADHOST_PORT=$SECURE_BADHOST_PORT
SECURE_INTERNAL_PORT=$SECURE_INTERNAL_PORT
SECURE_CONTROLLER_PORT=$SECURE_CONTROLLER_PORT
SECURE_PASSWORD=$password
EOF
    chmod 600 "$SEC/state.env.tmp"
    mv "$SEC/state.env.tmp" "$SEC/state.env"
}

# shellcheck source=/dev/null
load_secure_state() { [[ -f $SEC/state.env ]] && source "$SEC/state.env"; }

start_secure() {
    load_secure_state
    if pid_of kafka-secure >/dev/null; then return 0; fi
    port_in_use "$SECURE_PORT" && die "port $SECURE_PORT is taken by another process; run: $0 secure-down && $0 secure-up"
    log "starting the secure Kafka broker: SASL_SSL on 127.0.0.1:$SECURE_PORT (bad-host cert :$SECURE_BADHOST_PORT, internal :$SECURE_INTERNAL_PORT)"
    # shellcheck disable=SC2086
    launch kafka-secure "$RUN/logs/kafka-secure.log" "$JAVA" $SECURE_HEAP_OPTS -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
        -Djava.awt.headless=true -Dkafka.logs.dir="$RUN/logs" \
        -Dlog4j2.configurationFile="$RUN/kafka/log4j2.properties" \
        -cp "$KAFKA_LIBS/*" kafka.Kafka "$SEC/server.properties"
}

wait_secure() { # every listener open, then metadata + topics over the internal listener
    load_secure_state
    wait_port kafka-secure "$SECURE_INTERNAL_PORT"
    wait_port kafka-secure "$SECURE_PORT"
    wait_port kafka-secure "$SECURE_BADHOST_PORT"
    admin_ensure "127.0.0.1:$SECURE_INTERNAL_PORT" "${SECURE_TOPICS[@]}" \
        || die "the secure Kafka broker is not answering (log: $RUN/logs/kafka-secure.log)"
    log "secure Kafka answers: SASL_SSL 127.0.0.1:$SECURE_PORT (topics: ${SECURE_TOPICS[*]})"
}

do_secure_up() {
    local t0=$SECONDS
    init_run # the shared run dir (and its log4j files) first, so a later `up` does not wipe it
    init_secure
    start_secure
    wait_secure
    log "secure broker up in $((SECONDS - t0))s; use: eval \"\$($0 secure-env)\""
}

do_secure_down() {
    stop_proc kafka-secure 20
    rm -rf "$SEC"
    log "secure broker down (removed $SEC)"
}

print_secure_env() {
    load_secure_state
    cat <<EOF
export SECURE_KAFKA_BROKERS=127.0.0.1:$SECURE_PORT
export SECURE_KAFKA_BADHOST_BROKERS=127.0.0.1:$SECURE_BADHOST_PORT
export SECURE_KAFKA_INTERNAL_BROKERS=127.0.0.1:$SECURE_INTERNAL_PORT
export SECURE_KAFKA_CA=$SEC/tls/ca.pem
export SECURE_KAFKA_MECHANISM=$SECURE_MECHANISM
export SECURE_KAFKA_USER=$SECURE_USER
export SECURE_KAFKA_PASSWORD=$SECURE_PASSWORD
EOF
}
