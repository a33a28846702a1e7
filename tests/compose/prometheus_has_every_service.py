"""Checks that the compose deployment's Prometheus has scraped every cavlo
service: a `cavlo_nats_connected` sample equal to 1 from both gateways,
both moderators, history, the media nodes (as many as the second argument
says, default 1) and the archiver, and a service-specific metric
from each job.

    python3 prometheus_has_every_service.py http://127.0.0.1:9091

Waits up to a minute (Prometheus scrapes every 5 s), then fails naming
what is missing.
"""

import json
import sys
import time
import urllib.parse
import urllib.request

# job -> (instances expected, a metric only that service reports)
EXPECTED = {
    "gateway": (2, "cavlo_gateway_connections"),
    "moderator": (2, "cavlo_moderator_requests_in_flight"),
    "history": (1, "cavlo_history_queries_in_flight"),
    "archiver": (1, "cavlo_archiver_pending"),
    # Two on the 3-node cluster (media-2); `main` is told.
    "media": (1, "cavlo_media_participants"),
}


def query(base, promql):
    url = f"{base}/api/v1/query?{urllib.parse.urlencode({'query': promql})}"
    with urllib.request.urlopen(url, timeout=5) as response:
        body = json.load(response)
    return body["data"]["result"]


def missing(base):
    problems = []
    for job, (instances, metric) in EXPECTED.items():
        for promql in (f'cavlo_nats_connected{{job="{job}"}} == 1', f'{metric}{{job="{job}"}}'):
            found = len(query(base, promql))
            if found != instances:
                problems.append(f"{promql}: {found} of {instances} instances")
    return problems


def main():
    base = sys.argv[1].rstrip("/")
    if len(sys.argv) > 2:
        EXPECTED["media"] = (int(sys.argv[2]), EXPECTED["media"][1])
    deadline = time.monotonic() + 60
    problems = ["not asked yet"]
    while time.monotonic() < deadline:
        try:
            problems = missing(base)
        except OSError as err:
            problems = [f"Prometheus does not answer: {err}"]
        if not problems:
            print("smoke: prometheus has a sample of every service")
            return
        time.sleep(2)
    sys.exit("prometheus lacks samples:\n  " + "\n  ".join(problems))


if __name__ == "__main__":
    main()
