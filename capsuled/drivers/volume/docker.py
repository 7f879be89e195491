"""LocalVolumes: capsule volumes as Docker `local` volumes, labelled with their capsule.

No size limit yet (`size` is recorded, not enforced): a loop-mounted ext4 driver slots in
behind the same VolumeDriver protocol.
"""

from __future__ import annotations

import docker

from capsuled.domain import labels as L
from capsuled.drivers.docker_client import translate_docker_errors
from capsuled.drivers.volume.base import VolumeRequest
from capsuled.errors import DriverError, NotFound


class LocalVolumes:
    def __init__(self, client: docker.APIClient) -> None:
        self._api = client

    def ensure_volume(self, req: VolumeRequest) -> str:
        with translate_docker_errors(f"create volume {req.name}"):
            # Creating an existing local volume with the same driver is a no-op in Docker.
            self._api.create_volume(name=req.name, driver="local", labels=req.labels)
        return req.name

    def remove_volume(self, name: str) -> None:
        try:
            with translate_docker_errors(f"remove volume {name}"):
                self._api.remove_volume(name, force=True)
        except NotFound:
            return
        except DriverError as exc:
            if "no such volume" in exc.message.lower():
                return
            raise

    def remove_owned(self, instance: str, capsule: str) -> list[str]:
        with translate_docker_errors(f"list volumes of capsule {capsule}"):
            found = self._api.volumes(filters={"label": [
                f"{L.INSTANCE}={instance}", f"{L.CAPSULE}={capsule}", f"{L.AUTO_REMOVE}=true"]})
        names = [v["Name"] for v in (found or {}).get("Volumes") or []]
        for name in names:
            self.remove_volume(name)
        return names
