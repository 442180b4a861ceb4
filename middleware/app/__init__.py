"""The composition root: ``build_parts(settings)`` and the ASGI app over them."""

from middleware.app.asgi import build_app, create_app
from middleware.app.parts import Parts, build_parts

__all__ = ["Parts", "build_app", "build_parts", "create_app"]
