#!/usr/bin/env bash
# Prints a development HS256 token for a user, valid for one hour.
# Usage: scripts/dev-token.sh NAME [SECRET]
# SECRET defaults to $CAVLO_GATEWAY__AUTH__HS256_SECRET, then to the
# secret scripts/run-local.sh uses. For development only.
set -euo pipefail
name="${1:?usage: dev-token.sh NAME [SECRET]}"
secret="${2:-${CAVLO_GATEWAY__AUTH__HS256_SECRET:-local-dev-secret-change-me}}"
python3 - "$name" "$secret" <<'PY'
import base64, hashlib, hmac, json, sys, time
name, secret = sys.argv[1], sys.argv[2]
b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
header = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
claims = b64(json.dumps({"sub": name, "name": name, "exp": int(time.time()) + 3600}).encode())
signature = hmac.new(secret.encode(), f"{header}.{claims}".encode(), hashlib.sha256).digest()
print(f"{header}.{claims}.{b64(signature)}")
PY
