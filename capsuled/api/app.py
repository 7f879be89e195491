"""create_app(): the FastAPI application, built from explicit collaborators (no globals)."""

from __future__ import annotations

from fastapi import FastAPI

from capsuled.api import errors
from capsuled.api.middleware import ApiMiddleware
from capsuled.api.routers import capsules, root
from capsuled.api.services.capsules import CapsuleService
from capsuled.config import Settings
from capsuled.identity.base import IdentityProvider


def create_app(settings: Settings, identity: IdentityProvider, capsule_service: CapsuleService) -> FastAPI:
    app = FastAPI(title="Capsuled", version="1", docs_url="/docs", redoc_url=None)
    app.state.settings = settings
    app.state.identity = identity
    app.state.capsules = capsule_service
    errors.install(app)
    app.add_middleware(ApiMiddleware)
    app.include_router(root.router)
    app.include_router(capsules.router)
    return app
