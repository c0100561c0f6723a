#!/usr/bin/env bash
# Logs a user in through ferrobank's login page the way the banking web app does
# (authorization code flow with PKCE S256) and prints the access token.
#
#   CLIENT_SECRET=<banking-web-app secret> ./scripts/login.sh ISSUER USERNAME [PASSWORD]
#
# ISSUER is e.g. http://127.0.0.1:8080/realms/banking; the password is asked for when not
# given. Works against Keycloak too (same paths), as long as the user needs no second
# factor or password change; for those, log in with a browser once.
set -euo pipefail

issuer=${1:?usage: login.sh ISSUER USERNAME [PASSWORD]}
user=${2:?usage: login.sh ISSUER USERNAME [PASSWORD]}
password=${3:-}
if [ -z "$password" ]; then read -r -s -p "password for $user: " password; echo >&2; fi
client=${CLIENT_ID:-banking-web-app}
secret=${CLIENT_SECRET:?set CLIENT_SECRET to the $client secret that ferrobank up printed}
redirect=${REDIRECT_URI:-http://localhost:3000/callback}

b64url() { base64 | tr '+/' '-_' | tr -d '=\n'; }
verifier=$(openssl rand 48 | b64url)
challenge=$(printf %s "$verifier" | openssl dgst -sha256 -binary | b64url)
state=$(openssl rand -hex 16)
jar=$(mktemp)
trap 'rm -f "$jar"' EXIT

page=$(curl -sSf -c "$jar" -b "$jar" -G "$issuer/protocol/openid-connect/auth" \
  --data-urlencode response_type=code --data-urlencode "client_id=$client" \
  --data-urlencode "redirect_uri=$redirect" --data-urlencode scope=openid \
  --data-urlencode "state=$state" --data-urlencode "code_challenge=$challenge" \
  --data-urlencode code_challenge_method=S256)
action=$(printf %s "$page" | sed -n 's/.*<form method="post" action="\([^"]*\)".*/\1/p' | sed 's/&amp;/\&/g')
csrf=$(printf %s "$page" | sed -n 's/.*name="csrf" value="\([^"]*\)".*/\1/p')
[ -n "$action" ] && [ -n "$csrf" ] || { echo "login.sh: no login form at $issuer" >&2; exit 1; }

origin=$(printf %s "$issuer" | sed -n 's#^\(https\?://[^/]*\).*#\1#p')
location=$(curl -sS -o /dev/null -w '%{redirect_url}' -c "$jar" -b "$jar" "$origin$action" \
  --data-urlencode "csrf=$csrf" --data-urlencode "username=$user" --data-urlencode "password=$password")
code=$(printf %s "$location" | sed -n 's/.*[?&]code=\([^&]*\).*/\1/p')
returned_state=$(printf %s "$location" | sed -n 's/.*[?&]state=\([^&]*\).*/\1/p')
if [ -z "$code" ]; then
  echo "login.sh: login failed (wrong credentials, locked, or a second factor / new password is required)" >&2
  exit 1
fi
[ "$returned_state" = "$state" ] || { echo "login.sh: state mismatch" >&2; exit 1; }

curl -sSf -u "$client:$secret" "$issuer/protocol/openid-connect/token" \
  --data-urlencode grant_type=authorization_code --data-urlencode "code=$code" \
  --data-urlencode "redirect_uri=$redirect" --data-urlencode "code_verifier=$verifier" |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["access_token"])'
