"""Settings: built once in the composition root (cli/server.py) and passed down.

Every field can be set as an environment variable with the CAPSULED_ prefix and `__`
between group and field, e.g. CAPSULED_AGENT__RELIST_INTERVAL=5.
"""

from __future__ import annotations

import socket
from pathlib import Path

from pydantic import BaseModel, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from capsuled.paths import DEFAULT_LISTEN, default_state_dir


class DockerSettings(BaseModel):
    host: str = Field("unix:///var/run/docker.sock", description="Docker Engine socket the agent drives")
    infra_image: str = Field("capsuled/infra:latest", description="Sandbox image (catatonit -P)")
    timeout: float = Field(60.0, description="Seconds before a Docker API call is abandoned")


class AgentSettings(BaseModel):
    host_name: str = Field(default_factory=socket.gethostname, description="This host's name")
    availability_zone: str = Field("nova", description="Availability zone this host is in")
    relist_interval: float = Field(15.0, description="Seconds between full relists (repairs missed events)")
    workers: int = Field(16, description="Capsules reconciled in parallel")
    backoff_initial: float = Field(1.0, description="First delay before retrying a failed capsule sync")
    backoff_max: float = Field(60.0, description="Longest delay between retries of a failed sync")
    stop_timeout: int = Field(5, description="Seconds a container gets to stop on delete before SIGKILL")


class ApiSettings(BaseModel):
    max_limit: int = Field(1000, description="Largest page a list returns")
    max_body_bytes: int = Field(1_048_576, description="Largest request body accepted")


class LimitSettings(BaseModel):
    min_cpu: float = 0.1
    max_cpu: float = 16.0
    min_memory: int = 4
    max_memory: int = 8192
    max_containers: int = 24


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CAPSULED_", env_nested_delimiter="__")

    state_dir: Path = Field(default_factory=default_state_dir, description="State directory")
    listen: str = Field(DEFAULT_LISTEN, description="HOST:PORT the API listens on")
    database_url: str | None = Field(None, description="SQLAlchemy URL; default SQLite in state_dir")
    log_level: str = "info"
    docker: DockerSettings = Field(default_factory=DockerSettings)
    agent: AgentSettings = Field(default_factory=AgentSettings)
    api: ApiSettings = Field(default_factory=ApiSettings)
    limits: LimitSettings = Field(default_factory=LimitSettings)
    policy: dict[str, str] = Field(default_factory=dict,
                                   description="Policy rule overrides: name -> check string")
    policy_file: Path | None = Field(None, description="YAML file of policy rule overrides")

    def effective_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.state_dir / 'capsuled.db'}"
