# shellcheck shell=bash
# dev-stack part: the main Kafka broker (single-node KRaft, PLAINTEXT on 127.0.0.1), its jars and the DevstackAdmin
# helper, and the shared run dir (init_run: the broker's config and storage, the ports of the broker and MinIO).
# Its topics (TOPICS) are set in scripts/dev-stack.

POM=$DS_PARTS/pom.xml
KAFKA_VERSION=$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$POM")
KAFKA_HOME=$DS_CACHE/kafka-$KAFKA_VERSION
KAFKA_LIBS=$KAFKA_HOME/libs
KAFKA_HEAP_OPTS=${KAFKA_HEAP_OPTS:--Xmx512m -Xms128m}
# The readiness probe + topic helper (one JVM start instead of one per topic), compiled into the cache by install_kafka.
ADMIN_SRC=$DS_PARTS/DevstackAdmin.java

if [[ -n "${JAVA_HOME:-}" ]]; then JAVA=$JAVA_HOME/bin/java JAVAC=$JAVA_HOME/bin/javac; else JAVA=java JAVAC=javac; fi

install_kafka() {
    if [[ ! -f $KAFKA_HOME/.complete ]]; then
        need mvn "Maven gathers the Kafka jars from Maven Central"
        need "$JAVA" "Kafka $KAFKA_VERSION needs Java 17+"
        log "fetching Kafka $KAFKA_VERSION jars from Maven Central into $KAFKA_HOME"
        local t0=$SECONDS tmp=$KAFKA_HOME.tmp.$$
        mkdir -p "$DS_CACHE"
        rm -rf "$tmp"
        nice -n 19 mvn -B -q -Dstyle.color=never -f "$POM" -Dmaven.repo.local="$DS_CACHE/m2" \
            dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$tmp/libs" >"$DS_CACHE/mvn.log" 2>&1 \
            || { tail -n 40 "$DS_CACHE/mvn.log" >&2; rm -rf "$tmp"; die "mvn could not fetch the Kafka jars (log: $DS_CACHE/mvn.log)"; }
        rm -rf "$KAFKA_HOME"; mv "$tmp" "$KAFKA_HOME"; touch "$KAFKA_HOME/.complete"
        log "Kafka jars ready ($((SECONDS - t0))s)"
    fi
    # the readiness/topic helper, compiled into a folder named by its source's checksum: recompiled whenever
    # DevstackAdmin.java changes (the source is kept next to its class)
    local sum; sum=$(sha256sum <"$ADMIN_SRC" | cut -c1-12)
    ADMIN_CP=$KAFKA_HOME/helper-$sum
    if [[ ! -f $ADMIN_CP/DevstackAdmin.class ]]; then
        need "$JAVAC" "a JDK compiles the dev-stack helper"
        rm -rf "$ADMIN_CP.tmp"; mkdir -p "$ADMIN_CP.tmp"
        cp "$ADMIN_SRC" "$ADMIN_CP.tmp/DevstackAdmin.java"
        nice -n 19 "$JAVAC" -nowarn -cp "$KAFKA_LIBS/*" -d "$ADMIN_CP.tmp" "$ADMIN_CP.tmp/DevstackAdmin.java" >&2
        rm -rf "$ADMIN_CP"; mv "$ADMIN_CP.tmp" "$ADMIN_CP"
    fi
}

random_cluster_id() { # a KRaft cluster id: 22 chars of base64url of 16 random bytes, like `kafka-storage
    # random-uuid`; like Kafka's Uuid.randomUuid, it rejects ids that start with '-', which the StorageTool's
    # argument parser would take for an option
    local id=-
    while [[ $id == -* ]]; do id=$(head -c16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '='); done
    echo "$id"
}

