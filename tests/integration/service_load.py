"""What the capsule-service proofs share (test_capsule_services.py on one host,
test_multihost_services.py on two): busybox httpd backends that answer with their name and
whose readiness probe fails on demand, and a client loop that stamps every request with
the kernel's uptime (one clock for every container of the machine, whatever its host
engine), so that a probe's verdict and the requests after it can be compared."""

from __future__ import annotations

import time
from typing import Any

import docker
from conftest import exec_in, template

HTTPD = "mkdir -p /w && echo {name} > /w/index.html && exec httpd -f -p 8080 -h /w"
# Ready unless /tmp/unready exists; a failing probe records the kernel's uptime first.
READY = ("if [ -e /tmp/unready ]; then read u r < /proc/uptime; echo $u >> /tmp/fails; "
         "exit 1; fi")
REQUEST = "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 web 80 | tail -1"
# Requests back to back until /tmp/stop exists: "<uptime at its start> <answer>" each.
LOAD = (f"rm -f /tmp/stop /tmp/load; while [ ! -e /tmp/stop ]; do read u r < /proc/uptime; "
        f"b=$({REQUEST}); echo \"$u $b\" >> /tmp/load; done")
# Four loops of 250 at once: a thousand connections to the service `web`, each a new
# choice of backend (one process per request: the whole answer is kept, its last line is
# the backend's name).
SPREAD = ("printf 'GET / HTTP/1.0\r\n\r\n' > /tmp/req; for j in 1 2 3 4; do (i=0; "
          "while [ $i -lt 250 ]; do nc web 80 < /tmp/req; i=$((i+1)); done > /tmp/spread.$j) & "
          "done; wait; cat /tmp/spread.*")


def backend(name: str, app: str, **spec: Any) -> dict[str, Any]:
    """A capsule `name` labelled app=`app` whose httpd on 8080 answers its name."""
    return template(name, [{
        "name": "httpd", "image": "busybox", "command": ["sh", "-c", HTTPD.format(name=name)],
        "readinessProbe": {"exec": {"command": ["sh", "-c", READY]}, "periodSeconds": 1,
                           "failureThreshold": 1, "successThreshold": 1}}],
        labels={"app": app}, **spec)


def start_load(docker_api: docker.APIClient, container: str) -> None:
    ex = docker_api.exec_create(container, ["sh", "-c", LOAD])
    docker_api.exec_start(ex["Id"], detach=True)


def stop_load(docker_api: docker.APIClient, container: str) -> list[tuple[float, str]]:
    """Stop the loop; (uptime at its start, answer) of every request it made."""
    exec_in(docker_api, container, "touch", "/tmp/stop")
    time.sleep(1.0)  # the request under way ends
    lines = exec_in(docker_api, container, "cat", "/tmp/load")[1].splitlines()
    out = []
    for line in lines:
        stamp, _, answer = line.partition(" ")
        out.append((float(stamp), answer.strip()))
    return out
