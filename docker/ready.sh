#!/bin/bash
# Container health check: exits 0 when the service's /ready answers 200.
# Uses bash's /dev/tcp so that images need no HTTP client.
exec 3<>"/dev/tcp/127.0.0.1/${CAVLO_READY_PORT:?}" || exit 1
printf 'GET /ready HTTP/1.0\r\nHost: localhost\r\n\r\n' >&3
IFS= read -r status <&3
[[ "$status" == *" 200 "* ]]