init_run() { # the run dir, once: ports for Kafka and MinIO, the broker's config and formatted storage, state.env
    have_state && return 0
    local ports; read -r -a ports <<<"$(pick_ports 4)"
    rm -rf "$RUN"; mkdir -p "$RUN/kafka/data" "$RUN/minio/data" "$RUN/logs"
    KAFKA_PORT=${ports[0]} KAFKA_CONTROLLER_PORT=${ports[1]} MINIO_PORT=${ports[2]} MINIO_CONSOLE_PORT=${ports[3]}

    cat >"$RUN/kafka/server.properties" <<EOF
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$KAFKA_CONTROLLER_PORT
listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$KAFKA_CONTROLLER_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$RUN/kafka/data
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
# a broker restarted after SIGKILL cannot re-register until its old session expires (default 9 s): keep it short
broker.session.timeout.ms=4000
broker.heartbeat.interval.ms=500
EOF
    cat >"$RUN/kafka/log4j2.properties" <<'EOF'
status = warn
appender.out.type = Console
appender.out.name = OUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.out.ref = OUT
logger.kafka.name = kafka
logger.kafka.level = INFO
logger.ak.name = org.apache.kafka
logger.ak.level = INFO
EOF
    cat >"$RUN/kafka/tools-log4j2.properties" <<'EOF'
status = warn
appender.err.type = Console
appender.err.name = ERR
appender.err.target = SYSTEM_ERR
appender.err.layout.type = PatternLayout
appender.err.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.err.ref = ERR
EOF
    # format the KRaft storage with a random cluster id
    local cluster_id; cluster_id=$(random_cluster_id)
    "$JAVA" -Xmx256m -cp "$KAFKA_LIBS/*" -Dlog4j2.configurationFile="$RUN/kafka/tools-log4j2.properties" \
        kafka.tools.StorageTool format --cluster-id "$cluster_id" --config "$RUN/kafka/server.properties" \
        >"$RUN/logs/kafka-format.log" 2>&1 || { cat "$RUN/logs/kafka-format.log" >&2; die "kafka storage format failed"; }

    # written last: its presence means the run dir is complete
    cat >"$RUN/state.env.tmp" <<EOF
KAFKA_PORT=$KAFKA_PORT
KAFKA_CONTROLLER_PORT=$KAFKA_CONTROLLER_PORT
KAFKA_CLUSTER_ID=$cluster_id
MINIO_PORT=$MINIO_PORT
MINIO_CONSOLE_PORT=$MINIO_CONSOLE_PORT
EOF
    mv "$RUN/state.env.tmp" "$RUN/state.env"
}

start_kafka() {
    load_state
    if pid_of kafka >/dev/null; then return 0; fi
    port_in_use "$KAFKA_PORT" && die "port $KAFKA_PORT is taken by another process; run: $0 down && $0 up"
    log "starting Kafka $KAFKA_VERSION on 127.0.0.1:$KAFKA_PORT (controller :$KAFKA_CONTROLLER_PORT)"
    # shellcheck disable=SC2086
    launch kafka "$RUN/logs/kafka.log" "$JAVA" $KAFKA_HEAP_OPTS -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
        -Djava.awt.headless=true -Dkafka.logs.dir="$RUN/logs" \
        -Dlog4j2.configurationFile="$RUN/kafka/log4j2.properties" \
        -cp "$KAFKA_LIBS/*" kafka.Kafka "$RUN/kafka/server.properties"
}

admin_ensure() { # admin_ensure BOOTSTRAP TOPIC:PARTITIONS...: DevstackAdmin's readiness probe and topic setup
    local bootstrap=$1; shift
    "$JAVA" -Xmx256m -XX:TieredStopAtLevel=1 -Dlog4j2.configurationFile="$RUN/kafka/tools-log4j2.properties" \
        -cp "$ADMIN_CP:$KAFKA_LIBS/*" DevstackAdmin ensure "$bootstrap" "$TIMEOUT" "$@" >&2
}

wait_kafka() { # port open, then a real metadata request; creates the topics and waits for their leaders
    load_state
    wait_port kafka "$KAFKA_PORT"
    admin_ensure "127.0.0.1:$KAFKA_PORT" "${TOPICS[@]}" \
        || die "Kafka on 127.0.0.1:$KAFKA_PORT is not answering (log: $RUN/logs/kafka.log)"
    log "Kafka answers on 127.0.0.1:$KAFKA_PORT (topics: ${TOPICS[*]})"
}

do_restart_kafka() { stop_proc kafka 30 "${1:-}"; start_kafka; wait_kafka; }
do_start_kafka() { start_kafka; wait_kafka; }

do_kafka_run() { # do_kafka_run CLASS [ARGS...]: a class on the Kafka classpath, quiet logging once the run dir exists
    [[ $# -ge 1 ]] || die "usage: $0 kafka-run CLASS [ARGS...]"
    install_kafka
    local log4j=()
    [[ -f $RUN/kafka/tools-log4j2.properties ]] && log4j=(-Dlog4j2.configurationFile="$RUN/kafka/tools-log4j2.properties")
    exec "$JAVA" -Xmx256m "${log4j[@]}" -cp "$KAFKA_LIBS/*" "$@"
}
