"""Judges a kosoku (Autobahn|Testsuite) report of the gateway's echo.

    python3 verdict.py REPORT_DIR --cases N [--limit-closes]

Prints a line per outcome and the cases that were not plain OK, and exits 1
when any case failed. The rules, which docs/security.md explains:

* OK is a pass. NON-STRICT and INFORMATIONAL pass but are listed: the
  suite leaves those behaviours to the server.
* UNIMPLEMENTED passes only in sections 12 and 13 (permessage-deflate,
  which the gateway does not offer).
* With --limit-closes, a case of OVERSIZE (the cases whose messages are
  256 KiB to 16 MiB, past `gateway.max_frame_bytes`, 128 KiB) that the
  gateway ended cleanly with 1009 (message too big) passes as refused by
  the size limit, and every one of them must end so: a 1009 anywhere else
  fails, and so does an oversize case that did not get it. A second run
  with the limit raised must pass those cases outright.
* Anything else (FAILED, ERROR, a wrong close) fails, and so does a report
  of other than N cases: a run cut short must not pass.
"""

import argparse
import collections
import json
import pathlib
import sys


# The default run's cases whose messages exceed 128 KiB: 9.1.2-9.1.6 and
# 9.2.2-9.2.6 (256 KiB to 16 MiB, text and binary), 9.3.x and 9.4.x (4 MiB
# in fragments), 9.5.x and 9.6.x (1 MiB in chops). 7.1.6 sends 256 KiB too,
# but the suite rates it INFORMATIONAL whatever the close.
OVERSIZE = (
    {f"9.1.{n}" for n in range(2, 7)}
    | {f"9.2.{n}" for n in range(2, 7)}
    | {f"9.3.{n}" for n in range(1, 10)}
    | {f"9.4.{n}" for n in range(1, 10)}
    | {f"9.5.{n}" for n in range(1, 7)}
    | {f"9.6.{n}" for n in range(1, 7)}
)
REFUSED = "refused by the size limit (1009)"


def verdict(case, result, report, limit_closes):
    behavior, close = result["behavior"], result["behaviorClose"]
    if behavior == "OK" and close == "OK":
        return "ok"
    if behavior in ("NON-STRICT", "INFORMATIONAL") and close in ("OK", "INFORMATIONAL"):
        return behavior.lower()
    if behavior == "UNIMPLEMENTED" and case.split(".")[0] in ("12", "13"):
        return "unimplemented (permessage-deflate is off)"
    if (
        limit_closes
        and case in OVERSIZE
        and report.get("remoteCloseCode") == 1009
        and report.get("wasClean")
    ):
        return REFUSED
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
        if outcome == REFUSED:
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
    refused = {case for case, _, _ in outcomes[REFUSED]}
    if args.limit_closes and refused != OVERSIZE:
        missing = ", ".join(sorted(OVERSIZE - refused)) or "none"
        print(f"expected the {len(OVERSIZE)} oversize cases refused with 1009; not refused: {missing}")
        sys.exit(1)


if __name__ == "__main__":
    main()
