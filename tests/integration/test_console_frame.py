"""The console's frame: the login gate, write rights, settings errors and the page list.

Each test runs ``ui/console.py`` under Streamlit's ``AppTest`` in an empty home
(``mlops_home``) with the settings in the environment, as ``streamlit run`` would: as a
server does after its first run (``server_navigation``), and, for the gate, also as it
does before (a page file run on its own must be gated as well).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from mlops.settings import Settings
from tests.integration._console import console_process_env, server_navigation
from ui import auth
from ui.auth import FINGERPRINT_KEY, ROLE_KEY, login_state, placeholder_refusal, role_for

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
CONSOLE = str(ROOT / "ui" / "console.py")
PASSWORD = "console-test-password"
TOKEN = "console-test-token"
PAGES = [
    "Overview",
    "Datasets",
    "Features",
    "Training",
    "Models",
    "Experiments",
    "Monitoring",
    "Retraining",
]


@pytest.fixture(params=["server", "page files"])
def navigation(request: pytest.FixtureRequest) -> Iterator[str]:
    """Both ways Streamlit runs the console (see tests/integration/_console.py)."""
    if request.param == "server":
        with server_navigation():
            yield request.param
    else:
        with console_process_env():
            yield request.param


@pytest.fixture
def server() -> Iterator[None]:
    with server_navigation():
        yield


@pytest.fixture
def secrets(mlops_home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("MLOPS_CONSOLE__PASSWORD", PASSWORD)
    monkeypatch.setenv("MLOPS_SERVING__API_TOKEN", TOKEN)
    auth.FAILURES.clear()  # failed logins count across sessions of the process
    yield mlops_home
    auth.FAILURES.clear()


def console(page: str | None = None) -> AppTest:
    at = AppTest.from_file(CONSOLE, default_timeout=90)
    if page:
        at.switch_page(f"pages/{page}.py")
    return at


def log_in(at: AppTest, secret: str) -> AppTest:
    at.run()
    assert [t.value for t in at.title] == ["mlops console"]
    at.text_input[0].input(secret)
    return at.button[0].click().run()


def titles(at: AppTest) -> list[str]:
    return [t.value for t in at.title]


def errors(at: AppTest) -> list[str]:
    return [e.value for e in at.error]


def test_wrong_password_shows_no_page(navigation: str, secrets: Path) -> None:
    at = log_in(console("datasets"), "not-the-password")
    assert not at.exception
    assert titles(at) == ["mlops console"]
    assert any("Wrong password or token" in e for e in errors(at)), errors(at)
    assert not at.file_uploader  # the Datasets page never ran
    assert ROLE_KEY not in at.session_state


def test_wrong_secrets_wait_longer_each_time_and_a_right_one_goes_in(
    server: None, secrets: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLOPS_CONSOLE__LOGIN_DELAY_S", "0.2")
    waited = []
    for _ in range(3):  # each from a new session: the count is the console's, not a tab's
        started = time.monotonic()
        at = log_in(console(), "guess")
        waited.append(time.monotonic() - started)
        assert titles(at) == ["mlops console"] and ROLE_KEY not in at.session_state
    assert waited[2] >= 0.8 and waited[1] >= 0.4 and waited[0] >= 0.2  # 0.2, 0.4, 0.8 s
    assert any(
        "3 failed attempts in the last 5 minutes" in e and "waits 1.6 s" in e for e in errors(at)
    ), errors(at)

    at = log_in(console(), PASSWORD)  # the right secret is not held back
    assert titles(at) == ["Overview"] and at.session_state[ROLE_KEY] == "viewer"
    assert auth.failure_delay(40, 0.5) == auth.MAX_DELAY_S and auth.failure_delay(1, 0) == 0


def test_empty_password_is_refused(server: None, secrets: Path) -> None:
    at = log_in(console("datasets"), "")
    assert titles(at) == ["mlops console"] and errors(at)


def test_password_logs_in_to_look_only(server: None, secrets: Path) -> None:
    at = log_in(console(), PASSWORD)
    assert not at.exception, at.exception
    assert titles(at) == ["Overview"]  # the default page, under the console's frame
    assert at.session_state[ROLE_KEY] == "viewer"
    assert any("logged in to look" in c.value for c in at.sidebar.caption)
    at.switch_page("pages/training.py").run()
    assert titles(at) == ["Training"]
    start = next(b for b in at.button if b.label == "Start training")
    assert start.proto.disabled
    assert any("needs the management token" in c.value for c in at.caption)


def test_token_logs_in_with_write_rights(server: None, secrets: Path) -> None:
    at = log_in(console("training"), TOKEN)
    assert titles(at) == ["Overview"]  # a page asked for before logging in: the default
    at.switch_page("pages/training.py").run()
    assert titles(at) == ["Training"]
    assert at.session_state[ROLE_KEY] == "manager"
    start = next(b for b in at.button if b.label == "Start training")
    assert not start.proto.disabled


def test_viewer_unlocks_changes_with_the_token_and_logs_out(server: None, secrets: Path) -> None:
    at = log_in(console(), PASSWORD)
    at.sidebar.text_input(key="unlock").input("wrong").run()
    at.sidebar.button(key="unlock_button").click().run()
    assert any("not the management token" in e for e in errors(at))
    assert at.session_state[ROLE_KEY] == "viewer"

    at.sidebar.text_input(key="unlock").input(TOKEN).run()
    at.sidebar.button(key="unlock_button").click().run()
    assert at.session_state[ROLE_KEY] == "manager"
    assert any("management token" in c.value for c in at.sidebar.caption)

    at.sidebar.button(key="logout").click().run()
    assert titles(at) == ["mlops console"]
    assert ROLE_KEY not in at.session_state


def test_a_session_of_another_secret_must_log_in_again(navigation: str, secrets: Path) -> None:
    at = console("datasets")
    at.session_state[ROLE_KEY] = "manager"
    at.session_state[FINGERPRINT_KEY] = "0" * 64  # granted by a token no longer set
    at.run()
    assert titles(at) == ["mlops console"]


def test_placeholder_password_outside_development_refuses_to_start(
    navigation: str, mlops_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLOPS_ENVIRONMENT", "production")
    monkeypatch.setenv("MLOPS_SERVING__API_TOKEN", TOKEN)
    at = console()
    at.run()
    assert not at.exception
    assert len(errors(at)) == 1
    message = errors(at)[0]
    assert "refuses to start" in message and "MLOPS_CONSOLE__PASSWORD" in message
    assert "production" in message
    assert not at.text_input  # no login form: nothing can get in
    # ... and a logged-in session does not get around it
    at = console("datasets")
    for key, value in login_state(TOKEN, Settings()).items():
        at.session_state[key] = value
    at.run()
    assert titles(at) == [] and not at.file_uploader
    assert "MLOPS_CONSOLE__PASSWORD" in errors(at)[0]


def test_placeholder_token_outside_development_names_the_setting(
    server: None, mlops_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLOPS_ENVIRONMENT", "production")
    monkeypatch.setenv("MLOPS_CONSOLE__PASSWORD", PASSWORD)
    at = console()
    at.run()
    assert not at.exception
    assert len(errors(at)) == 1 and "MLOPS_SERVING__API_TOKEN" in errors(at)[0]
    assert not at.text_input


def test_production_with_real_secrets_logs_in(
    server: None, secrets: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLOPS_ENVIRONMENT", "production")
    at = log_in(console("datasets"), PASSWORD)
    assert titles(at) == ["Overview"], errors(at)
    assert at.switch_page("pages/datasets.py").run().title[0].value == "Datasets"


def test_development_placeholder_logs_in_and_says_so(server: None, mlops_home: Path) -> None:
    at = console("datasets")
    at.run()
    assert any("placeholder" in c.value for c in at.caption)
    at.text_input[0].input("change-me")
    at.button[0].click().run()
    # in development the placeholder token is the placeholder password: full rights
    assert titles(at) == ["Overview"] and at.session_state[ROLE_KEY] == "manager"


def test_roles_and_refusals_follow_the_management_api_rules() -> None:
    settings = Settings(
        console={"password": PASSWORD},  # type: ignore[arg-type]
        serving={"api_token": TOKEN},  # type: ignore[arg-type]
    )
    assert role_for(TOKEN, settings) == "manager"
    assert role_for(PASSWORD, settings) == "viewer"
    assert role_for(TOKEN + " ", settings) is None
    assert role_for("", settings) is None
    assert login_state("nope", settings) == {}
    assert placeholder_refusal(settings) is None
    production = Settings(environment="production", serving={"api_token": TOKEN})  # type: ignore[arg-type]
    refusal = placeholder_refusal(production)
    assert refusal is not None and "MLOPS_CONSOLE__PASSWORD" in refusal


def test_the_console_lists_every_page_of_the_issue() -> None:
    source = Path(CONSOLE).read_text()
    found = re.findall(r'\("(\w+)\.py", "(\w+)"', source)
    assert [title for _, title in found] == PAGES
    assert [file for file, _ in found] == [p.lower() for p in PAGES]
    missing = [
        f"ui/pages/{p.lower()}.py"
        for p in PAGES
        if not (ROOT / "ui/pages" / f"{p.lower()}.py").is_file()
    ]
    assert not missing, f"page files missing: {missing}"
    assert Settings().console.password.get_secret_value() == auth.PLACEHOLDER
