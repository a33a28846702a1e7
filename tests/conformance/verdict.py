"""Judges a kosoku (Autobahn|Testsuite) report of the gateway's echo.

    python3 verdict.py REPORT_DIR --cases N [--limit-closes]

Prints a line per outcome and the cases that were not plain OK, and exits 1
when any case failed. The rules, which docs/security.md explains:

* OK is a pass. NON-STRICT and INFORMATIONAL pass but are listed: the
  suite leaves those behaviours to the server.
* UNIMPLEMENTED passes only in sections 12 and 13 (permessage-deflate,
  which the gateway does not offer).
* With --limit-closes, a case the gateway ended cleanly with 1009 (message
  too big) passes as refused by the size limit: the default run sends
  messages of up to 16 MiB, past `gateway.max_frame_bytes`. A second run
  with the limit raised must pass those cases outright.
* Anything else (FAILED, ERROR, a wrong close) fails, and so does a report
  of other than N cases: a run cut short must not pass.
"""

import argparse
import collections
import json
import pathlib
import sys


def verdict(case, result, report, limit_closes):
    behavior, close = result["behavior"], result["behaviorClose"]
    if behavior == "OK" and close == "OK":
        return "ok"
    if behavior in ("NON-STRICT", "INFORMATIONAL") and close in ("OK", "INFORMATIONAL"):
        return behavior.lower()
    if behavior == "UNIMPLEMENTED" and case.split(".")[0] in ("12", "13"):
        return "unimplemented (permessage-deflate is off)"
    if limit_closes and report.get("remoteCloseCode") == 1009 and report.get("wasClean"):
        return "refused by the size limit (1009)"
    return "FAILED"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("reports", type=pathlib.Path)
    parser.add_argument("--cases", type=int, required=True)
    parser.add_argument("--limit-closes", action="store_true")
    args = parser.parse_args()

    index = json.loads((args.reports / "index.json").read_text())
    results = next(iter(index.values()))
    outcomes = collections.defaultdict(list)
    for case, result in results.items():
        report = json.loads((args.reports / result["reportfile"]).read_text())
        outcome = verdict(case, result, report, args.limit_closes)
        outcomes[outcome].append((case, result, report))

    print(f"{len(results)} cases")
    for outcome, cases in sorted(outcomes.items()):
        print(f"  {outcome}: {len(cases)}")
    for outcome, cases in sorted(outcomes.items()):
        if outcome in ("ok", "unimplemented (permessage-deflate is off)"):
            continue
        if outcome == "refused by the size limit (1009)":
            print(f"{outcome}: {', '.join(case for case, _, _ in cases)}")
            continue
        for case, result, report in cases:
            print(
                f"{outcome}: {case} behavior={result['behavior']} "
                f"close={result['behaviorClose']} code={report.get('remoteCloseCode')}: "
                f"{report.get('result')}"
            )
    if len(results) != args.cases:
        print(f"expected {args.cases} cases, the report has {len(results)}")
        sys.exit(1)
    if outcomes["FAILED"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
