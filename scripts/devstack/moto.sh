# shellcheck shell=bash
# dev-stack part, sourced by scripts/dev-stack.

# moto's S3 server, started only by `moto-up`, for G12 (docs/reliability.md): a second S3 implementation, one that honours
# create-only writes (If-None-Match: *), so glowd's start-up self-test must pass on it as it does on MinIO. From PyPI
# into its own venv (the demo's torch venv needs none of it), pinned.
MOTO_VERSION=5.2.5
MOTO_VENV=$DS_CACHE/moto-$MOTO_VERSION
MOTO_BUCKET=glowd-moto

# crc32c: without it moto stores a plain CRC32 as an object's CRC32C (its fallback), and every reader that verifies
# checksums, glowd's input reads included, sees a mismatch.
MOTO_CRC32C_VERSION=2.9.post0

install_moto() {
    [[ -f $MOTO_VENV/.installed-$MOTO_CRC32C_VERSION ]] && return 0
    need python3 "moto runs in a Python venv"
    log "installing moto[server]==$MOTO_VERSION and crc32c==$MOTO_CRC32C_VERSION from PyPI into $MOTO_VENV (once)"
    rm -rf "$MOTO_VENV"
    python3 -m venv "$MOTO_VENV"
    "$MOTO_VENV/bin/pip" install --quiet --disable-pip-version-check "moto[server]==$MOTO_VERSION" \
        "crc32c==$MOTO_CRC32C_VERSION"
    touch "$MOTO_VENV/.installed-$MOTO_CRC32C_VERSION" # last: an interrupted install is redone, not half-used
}

do_moto_up() {
    init_run
    [[ -f $RUN/moto.port ]] || pick_ports 1 >"$RUN/moto.port"
    local port code; port=$(tr -d ' \n' <"$RUN/moto.port")
    if ! pid_of moto >/dev/null; then
        port_in_use "$port" && die "port $port is taken by another process; run: $0 moto-down && $0 moto-up"
        log "starting moto $MOTO_VERSION (S3) on http://127.0.0.1:$port"
        launch moto "$RUN/logs/moto.log" "$MOTO_VENV/bin/moto_server" -H 127.0.0.1 -p "$port"
        wait_port moto "$port"
    fi
    # moto keeps objects in memory, so a restarted moto needs its bucket again; 409 = it exists already.
    code=$(curl -sS -o /dev/null -w '%{http_code}' -X PUT "http://127.0.0.1:$port/$MOTO_BUCKET") || code=000
    [[ $code == 200 || $code == 409 ]] || die "moto: creating bucket $MOTO_BUCKET answered HTTP $code (log: $RUN/logs/moto.log)"
    log "moto answers on http://127.0.0.1:$port (bucket: $MOTO_BUCKET)"
}

do_moto_down() {
    stop_proc moto 10
    rm -f "$RUN/moto.port"
}

print_moto_env() {
    echo "export MOTO_S3_ENDPOINT=http://127.0.0.1:$(tr -d ' \n' <"$RUN/moto.port")"
    echo "export MOTO_S3_BUCKET=$MOTO_BUCKET"
}
