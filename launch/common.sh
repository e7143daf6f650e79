# shellcheck shell=bash
# Sourced by the scripts in launch/ (not run on its own). Provides:
#   mtl_install_deps          apt packages needed to build and run (only the missing ones)
#   mtl_root_mpi_env          Open MPI's run-as-root permission, only when running as root
#   mtl_build_release         swift build -c release --product mtl; prints the binary's path
#   mtl_cores                 cores of this node (nproc)
#   mtl_threads_per_rank R [C]  max(1, C / R) with C = cores by default
#   mtl_set_threads T         exports OMP_NUM_THREADS, OPENBLAS_NUM_THREADS, MTL_THREADS = T
#   mtl_read_cluster_config NAME|FILE   reads cluster-configs/NAME.yaml into CLUSTER_* variables
#   mtl_is_open_mpi           true when `mpirun` is Open MPI's (else MPICH/hydra flags are used)

MTL_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export MTL_ROOT

mtl_log() { echo "[mtl] $*" >&2; }
mtl_die() { echo "error: $*" >&2; exit 1; }

# The Debian 12 packages the build and the runs need (Swift itself is not an apt package:
# it must already be on the PATH).
MTL_APT_PACKAGES=(libopenmpi-dev openmpi-bin libopenblas-dev libdnnl-dev libhdf5-dev libpng-dev libjpeg62-turbo-dev zlib1g-dev pkg-config)

mtl_install_deps() {
    command -v swift >/dev/null 2>&1 \
        || mtl_die "swift is not on the PATH: install a Swift 6 toolchain (https://www.swift.org/install/linux/)"
    if ! command -v dpkg-query >/dev/null 2>&1; then
        mtl_log "not a Debian system: make sure Open MPI, OpenBLAS, HDF5 and pkg-config are installed"
        return 0
    fi
    local missing=() pkg
    for pkg in "${MTL_APT_PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" -ne 0 ]; then
        mtl_die "missing packages: ${missing[*]}; install them with: sudo apt-get update && sudo apt-get install -y ${missing[*]}"
    fi
    mtl_log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# Open MPI refuses to run as root unless both variables are set; set them only for root.
mtl_root_mpi_env() {
    if [ "$(id -u)" -eq 0 ]; then
        export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
    fi
}

# Builds the release `mtl` (build output to stderr) and prints the binary's path on stdout.
# MTL_BIN, when set, is used as is (no build): e.g. a binary on a cluster's shared file system.
mtl_build_release() {
    if [ -n "${MTL_BIN:-}" ]; then
        [ -x "$MTL_BIN" ] || mtl_die "MTL_BIN=$MTL_BIN is not an executable"
        echo "$MTL_BIN"
        return 0
    fi
    (cd "$MTL_ROOT" && swift build -c release --product mtl >&2) || mtl_die "release build of mtl failed"
    echo "$(cd "$MTL_ROOT" && swift build -c release --show-bin-path)/mtl"
}

# (GNU nproc obeys OMP_NUM_THREADS and OMP_THREAD_LIMIT, which we set ourselves: ignore them.)
mtl_cores() { env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc 2>/dev/null || getconf _NPROCESSORS_ONLN; }

mtl_threads_per_rank() {
    local ranks=$1 cores=${2:-$(mtl_cores)}
    local t=$((cores / (ranks > 0 ? ranks : 1)))
    echo $((t > 0 ? t : 1))
}

# BLAS threads × ranks must not exceed the cores, or the ranks fight over them.
mtl_set_threads() {
    export OMP_NUM_THREADS=$1 OPENBLAS_NUM_THREADS=$1 MTL_THREADS=$1
}

mtl_is_open_mpi() { mpirun --version 2>&1 | grep -q "Open MPI"; }

# Expands $NAME and ${NAME} from the environment (unset → empty, $USER → id -un when unset);
# nothing else is evaluated.
_mtl_expand() {
    local s=$1 out="" re='^([^$]*)\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?(.*)$'
    local user=${USER:-$(id -un)}
    while [[ $s =~ $re ]]; do
        if [ "${BASH_REMATCH[2]}" = USER ]; then out+="${BASH_REMATCH[1]}$user"
        else out+="${BASH_REMATCH[1]}${!BASH_REMATCH[2]:-}"; fi
        s=${BASH_REMATCH[3]}
    done
    printf '%s' "$out$s"
}

