#!/usr/bin/env bash
# Provide kube-apiserver, kube-controller-manager, etcd and kubectl for the test
# control plane, plus kubelet, kube-scheduler and kube-proxy for the real test node
# (tests/e2e), and print the folder that holds them on the last line of stdout.
#
#   KUBEBUILDER_ASSETS set  -> use that folder (envtest layout); it must also hold
#                              kube-controller-manager, which envtest does not ship.
#                              The node binaries are optional there (tests/e2e skips
#                              and names what is missing).
#   otherwise               -> build kube-apiserver, kube-controller-manager, kubelet,
#                              kube-scheduler and kube-proxy from Debian bookworm's
#                              `kubernetes` source package (once per machine, cached),
#                              etcd from the `etcd-server` package. A cache holding only
#                              the first two gets the other three added.
#                              src/ in the folder keeps two files of that source the
#                              test node needs: build/pause/linux/pause.c (the pod
#                              sandbox image) and the CRI v1alpha2 api.proto.
#
# Cache: ${LORAFUSE_KUBE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/lorafuse}/kube-<version>/
# Progress goes to stderr; stdout carries only the folder. Needs root (or passwordless
# sudo) and access to the Debian archive for the first build.
set -euo pipefail

KUBE_VERSION="${LORAFUSE_KUBE_VERSION:-1.20.2}"
CACHE_ROOT="${LORAFUSE_KUBE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/lorafuse}"
DEST="$CACHE_ROOT/kube-$KUBE_VERSION"
NEEDED=(kube-apiserver kube-controller-manager etcd kubectl)
# Built from the source; all of them (and SOURCE_FILES) make a complete cache.
KUBE_BINS=(kube-apiserver kube-controller-manager kubelet kube-scheduler kube-proxy)
SOURCE_FILES=(build/pause/linux/pause.c staging/src/k8s.io/cri-api/pkg/apis/runtime/v1alpha2/api.proto)

say() { echo "kube-binaries: $*" >&2; }
die() { echo "kube-binaries: error: $*" >&2; exit 1; }

has_all() {
    local dir="$1" name
    for name in "${NEEDED[@]}"; do
        [[ -x "$dir/$name" ]] || return 1
    done
}

# The cache is complete: every binary built from the source, its kept files, the links.
has_cache() {
    local dir="$1" name
    has_all "$dir" || return 1
    for name in "${KUBE_BINS[@]}"; do
        [[ -x "$dir/$name" ]] || return 1
    done
    for name in "${SOURCE_FILES[@]}"; do
        [[ -f "$dir/src/$(basename "$name")" ]] || return 1
    done
}

# Source-built binaries missing from the cache folder (all of them for a fresh cache).
to_build() {
    local name out=()
    for name in "${KUBE_BINS[@]}"; do
        [[ -x "$DEST/$name" ]] || out+=("$name")
    done
    echo "${out[*]}"
}

missing_in() {
    local dir="$1" name out=()
    for name in "${NEEDED[@]}"; do
        [[ -x "$dir/$name" ]] || out+=("$name")
    done
    echo "${out[*]}"
}

if [[ -n "${KUBEBUILDER_ASSETS:-}" ]]; then
    [[ -d "$KUBEBUILDER_ASSETS" ]] || die "KUBEBUILDER_ASSETS=$KUBEBUILDER_ASSETS is not a directory"
    has_all "$KUBEBUILDER_ASSETS" || die "KUBEBUILDER_ASSETS=$KUBEBUILDER_ASSETS lacks: \
$(missing_in "$KUBEBUILDER_ASSETS") (envtest ships no kube-controller-manager: add one of the \
same version, or unset KUBEBUILDER_ASSETS to build Kubernetes $KUBE_VERSION from Debian source)"
    say "using KUBEBUILDER_ASSETS"
    cd "$KUBEBUILDER_ASSETS" && pwd -P
    exit 0
fi

if has_cache "$DEST"; then
    say "cached in $DEST"
    echo "$DEST"
    exit 0
fi
# Built binaries cached, only the etcd/kubectl links are broken: no rebuild needed.
KUBE_BUILT=0
[[ -z "$(to_build)" && -f "$DEST/src/pause.c" && -f "$DEST/src/api.proto" ]] && KUBE_BUILT=1

# Run a privileged command: directly as root, else through passwordless sudo.
as_root() {
    if [[ $EUID -eq 0 ]]; then
        "$@"
    elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
        sudo -n "$@"
    else
        die "installing packages needs root or passwordless sudo (running: $*)"
    fi
}

command -v apt-get >/dev/null || die "apt-get not found: building Kubernetes $KUBE_VERSION \
needs Debian 12 (bookworm); or set KUBEBUILDER_ASSETS to a folder with kube-apiserver, \
kube-controller-manager, etcd and kubectl"

mkdir -p "$CACHE_ROOT"
# One build per machine even when several test sessions start at once.
exec 9>"$CACHE_ROOT/kube-$KUBE_VERSION.lock"
say "waiting for the build lock $CACHE_ROOT/kube-$KUBE_VERSION.lock"
flock 9
if has_cache "$DEST"; then
    say "built by another process: $DEST"
    echo "$DEST"
    exit 0
fi

SRC_LIST=/etc/apt/sources.list.d/lorafuse-bookworm-src.sources
if [[ $KUBE_BUILT -eq 0 ]] && ! grep -rqsE '^(Types:.*deb-src|deb-src )' /etc/apt/sources.list /etc/apt/sources.list.d/; then
    say "adding a deb-src entry for bookworm main ($SRC_LIST)"
    as_root tee "$SRC_LIST" >/dev/null <<'EOF'
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
fi

say "apt-get update"
as_root apt-get update -q -o APT::Update::Error-Mode=any >&2 \
    || die "apt-get update failed: is the Debian archive reachable?"

