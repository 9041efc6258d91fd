"""The baseline of ``keyfleet lab bench``: a hand-written pywinrm thread pool running ``hostname``.

``python -m orchestrator.lab.baseline HOSTS.json FORKS`` (the bench writes HOSTS.json); prints
``{"summary": {"ok": N, "failed": M}}``. Plain pywinrm, as any scripter would write it.
"""

from __future__ import annotations

import json
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import winrm


def hostname(host: dict[str, Any]) -> bool:
    session = winrm.Session(
        host["endpoint"],
        auth=(host["username"], host["password"]),
        transport=host["transport"],
        server_cert_validation="validate" if host["ca"] else "ignore",
        ca_trust_path=host["ca"] or "legacy_requests",
    )
    try:
        return session.run_cmd("hostname").status_code == 0
    except Exception:  # a failed host is counted, as a scripter's pool would
        return False


def main(argv: list[str]) -> int:
    with open(argv[0]) as file:
        hosts = json.load(file)
    with ThreadPoolExecutor(int(argv[1])) as pool:
        ok = sum(pool.map(hostname, hosts))
    print(json.dumps({"summary": {"ok": ok, "failed": len(hosts) - ok}}))
    return 0 if ok == len(hosts) else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
