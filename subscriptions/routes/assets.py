"""mailmag's own static files (``/static/``) and the API's documentation page (``/docs``).

Everything a page loads comes from mailmag itself, so pages work offline and their
Content-Security-Policy can name only ``'self'``: the public pages' stylesheet, and Swagger
UI for ``/docs``, vendored from the npm package swagger-ui-dist into
``templates/static/swagger_ui`` (``make swagger-ui`` updates it; the version is in its
VERSION file). FastAPI's own ``/docs`` loads Swagger UI from a CDN and starts it with an
inline script, so it is switched off and replaced by this page, whose script is a file too.
ReDoc (``/redoc``, CDN only) is off.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Request, Response
from fastapi.responses import HTMLResponse
from starlette.staticfiles import StaticFiles

from subscriptions.paths import TEMPLATES_DIR

router = APIRouter(tags=["assets"])
STATIC_DIR = TEMPLATES_DIR / "static"
_files = StaticFiles(directory=STATIC_DIR)

DOCS_PAGE = """<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <title>mailmag API</title>
  <link rel="stylesheet" href="/static/swagger_ui/swagger-ui.css">
  <link rel="icon" type="image/png" href="/static/swagger_ui/favicon-32x32.png">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="/static/swagger_ui/swagger-ui-bundle.js"></script>
  <script src="/static/docs.js"></script>
</body>
</html>
"""


Name = Annotated[str, Path(max_length=100, pattern=r"^[\w.-]+$")]


@router.get("/static/{name}")
async def static(name: Name, request: Request) -> Response:
    """A file in ``templates/static`` (Starlette's StaticFiles: ETag, 304, no way out of
    the folder)."""
    return await _served(name, request)


@router.get("/static/{folder}/{name}")
async def static_in_folder(folder: Name, name: Name, request: Request) -> Response:
    """A file one folder down (``swagger_ui/``)."""
    return await _served(f"{folder}/{name}", request)


async def _served(path: str, request: Request) -> Response:
    response = await _files.get_response(path, request.scope)
    response.headers["Cache-Control"] = "public, max-age=300"
    return response


@router.get("/docs", response_class=HTMLResponse)
def docs() -> HTMLResponse:
    return HTMLResponse(DOCS_PAGE)
