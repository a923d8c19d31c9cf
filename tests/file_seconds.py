"""Each test file's seconds in a full run, for ordering the suite (tests/conftest.py).

    .venv/bin/python -m pytest -n 2 --dist loadfile --junitxml=/tmp/junit.xml
    .venv/bin/python -m tests.file_seconds /tmp/junit.xml > tests/file_seconds.json

The suite runs each file whole in one of the pytest-xdist processes; the files start slowest
first, so that the last to start are short and no process waits long, idle, for the other to
finish. A file not listed (a new one) starts first of all.
"""

from __future__ import annotations

import json
import sys
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

FILE_SECONDS = Path(__file__).with_name("file_seconds.json")


def file_seconds(junit_xml: Path) -> dict[str, float]:
    """Seconds per test file (setup, call and teardown of its tests) in a JUnit XML report."""
    seconds: Counter[str] = Counter()
    for case in ET.parse(junit_xml).iter("testcase"):
        parts = case.get("classname", "").split(".")
        while parts and not parts[-1].startswith("test"):  # a test class: not part of the path
            parts.pop()
        path = "/".join(parts) + ".py"
        seconds[path] += float(case.get("time") or 0)
    return {path: round(s, 1) for path, s in seconds.most_common()}


def slowest_first(nodeids: list[str], seconds: dict[str, float]) -> list[int]:
    """The order (indices into `nodeids`) that runs the files slowest first, files not in
    `seconds` before all, each file's tests in their own order."""
    cost = [seconds.get(nodeid.split("::", 1)[0], float("inf")) for nodeid in nodeids]
    return sorted(range(len(nodeids)), key=lambda i: -cost[i])


if __name__ == "__main__":
    json.dump(file_seconds(Path(sys.argv[1])), sys.stdout, indent=0)
    sys.stdout.write("\n")
