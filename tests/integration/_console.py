"""Helpers of the console tests: ``ui/console.py`` under ``AppTest``, as the server runs it.

Streamlit keeps an old mode for apps with a ``pages/`` folder beside the main script
(``ui/pages/``): until ``st.navigation`` has been called once in the process, the URL
of a page file runs that file without the main script. A real server leaves that mode
on the console's first run; ``AppTest`` turns it back on before every run, so after
the first run it would run page files on their own (the pages are gated then too:
``ui.common.settings``, tested in ``test_console_frame.py``). :func:`server_navigation`
makes ``AppTest`` do what the server does after the first run: always run the console,
which picks the page through ``st.navigation``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import pytest
from streamlit.runtime.pages_manager import PagesManager
from streamlit.testing.v1 import AppTest
from streamlit.testing.v1 import app_test as app_test_module

from mlops.settings import Settings
from ui.auth import login_state

ROOT = Path(__file__).resolve().parents[2]
CONSOLE = str(ROOT / "ui" / "console.py")


class _ServerPagesManager(PagesManager):
    """A PagesManager as in a server whose console has run once: no ``pages/`` mode."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        PagesManager.uses_pages_directory = False


CONSOLE_ENV = ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT")
"""What ``ui/console.py`` sets in its process: put back after a test runs it in this one."""


@contextmanager
def console_process_env() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as patch:
        for name in CONSOLE_ENV:
            patch.delenv(name, raising=False)
        yield


@contextmanager
def server_navigation() -> Iterator[None]:
    try:
        with console_process_env(), pytest.MonkeyPatch.context() as patch:
            patch.setattr(app_test_module, "PagesManager", _ServerPagesManager)
            yield
    finally:
        PagesManager.uses_pages_directory = None


def console(page: str | None = None, *, secret: str | None = None) -> AppTest:
    """The console, on ``pages/<page>.py`` when given, logged in with ``secret`` when given
    (the settings of the environment decide what it grants)."""
    at = AppTest.from_file(CONSOLE, default_timeout=120)
    if secret is not None:
        entries = login_state(secret, Settings())
        assert entries, "that secret logs nobody in"
        for key, value in entries.items():
            at.session_state[key] = value
    if page:
        at.switch_page(f"pages/{page}.py")
    return at


def texts(elements: object) -> list[str]:
    """The ``value`` of each element of an AppTest element list."""
    return [str(e.value) for e in elements]  # type: ignore[attr-defined]


TOKEN = "console-test-token"
PASSWORD = "console-test-password"


def prefect_url() -> str:
    """The session's Prefect test API (the ``prefect_api`` fixture sets it)."""
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    assert url, "the prefect_api fixture sets PREFECT_API_URL"
    return str(url)


def platform_env(monkeypatch: pytest.MonkeyPatch, *, prefect: bool = True) -> Settings:
    """Secrets (and the session's Prefect API) in the environment, as ``mlops up`` sets
    them for the console; the home's folders made. Call after ``mlops_home``."""
    monkeypatch.setenv("MLOPS_SERVING__API_TOKEN", TOKEN)
    monkeypatch.setenv("MLOPS_CONSOLE__PASSWORD", PASSWORD)
    if prefect:
        monkeypatch.setenv("MLOPS_PREFECT__API_URL", prefect_url())
    settings = Settings()
    settings.ensure_home()
    return settings


def delete_flow_runs(ids: list[str]) -> None:
    """Delete flow runs a test created (so no runner of a later test picks them up)."""
    from uuid import UUID

    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        for flow_run_id in ids:
            with suppress(ObjectNotFound):
                client.delete_flow_run(UUID(flow_run_id))
