"""``anydistill serve``: a local web demo of one model (depth, semantic or promptable) in the browser.

- :mod:`anydistill.serve.app` -- the FastAPI app (:func:`create_app`): the page and its JSON endpoints;
- :mod:`anydistill.serve.server` -- :func:`serve`: load a checkpoint, bind, run uvicorn quietly;
- :mod:`anydistill.serve.protocol` -- what a request may hold (:class:`ServeLimits`, the ``/segment``
  body) and :class:`RequestError`, the one-line 4xx answer;
- :mod:`anydistill.serve.images` -- uploaded bytes to an RGB image (checked), pictures back out;
- :mod:`anydistill.serve.tasks` -- what each task answers, over :class:`~anydistill.inference.Predictor`
  and :class:`~anydistill.promptable.SamPredictor` (no inference of its own);
- :mod:`anydistill.serve.sessions` -- the bounded cache of promptable images' embeddings;
- ``static/`` -- the page (plain HTML, JS and CSS: no build step, nothing fetched from outside).

Needs the ``serve`` extra (FastAPI, uvicorn, python-multipart); the rest of the library does not.
"""

from anydistill.errors import ConfigError

try:
    import fastapi  # noqa: F401
    import uvicorn  # noqa: F401
except ImportError as exc:  # the optional [serve] extra
    raise ConfigError(
        f"anydistill serve needs {exc.name or 'fastapi'}: pip install 'anydistill[serve]'"
    ) from None

from anydistill.serve.app import create_app  # noqa: E402
from anydistill.serve.protocol import RequestError, ServeLimits  # noqa: E402
from anydistill.serve.server import serve  # noqa: E402

__all__ = ["RequestError", "ServeLimits", "create_app", "serve"]
