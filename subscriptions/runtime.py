"""What one mailmag process holds while it runs: settings, the engine, templates, services.

Built once by the app factory (or the CLI for commands without a web app) and passed down
explicitly; nothing here reads the environment.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from fastapi.templating import Jinja2Templates
from sqlalchemy.engine import Engine

from mailer.capture import CaptureServer
from subscriptions.settings import Settings

TEMPLATES_DIR = Path(__file__).resolve().parent.parent / "templates"


@dataclass
class Runtime:
    settings: Settings
    engine: Engine
    templates: Jinja2Templates = field(
        default_factory=lambda: Jinja2Templates(directory=TEMPLATES_DIR)
    )
    capture: CaptureServer | None = None

    @property
    def captured_mail_dir(self) -> Path:
        return self.settings.data_dir / "captured-mail"

    def start_services(self) -> None:
        """Start what runs beside the web app: the capture server on the embedded default."""
        if self.settings.captures_mail and self.capture is None:
            self.capture = CaptureServer(self.captured_mail_dir, self.settings.capture_smtp_port)
            self.capture.start()

    def stop_services(self) -> None:
        if self.capture is not None:
            self.capture.stop()
            self.capture = None