# A value as written after "key:": quotes removed, a trailing "# comment" dropped.
_mtl_yaml_value() {
    local v=$1
    v="${v#"${v%%[![:space:]]*}"}"
    if [[ $v =~ ^\"([^\"]*)\" ]] || [[ $v =~ ^\'([^\']*)\' ]]; then
        v=${BASH_REMATCH[1]}
    else
        v="${v%%[[:space:]]#*}"
        [[ $v == \#* ]] && v=""
        v="${v%"${v##*[![:space:]]}"}"
    fi
    printf '%s' "$v"
}

# Reads the small YAML subset of cluster-configs/*.yaml: top-level "key: value" lines and one
# "env:" block of indented "NAME: value" lines. Sets CLUSTER_FILE, CLUSTER_RANKS_PER_NODE,
# CLUSTER_THREADS_PER_RANK, CLUSTER_CORES_PER_NODE, CLUSTER_MPI_FLAGS, CLUSTER_DATA_DIR,
# CLUSTER_CHECKPOINT_DIR, CLUSTER_HOSTFILE, CLUSTER_MPIRUN_PREFIX and the array CLUSTER_ENV
# (NAME=value). Unknown keys are an error.
mtl_read_cluster_config() {
    local name=$1 file
    if [ -f "$name" ]; then file=$name; else file="$MTL_ROOT/cluster-configs/$name.yaml"; fi
    [ -f "$file" ] || mtl_die "cluster config $file not found (have: $(cd "$MTL_ROOT/cluster-configs" && ls -- *.yaml | sed 's/\.yaml$//' | tr '\n' ' '))"
    CLUSTER_FILE=$file
    CLUSTER_RANKS_PER_NODE="" CLUSTER_THREADS_PER_RANK="" CLUSTER_CORES_PER_NODE=""
    CLUSTER_MPI_FLAGS="" CLUSTER_DATA_DIR="" CLUSTER_CHECKPOINT_DIR="" CLUSTER_HOSTFILE="" CLUSTER_MPIRUN_PREFIX=""
    CLUSTER_ENV=()
    local line key value in_env=0 lineno=0
    local top='^([a-z_]+):(.*)$' nested='^[[:space:]]+([A-Za-z_][A-Za-z0-9_]*):(.*)$'
    while IFS= read -r line || [ -n "$line" ]; do
        lineno=$((lineno + 1))
        [[ $line =~ ^[[:space:]]*(#.*)?$ ]] && continue
        if [[ $line =~ $top ]]; then
            key=${BASH_REMATCH[1]}
            value=$(_mtl_expand "$(_mtl_yaml_value "${BASH_REMATCH[2]}")")
            in_env=0
            case $key in
                ranks_per_node) CLUSTER_RANKS_PER_NODE=$value ;;
                threads_per_rank) CLUSTER_THREADS_PER_RANK=$value ;;
                cores_per_node) CLUSTER_CORES_PER_NODE=$value ;;
                mpi_flags) CLUSTER_MPI_FLAGS=$value ;;
                data_dir) CLUSTER_DATA_DIR=$value ;;
                checkpoint_dir) CLUSTER_CHECKPOINT_DIR=$value ;;
                hostfile) CLUSTER_HOSTFILE=$value ;;
                mpirun_prefix) CLUSTER_MPIRUN_PREFIX=$value ;;
                env) in_env=1 ;;
                *) mtl_die "$file:$lineno: unknown key '$key' (expected ranks_per_node, threads_per_rank, cores_per_node, mpi_flags, env, data_dir, checkpoint_dir, hostfile, mpirun_prefix)" ;;
            esac
        elif [ $in_env -eq 1 ] && [[ $line =~ $nested ]]; then
            CLUSTER_ENV+=("${BASH_REMATCH[1]}=$(_mtl_expand "$(_mtl_yaml_value "${BASH_REMATCH[2]}")")")
        else
            mtl_die "$file:$lineno: expected 'key: value' or an indented 'NAME: value' under env:, found: $line"
        fi
    done <"$file"
    local k
    for k in CLUSTER_RANKS_PER_NODE CLUSTER_THREADS_PER_RANK CLUSTER_CORES_PER_NODE; do
        [[ -z ${!k} || ${!k} =~ ^[0-9]+$ ]] || mtl_die "$file: ${k#CLUSTER_} must be a whole number, found '${!k}'"
    done
}