PACKAGES=(etcd-server)
if [[ $KUBE_BUILT -eq 0 ]]; then
    PACKAGES+=(golang-go rsync golang-github-modern-go-reflect2-dev make)
fi
# Any recent kubectl will do; Debian's kubernetes-client (1.20) when none is installed.
command -v kubectl >/dev/null || PACKAGES+=(kubernetes-client)
say "installing ${PACKAGES[*]}"
as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
    "${PACKAGES[@]}" >&2 || die "apt-get install ${PACKAGES[*]} failed"

# etcd-server's unit may start a system etcd on 2379; the harness runs its own.
if command -v systemctl >/dev/null && systemctl is-active -q etcd 2>/dev/null; then
    say "note: a system etcd is running; the harness uses its own ports"
fi

link_tools() {
    local etcd kubectl
    etcd=$(command -v etcd || true)
    [[ -n "$etcd" ]] || die "etcd not found after installing etcd-server"
    kubectl=$(command -v kubectl || true)
    [[ -n "$kubectl" ]] || die "kubectl not found after installing kubernetes-client"
    ln -sfn "$etcd" "$1/etcd"
    ln -sfn "$kubectl" "$1/kubectl"
}

if [[ $KUBE_BUILT -eq 1 ]]; then
    link_tools "$DEST"
    say "relinked etcd and kubectl in $DEST"
    echo "$DEST"
    exit 0
fi

BUILD="$CACHE_ROOT/kube-$KUBE_VERSION.build"
rm -rf "$BUILD"
mkdir -p "$BUILD"
cd "$BUILD"

say "downloading the Debian source package kubernetes ($KUBE_VERSION)"
apt-get source --download-only kubernetes >&2 2>&1 \
    || die "apt-get source kubernetes failed (needs a deb-src entry for bookworm main)"
ORIG=$(ls kubernetes_*.orig.tar.* 2>/dev/null | head -n1)
[[ -n "$ORIG" ]] || die "no kubernetes_*.orig.tar.* in $BUILD after apt-get source"
case "$ORIG" in
    # Debian's bookworm version is "1.20.5+really1.20.2": the sources are 1.20.2.
    kubernetes_"$KUBE_VERSION".orig.* | kubernetes_*really"$KUBE_VERSION".orig.*) ;;
    *) die "Debian offers $ORIG, not Kubernetes $KUBE_VERSION (set LORAFUSE_KUBE_VERSION)" ;;
esac

say "unpacking $ORIG"
mkdir src
tar -xf "$ORIG" -C src --strip-components=1
cd src

# reflect2 1.0.1 (vendored) crashes the apiserver under Go >= 1.18 ("fatal error:
# fault" in mapiternext); Debian's packaged reflect2 works.
REFLECT2=/usr/share/gocode/src/github.com/modern-go/reflect2
[[ -d "$REFLECT2" ]] || die "$REFLECT2 missing (package golang-github-modern-go-reflect2-dev)"
say "replacing vendored reflect2 with Debian's copy"
rm -rf vendor/github.com/modern-go/reflect2
cp -r "$REFLECT2" vendor/github.com/modern-go/reflect2
rm -f vendor/github.com/modern-go/reflect2/go.mod vendor/github.com/modern-go/reflect2/go.sum

# The build derives the version from git, which a tarball lacks.
MAJOR=${KUBE_VERSION%%.*}
MINOR=${KUBE_VERSION#*.}; MINOR=${MINOR%%.*}
cat > .version-file <<EOF
KUBE_GIT_COMMIT=''
KUBE_GIT_TREE_STATE='clean'
KUBE_GIT_VERSION='v$KUBE_VERSION'
KUBE_GIT_MAJOR='$MAJOR'
KUBE_GIT_MINOR='$MINOR'
EOF

mkdir -p .go/src/k8s.io
ln -s ../../.. .go/src/k8s.io/kubernetes
BUILD_BINS=($(to_build))
WHAT=""
for name in "${BUILD_BINS[@]}"; do WHAT="$WHAT cmd/$name"; done
say "building${WHAT:- nothing} with $(go version) (about 5 minutes per two binaries on 2 cores)"
if [[ -n "$WHAT" ]]; then
    GOPATH="$PWD/.go" GOCACHE="$BUILD/go-cache" CGO_ENABLED=0 KUBE_GIT_VERSION_FILE="$PWD/.version-file" \
        KUBE_GIT_VERSION="v$KUBE_VERSION" KUBE_GIT_TREE_STATE=clean \
        make WHAT="${WHAT# }" >&2 \
        || die "building Kubernetes failed (log above)"
fi

STAGE="$DEST.tmp"
rm -rf "$STAGE"
mkdir -p "$STAGE/src"
for name in "${KUBE_BINS[@]}"; do
    if [[ -x "$DEST/$name" ]]; then
        cp "$DEST/$name" "$STAGE/"
    else
        built=$(find _output -type f -name "$name" -perm -u+x | head -n1)
        [[ -n "$built" ]] || die "build finished without $name"
        cp "$built" "$STAGE/"
    fi
done
for name in "${SOURCE_FILES[@]}"; do
    [[ -f "$name" ]] || die "the source lacks $name"
    cp "$name" "$STAGE/src/"
done
link_tools "$STAGE"
# File by file (each rename atomic), so test sessions already using the cached
# control-plane binaries never see the folder missing.
mkdir -p "$DEST"
for item in "$STAGE"/*; do
    [[ -d "$item" ]] && rm -rf "$DEST/$(basename "$item")"
    mv -f "$item" "$DEST/"
done
rmdir "$STAGE"
cd /
rm -rf "$BUILD"
say "built into $DEST"
echo "$DEST"
