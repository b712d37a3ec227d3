# shellcheck shell=bash
# dev-stack part: MinIO, the main S3 server (credentials, region and bucket: S3_* in scripts/dev-stack; its ports
# are picked by init_run in kafka.sh, with the broker's).

# MinIO publishes no semver tags, so the Go proxy serves it by pseudo-version (master, 2026-02-12; builds with go 1.26).
MINIO_VERSION=v0.0.0-20260212201848-7aac2a2c5b7c
MINIO_BIN=${GLOWD_MINIO_BIN:-$DS_CACHE/minio-$MINIO_VERSION/minio}

install_minio() {
    [[ -x $MINIO_BIN ]] && return 0
    [[ -n "${GLOWD_MINIO_BIN:-}" ]] && die "GLOWD_MINIO_BIN=$GLOWD_MINIO_BIN is not executable"
    need go "MinIO is built from the Go module proxy"
    log "building MinIO $MINIO_VERSION with go install (several minutes, once)"
    local t0=$SECONDS tmp
    mkdir -p "$DS_CACHE"; tmp=$(mktemp -d "$DS_CACHE/minio-build.XXXXXX")
    GOBIN=$tmp CGO_ENABLED=0 nice -n 19 go install -trimpath "github.com/minio/minio@$MINIO_VERSION" >&2 \
        || { rm -rf "$tmp"; die "go install github.com/minio/minio@$MINIO_VERSION failed"; }
    mkdir -p "$(dirname "$MINIO_BIN")"; mv "$tmp/minio" "$MINIO_BIN"; rm -rf "$tmp"
    log "MinIO built ($((SECONDS - t0))s): $MINIO_BIN"
}

start_minio() {
    load_state
    if pid_of minio >/dev/null; then return 0; fi
    port_in_use "$MINIO_PORT" && die "port $MINIO_PORT is taken by another process; run: $0 down && $0 up"
    log "starting MinIO on 127.0.0.1:$MINIO_PORT (console :$MINIO_CONSOLE_PORT)"
    launch minio "$RUN/logs/minio.log" env MINIO_ROOT_USER="$S3_ACCESS_KEY" MINIO_ROOT_PASSWORD="$S3_SECRET_KEY" \
        MINIO_REGION="$S3_REGION" MINIO_UPDATE=off \
        "$MINIO_BIN" server --quiet --address "127.0.0.1:$MINIO_PORT" \
        --console-address "127.0.0.1:$MINIO_CONSOLE_PORT" "$RUN/minio/data"
}

s3_curl() { # s3_curl ARGS...: a SigV4-signed request against MinIO
    curl -sS --aws-sigv4 "aws:amz:$S3_REGION:s3" --user "$S3_ACCESS_KEY:$S3_SECRET_KEY" "$@"
}

wait_minio() { # /minio/health/live, then the bucket (a signed PUT; 409 = it exists already)
    load_state
    local deadline=$((SECONDS + TIMEOUT)) code
    until curl -fsS -o /dev/null "http://127.0.0.1:$MINIO_PORT/minio/health/live" 2>/dev/null; do
        pid_of minio >/dev/null || { tail -n 30 "$RUN/logs/minio.log" >&2; die "MinIO exited during startup (log: $RUN/logs/minio.log)"; }
        (( SECONDS < deadline )) || die "MinIO did not answer /minio/health/live within ${TIMEOUT}s"
        sleep 0.2
    done
    # /health/live turns 200 before the object layer is up: until then MinIO answers S3 calls with
    # 503 XMinioServerNotInitialized, so the bucket PUT is retried on 503 until the same deadline.
    while :; do
        code=$(s3_curl -o "$RUN/logs/bucket.out" -w '%{http_code}' -X PUT "http://127.0.0.1:$MINIO_PORT/$S3_BUCKET") || true
        case $code in
            200) log "created bucket $S3_BUCKET"; break ;;
            409) break ;; # BucketAlreadyOwnedByYou
            503|000) (( SECONDS < deadline )) \
                || { cat "$RUN/logs/bucket.out" >&2; die "MinIO still not ready to create bucket $S3_BUCKET after ${TIMEOUT}s (HTTP $code)"; }
                sleep 0.5 ;;
            *) cat "$RUN/logs/bucket.out" >&2; die "creating bucket $S3_BUCKET failed (HTTP $code)" ;;
        esac
    done
    log "MinIO answers on http://127.0.0.1:$MINIO_PORT (bucket: $S3_BUCKET)"
}

do_start_s3() { start_minio; wait_minio; }
