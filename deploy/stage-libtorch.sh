#!/usr/bin/env bash
# stage-libtorch.sh PYTHON DEST
#
# Copies what a glowd binary built with LIBTORCH_USE_PYTORCH=1 loads at run time out of PYTHON's torch package into
# DEST, each folder at DEST/<its absolute path>, so that `COPY --from=builder DEST/ /` puts it back at the same path:
#   - torch/lib: the binary's RUNPATH (build.rs) names that absolute folder;
#   - every folder that torch/lib's own RPATH/RUNPATH names relative to $ORIGIN: on the CUDA wheel, the nvidia-*
#     wheels' lib folders (nvidia/cu13/lib, nvidia/cudnn/lib, ...; libtorch_cuda.so is dlopened by --device cuda).
#     Keeping their relative layout keeps those $ORIGIN entries valid, so no LD_LIBRARY_PATH is needed. The CPU
#     wheel names only $ORIGIN, so only torch/lib is staged.
# The wheels' headers and Python code are left behind: the daemon needs only the shared libraries.
set -euo pipefail
python=${1:?usage: stage-libtorch.sh PYTHON DEST}
dest=${2:?usage: stage-libtorch.sh PYTHON DEST}

# The same question build.rs asks (not resolved through symlinks: the rpath holds this spelling).
lib=$("$python" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
[[ -d $lib ]] || { echo "stage-libtorch: $lib is not a folder" >&2; exit 1; }

declare -A folders=(["$lib"]=1)
while IFS= read -r entry; do
    case $entry in
        '$ORIGIN'*) rel=${entry#'$ORIGIN'} ;;
        '${ORIGIN}'*) rel=${entry#'${ORIGIN}'} ;;
        *) continue ;; # absolute entries point outside the wheels: the system provides those
    esac
    folder=$(realpath -ms "$lib$rel")
    [[ -d $folder ]] && folders[$folder]=1
done < <(for so in "$lib"/*.so*; do readelf -d "$so"; done \
            | sed -n 's/.*(R\(UN\)\{0,1\}PATH).*\[\(.*\)\]$/\2/p' | tr ':' '\n' | sort -u)

mkdir -p "$dest"
for folder in "${!folders[@]}"; do
    # (not `cp --parents`: coreutils 9.1, Debian bookworm's, fails on it with absolute sources)
    mkdir -p "$dest$(dirname "$folder")"
    cp -a "$folder" "$dest$(dirname "$folder")/"
    echo "stage-libtorch: $folder ($(du -sh "$folder" | cut -f1))"
done
