"""The OpenSPF RFC 7208 test suite (release 2014.04), every scenario, nothing skipped.

Zone data mapping (as the suite's own driver, pyspf's testspf.py, does it):
- a name listed in zonedata exists; absent names are NXDOMAIN;
- ``TIMEOUT`` as an entry makes every query for the name a TempError; as a value, that type;
- ``SPF`` (type 99) records are copied to TXT unless the name has TXT records of its own
  (RFC 7208 dropped type SPF; the suite relies on this duplication);
- a record given as a list of strings is one TXT record of several character-strings;
- ``NONE`` means "no such record" but still blocks the SPF→TXT copy.
"""

from __future__ import annotations

import asyncio
import importlib.util
from pathlib import Path
from typing import Any

import yaml

from mailyard.mailauth.spf import check_spf
from mailyard.testing.dns import FakeResolver

_spec = importlib.util.spec_from_file_location("spf_fetch", Path(__file__).with_name("fetch.py"))
assert _spec and _spec.loader
fetch = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fetch)


def zone_from_yaml(zonedata: dict[str, list[Any]]) -> FakeResolver:
    zones: dict[str, dict[str, Any]] = {}
    for name, entries in zonedata.items():
        node: dict[str, Any] = {}
        spf: list[Any] = []
        has_txt = False
        for entry in entries:
            if entry == "TIMEOUT":
                node["TIMEOUT"] = True
                continue
            for rtype, value in entry.items():
                if rtype == "TXT":
                    has_txt = True
                if value == "TIMEOUT":
                    node[rtype] = "TIMEOUT"
                    if rtype == "SPF":
                        spf.append("TIMEOUT")
                    continue
                if value == "NONE":
                    continue
                if rtype in ("TXT", "SPF") and isinstance(value, list):
                    value = "".join(value)
                if rtype == "MX":
                    value = (int(value[0]), str(value[1]))
                if rtype == "SPF":
                    spf.append(value)
                if node.get(rtype) == "TIMEOUT":
                    continue
                node.setdefault(rtype, []).append(value)
        if not has_txt and spf:
            node["TXT"] = "TIMEOUT" if "TIMEOUT" in spf else list(spf)
        node.pop("SPF", None)
        zones[name] = node
    return FakeResolver(zones)


def load_cases() -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    path = fetch.ensure_suite()
    cases = []
    with open(path, "rb") as f:
        for scenario in yaml.safe_load_all(f):
            for name, test in scenario["tests"].items():
                cases.append((name, test, scenario["zonedata"]))
    return cases


def run_case(test: dict[str, Any], zonedata: dict[str, Any]) -> tuple[bool, str]:
    resolver = zone_from_yaml(zonedata)
    res = asyncio.run(
        check_spf(
            test["host"],
            test["mailfrom"],
            test["helo"],
            resolver=resolver,
            receiver=test.get("receiver", ""),
        )
    )
    expected = test["result"]
    ok_results = expected if isinstance(expected, list) else [expected]
    ok = res.result in ok_results
    if ok and "explanation" in test:
        want = "" if test["explanation"] == "DEFAULT" else test["explanation"]
        ok = res.explanation == want
    return ok, f"got {res.result} ({res.reason}) exp={res.explanation!r}, want {expected}"


def test_rfc7208_suite() -> None:
    cases = load_cases()
    assert len(cases) >= 200, f"suite looks truncated: {len(cases)} cases"
    failures = []
    for name, test, zonedata in cases:
        ok, detail = run_case(test, zonedata)
        if not ok:
            failures.append(f"{name} [{test.get('spec')}]: {detail}")
    passed = len(cases) - len(failures)
    print(f"RFC 7208 suite: {passed}/{len(cases)} passed")
    assert not failures, f"{len(failures)}/{len(cases)} failed:\n" + "\n".join(failures)
