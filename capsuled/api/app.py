"""create_app(): the FastAPI application, built from explicit collaborators (no globals)."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import FastAPI

from capsuled.api import errors, openapi
from capsuled.api.metrics import ApiMetrics
from capsuled.api.middleware import ApiMiddleware
from capsuled.api.policy import Policy
from capsuled.api.routers import (agents, capsule_services, capsules, containers, events, hosts,
                                  images, metrics, quotas, registries, root, security_groups,
                                  subscriptions, tokens, ui, whoami)
from capsuled.api.services.agents import ControlPlane
from capsuled.api.services.capsule_services import CapsuleServices
from capsuled.api.services.capsules import CapsuleService
from capsuled.api.services.containers import ContainerService
from capsuled.api.services.events import EventService, OutboxHub
from capsuled.api.services.hosts import HostService
from capsuled.api.services.images import ImageService
from capsuled.api.services.quotas import QuotaService
from capsuled.api.services.registries import RegistryService
from capsuled.api.services.security_groups import SecurityGroupService
from capsuled.api.services.subscriptions import SubscriptionService
from capsuled.api.services.rollouts import RolloutService
from capsuled.api.services.tokens import TokenService
from capsuled.api.streams import Streams
from capsuled.config import Settings
from capsuled.identity.base import IdentityProvider


@dataclass(frozen=True)
class Services:
    """The use-case objects the routers call; the composition root builds them."""

    capsules: CapsuleService
    rollouts: RolloutService
    containers: ContainerService
    hosts: HostService
    images: ImageService
    tokens: TokenService
    quotas: QuotaService
    control: ControlPlane
    registries: RegistryService
    events: EventService
    outbox_hub: OutboxHub
    subscriptions: SubscriptionService
    security_groups: SecurityGroupService
    capsule_services: CapsuleServices


def create_app(settings: Settings, identity: IdentityProvider, services: Services,
               policy: Policy | None = None, api_metrics: ApiMetrics | None = None,
               dashboard: ui.Dashboard | None = None) -> FastAPI:
    """`api_metrics`: what /metrics serves and the services record into (the composition
    root builds one over the store; default: request metrics only). `dashboard`: the web
    dashboard's files served at /ui (default: the built ones in capsuled/ui_static)."""
    app = FastAPI(title="Capsuled", version="1", docs_url="/docs", redoc_url=None)
    app.state.settings = settings
    app.state.identity = identity
    app.state.policy = policy or Policy(settings.policy, settings.policy_file)
    app.state.capsules = services.capsules
    app.state.rollouts = services.rollouts
    app.state.containers = services.containers
    app.state.hosts = services.hosts
    app.state.images = services.images
    app.state.tokens = services.tokens
    app.state.quotas = services.quotas
    app.state.control = services.control
    app.state.registries = services.registries
    app.state.events = services.events
    app.state.outbox_hub = services.outbox_hub
    app.state.subscriptions = services.subscriptions
    app.state.security_groups = services.security_groups
    app.state.capsule_services = services.capsule_services
    app.state.metrics = api_metrics = api_metrics or ApiMetrics()
    # Follow-log streams, terminals and waits: counted, and off the shared thread pool.
    app.state.streams = Streams.from_settings(settings.api)
    errors.install(app)
    openapi.install(app)
    app.add_middleware(ApiMiddleware, max_body_bytes=settings.api.max_body_bytes,
                       max_agent_body_bytes=settings.api.max_agent_body_bytes,
                       metrics=api_metrics)
    # FastAPI tries the included routers in this order, matching every route of each
    # until one fits, on every request: the agent channel (heartbeats, long polls and
    # reports of every host, most of a replica's requests) goes first; its prefix is
    # its own, so the order changes no answer.
    for module in (agents, root, capsules, containers, hosts, images, quotas, tokens, registries,
                   events, subscriptions, security_groups, capsule_services, metrics, whoami):
        app.include_router(module.router)
    app.include_router(security_groups.container_actions)
    app.include_router(ui.router(dashboard or ui.Dashboard.load()))
    return app
