# Sourced by the project's scripts: where the cached toolchain pieces live and how cargo finds libtorch.
# Everything heavy (the torch venv, the cargo target dir, Kafka jars, MinIO) lives under GLOWD_CACHE so a fresh
# clone (and CI) reuses it. Override GLOWD_CACHE to put it elsewhere.
export GLOWD_CACHE="${GLOWD_CACHE:-$HOME/.cache/glowd}"
export GLOWD_VENV="${GLOWD_VENV:-$GLOWD_CACHE/venv}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$GLOWD_CACHE/target}"
# tch 0.26 needs libtorch 2.13.0 exactly; torch-sys takes it from the venv's torch package.
export LIBTORCH_USE_PYTORCH=1
export PATH="$GLOWD_VENV/bin:$PATH"
export GLOWD_BIN="$CARGO_TARGET_DIR/release/glowd"
# libgomp's worker threads spin while they wait; when more busy threads than cores exist (cargo test runs tests in
# parallel; a build next to a training run) each barrier then waits out whole time slices and small-tensor work
# runs 10-20x slower. Passive waiting costs little when the machine is otherwise idle.
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
