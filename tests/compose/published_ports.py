"""Checks what the compose deployment publishes on the host, as
docs/operations.md promises: clients reach the gateways and the TURN relay;
NATS and Prometheus only from the host itself (127.0.0.1); nothing else,
and no service's health and metrics port (9090) or NATS's monitoring port.

    docker inspect $(docker compose ps -q) | python3 published_ports.py

Reads `docker inspect` of every container on stdin; exits 1 on any port
published otherwise.
"""

import json
import sys

# Container ports each service may publish, and whether to every address
# (public) or to loopback only.
PUBLIC = {
    "gateway-1": {"8080/tcp"},
    "gateway-2": {"8080/tcp"},
    "gateway-extra": {"8080/tcp"},
    "turn": {"3478/udp", "3478/tcp"} | {f"{p}/udp" for p in range(49160, 49200)},
    "media-1": {"10000/udp"},
    "media-2": {"10001/udp"},
}
LOOPBACK = {
    "nats": {"4222/tcp"},
    "prometheus": {"9090/tcp"},
}


def main():
    problems = []
    published = 0
    for container in json.load(sys.stdin):
        service = container["Config"]["Labels"].get("com.docker.compose.service", "?")
        for port, bindings in (container["NetworkSettings"]["Ports"] or {}).items():
            for binding in bindings or []:
                published += 1
                host_ip = binding.get("HostIp", "")
                loopback = host_ip in ("127.0.0.1", "::1")
                if port in PUBLIC.get(service, set()):
                    continue
                if port in LOOPBACK.get(service, set()) and loopback:
                    continue
                problems.append(f"{service} publishes {port} on {host_ip or 'every address'}:{binding.get('HostPort')}")
    for problem in problems:
        print(problem)
    print(f"{published} published bindings, {len(problems)} not as documented")
    sys.exit(1 if problems or published == 0 else 0)


if __name__ == "__main__":
    main()
