"""The headers every response carries (the browser test checks that pages satisfy them), and
the files mailmag serves itself so that nothing comes from a CDN."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine

from subscriptions.app import create_app
from subscriptions.routes.assets import STATIC_DIR
from subscriptions.security_headers import ADMIN, DOCS, MAIL_FRAME, PAGES
from subscriptions.settings import Settings


@pytest.mark.parametrize(
    ("path", "policy"),
    [
        ("/subscribe", PAGES),
        ("/u/not-a-link", PAGES),
        ("/healthz", PAGES),
        ("/docs", DOCS),
        ("/admin/login", ADMIN),
        ("/admin", ADMIN),  # the redirect to the login page too
    ],
)
def test_every_response_has_its_policy_and_no_framing(
    client: TestClient, path: str, policy: str
) -> None:
    answer = client.get(path, follow_redirects=False)
    assert answer.headers["content-security-policy"] == policy
    assert "frame-ancestors 'none'" in policy
    assert answer.headers["x-frame-options"] == "DENY"
    assert answer.headers["x-content-type-options"] == "nosniff"
    assert "strict-transport-security" not in answer.headers  # http:// base URL


def test_the_public_pages_allow_no_script_and_no_inline_style() -> None:
    assert "script-src" not in PAGES
    assert "default-src 'none'" in PAGES
    assert "'unsafe-inline'" not in PAGES
    assert "'unsafe-inline'" not in DOCS
    assert "'unsafe-eval'" not in ADMIN + DOCS + PAGES
    assert "sandbox" in MAIL_FRAME


def test_docs_loads_only_files_mailmag_serves(client: TestClient) -> None:
    page = client.get("/docs")
    assert page.status_code == 200
    assets = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert assets
    for asset in assets:
        assert asset.startswith("/static/"), asset
        served = client.get(asset)
        assert served.status_code == 200, asset
        assert served.content
    assert client.get("/openapi.json").status_code == 200
    assert client.get("/redoc").status_code == 404  # CDN-only: off


def test_the_vendored_swagger_ui_is_the_version_it_says() -> None:
    version = (STATIC_DIR / "swagger_ui" / "VERSION").read_text().strip()
    bundle = (STATIC_DIR / "swagger_ui" / "swagger-ui-bundle.js").read_text(encoding="utf-8")
    assert f'PACKAGE_VERSION:"{version}"' in bundle
    assert "Apache License" in (STATIC_DIR / "swagger_ui" / "LICENSE").read_text()


@pytest.mark.parametrize(
    "path", ["/static/../settings.py", "/static/%2e%2e/app.py", "/static/nothing.css"]
)
def test_static_files_stay_in_their_folder(client: TestClient, path: str) -> None:
    assert client.get(path).status_code in (404, 422)


def test_https_deployments_send_hsts(settings: Settings, engine: Engine) -> None:
    tls = settings.model_copy(update={"base_url": "https://news.example.com"})
    with TestClient(create_app(tls, engine=engine, delivery=False)) as client:
        answer = client.get("/healthz")
    assert answer.headers["strict-transport-security"] == "max-age=31536000"
