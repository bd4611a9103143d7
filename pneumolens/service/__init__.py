"""PneumoLens web service: a REST API and a page to upload an X-ray and see the prediction and why.

    from pneumolens.service import ServeSettings, create_app
    app = create_app(ServeSettings(checkpoint="runs/train/model.pt"))  # or ServeSettings(): the shipped model

Run it with ``pneumolens serve``. Research use only: not a medical device.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .app import create_app
    from .settings import ServeSettings

__all__ = ["ServeSettings", "create_app"]


def __getattr__(name: str) -> Any:
    # Lazy: explanation worker processes import pneumolens.service.workers and need no web stack.
    if name == "create_app":
        from .app import create_app

        return create_app
    if name == "ServeSettings":
        from .settings import ServeSettings

        return ServeSettings
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
