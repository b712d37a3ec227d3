# shellcheck shell=bash
# dev-stack part, sourced by scripts/dev-stack.

# Garage, started only by `garage-up`, for G12's refusal side (docs/reliability.md): Garage 2.5.0 answers 200 to a second
# create-only PUT (its PutObject reads no If-None-Match), so glowd must refuse to become ready on it. Built from
# crates.io (no binary in a registry reachable here) with only the sqlite metadata engine; single-node mode makes the
# layout, the key and the bucket itself. Files under $RUN/garage.
GARAGE_VERSION=2.5.0
GARAGE_BIN=${GLOWD_GARAGE_BIN:-$DS_CACHE/garage-$GARAGE_VERSION/bin/garage}
GARAGE_BUCKET=glowd-garage
GARAGE_DIR=$RUN/garage

install_garage() {
    [[ -x $GARAGE_BIN ]] && return 0
    need cargo "Garage is built from crates.io"
    log "building Garage $GARAGE_VERSION from crates.io into $DS_CACHE/garage-$GARAGE_VERSION (once; many minutes)"
    CARGO_TARGET_DIR=$DS_CACHE/garage-build cargo install --quiet --locked --root "$DS_CACHE/garage-$GARAGE_VERSION" \
        --no-default-features --features bundled-libs,sqlite "garage@$GARAGE_VERSION"
    rm -rf "$DS_CACHE/garage-build"
}

init_garage() {
    [[ -f $GARAGE_DIR/state.env ]] && return 0
    local ports; read -r -a ports <<<"$(pick_ports 2)"
    rm -rf "$GARAGE_DIR"; mkdir -p "$GARAGE_DIR/meta" "$GARAGE_DIR/data"
    cat >"$GARAGE_DIR/garage.toml" <<EOF
metadata_dir = "$GARAGE_DIR/meta"
data_dir = "$GARAGE_DIR/data"
db_engine = "sqlite"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:${ports[0]}"
rpc_public_addr = "127.0.0.1:${ports[0]}"
rpc_secret = "$(hex 32)"

[s3_api]
s3_region = "$S3_REGION"
api_bind_addr = "127.0.0.1:${ports[1]}"
root_domain = ".s3.garage.localhost"
EOF
    # Garage's key ids are GK + 24 hex digits, its secrets 64 hex digits.
    cat >"$GARAGE_DIR/state.env.tmp" <<EOF
GARAGE_S3_PORT=${ports[1]}
GARAGE_KEY_ID=GK$(hex 12)
GARAGE_SECRET=$(hex 32)
EOF
    mv "$GARAGE_DIR/state.env.tmp" "$GARAGE_DIR/state.env"
}

do_garage_up() {
    init_run
    init_garage
    # shellcheck source=/dev/null
    source "$GARAGE_DIR/state.env"
    if ! pid_of garage >/dev/null; then
        port_in_use "$GARAGE_S3_PORT" && die "port $GARAGE_S3_PORT is taken by another process; run: $0 garage-down && $0 garage-up"
        log "starting Garage $GARAGE_VERSION (S3) on http://127.0.0.1:$GARAGE_S3_PORT"
        launch garage "$RUN/logs/garage.log" env GARAGE_DEFAULT_ACCESS_KEY="$GARAGE_KEY_ID" \
            GARAGE_DEFAULT_SECRET_KEY="$GARAGE_SECRET" GARAGE_DEFAULT_BUCKET="$GARAGE_BUCKET" RUST_LOG=warn \
            "$GARAGE_BIN" -c "$GARAGE_DIR/garage.toml" server --single-node --default-bucket
        wait_port garage "$GARAGE_S3_PORT"
    fi
    # The bucket and key are made at start; a signed listing says both are in place. Garage wants the payload hash
    # header, which curl's SigV4 does not add by itself (here the SHA-256 of an empty body).
    local deadline=$((SECONDS + TIMEOUT)) code
    until code=$(curl -sS -o "$RUN/logs/garage-bucket.out" -w '%{http_code}' --aws-sigv4 "aws:amz:$S3_REGION:s3" \
            --user "$GARAGE_KEY_ID:$GARAGE_SECRET" \
            -H "x-amz-content-sha256: e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855" \
            "http://127.0.0.1:$GARAGE_S3_PORT/$GARAGE_BUCKET?list-type=2") \
            && [[ $code == 200 ]]; do
        (( SECONDS < deadline )) || { cat "$RUN/logs/garage-bucket.out" >&2; die "Garage: bucket $GARAGE_BUCKET not listable after ${TIMEOUT}s (HTTP $code; log: $RUN/logs/garage.log)"; }
        sleep 0.5
    done
    log "Garage answers on http://127.0.0.1:$GARAGE_S3_PORT (bucket: $GARAGE_BUCKET)"
}

do_garage_down() {
    stop_proc garage 10
    rm -rf "$GARAGE_DIR"
}

print_garage_env() {
    # shellcheck source=/dev/null
    source "$GARAGE_DIR/state.env"
    echo "export GARAGE_S3_ENDPOINT=http://127.0.0.1:$GARAGE_S3_PORT"
    echo "export GARAGE_S3_BUCKET=$GARAGE_BUCKET"
    echo "export GARAGE_ACCESS_KEY_ID=$GARAGE_KEY_ID"
    echo "export GARAGE_SECRET_ACCESS_KEY=$GARAGE_SECRET"
}
