#!/usr/bin/env bash
# Offline validation of everything under deploy/:
# - every Kubernetes manifest (*.yaml, *.yml) against the Kubernetes schemas, strictly
#   (unknown fields are errors), with kubernetes-validate (installed with pip if missing);
# - every JSON file parses; Keycloak realm files (deploy/keycloak/*.json) also type-check
#   against Keycloak's own RealmRepresentation (scripts/keycloak-types, npm, installed when
#   missing); ferrobank's rules on them are checked by `crates/adapters/tests/realm.rs`.
# Custom resources (Istio, Prometheus Operator, Argo CD) get their own schema checks when
# they are added; until then such a file fails here rather than pass unchecked.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -d deploy ] || { echo "no deploy/ directory: nothing to validate"; exit 0; }

if ! command -v kubernetes-validate >/dev/null 2>&1; then
  echo "==> installing kubernetes-validate (pip)"
  python3 -m pip install --quiet kubernetes-validate
fi

mapfile -t manifests < <(find deploy -type f \( -name '*.yaml' -o -name '*.yml' \) | sort)
mapfile -t documents < <(find deploy -type f -name '*.json' | sort)

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
if [ "${#manifests[@]}" -gt 0 ]; then
  output=$(kubernetes-validate --strict "${manifests[@]}" 2>&1) || { echo "$output"; exit 1; }
  # kubernetes-validate only warns about kinds it has no schema for; fail closed instead.
  if grep -q "Couldn't find schema" <<<"$output"; then
    echo "$output" | grep "Couldn't find schema"
    echo "error: the kinds above have no schema check yet; add one before adding them"
    exit 1
  fi
fi
echo "deploy/: ${#manifests[@]} Kubernetes manifest(s) valid (strict), ${#documents[@]} JSON document(s) parse"
