"""The docker SDK's low-level client and the one place its exceptions become ours."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import docker
import docker.errors
import requests.exceptions

from capsuled.errors import (DriverError, ImageNotFound, NotFound, RuntimeConflict,
                             RuntimeRejected, Unavailable)


def make_client(base_url: str, timeout: float) -> docker.APIClient:
    return docker.APIClient(base_url=base_url, timeout=int(timeout), version="auto",
                            max_pool_size=64)


@contextmanager
def translate_docker_errors(what: str) -> Iterator[None]:
    try:
        yield
    except docker.errors.ImageNotFound as exc:
        raise ImageNotFound(f"{what}: {exc.explanation or exc}") from exc
    except docker.errors.NotFound as exc:
        raise NotFound(f"{what}: {exc.explanation or exc}") from exc
    except docker.errors.APIError as exc:
        if exc.status_code == 409:  # e.g. "container is paused", "is not running"
            raise RuntimeConflict(f"{what}: {exc.explanation or exc}") from exc
        if exc.status_code == 400:
            raise RuntimeRejected(f"{what}: {exc.explanation or exc}") from exc
        raise DriverError(f"{what}: {exc.explanation or exc}") from exc
    except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as exc:
        raise Unavailable(f"{what}: Docker Engine unreachable ({exc})") from exc
    except docker.errors.DockerException as exc:
        raise DriverError(f"{what}: {exc}") from exc
