"""The ASGI gateway: authenticate, forward untouched, meter, record."""

from .app import create_app

__all__ = ["create_app"]
