"""The console's login gate and its write rights.

How pages use it
----------------
``ui/console.py`` calls :func:`require_login` once, before any page runs: a page never
renders for a session that has not logged in. :func:`ui.common.settings`, which every
page calls first, checks it again (:func:`ensure_logged_in`, silent once logged in):
Streamlit runs a file of ``ui/pages/`` on its own when its URL is asked for before the
console script first ran in the server process (the old ``pages/`` folder convention).

A page guards each button that changes state (start a flow run, promote, pause a
schedule, ...) with :func:`require_write`::

    if st.button("Promote") and require_write("promote version 3 of fraud_detector"):
        ...  # change the state

and may grey a button out with ``disabled=not can_change_state()``.

The rules are the management API's (``app/security.py``):

* the login takes the console password (``MLOPS_CONSOLE__PASSWORD``: viewing) or the
  management token (``MLOPS_SERVING__API_TOKEN``: viewing and every state change);
  a viewer can unlock the changes later by entering the token in the sidebar;
* secrets are compared in constant time;
* a wrong secret waits before its answer (``MLOPS_CONSOLE__LOGIN_DELAY_S``, doubled for
  each other failure of the last 5 minutes in this console process, up to 30 s), so that
  guessing is slow; a right one never waits;
* outside development a placeholder password (``change-me``) refuses to start: the page
  shows an error naming the setting and nothing else.

What the session holds (``st.session_state``) is the role and a fingerprint of the secret
it was granted by: when the secret in the settings changes, the session logs in again.
Tests log a session in with :func:`login_state` (``AppTest.session_state[k] = v``).
"""

from __future__ import annotations

import hashlib
import hmac
import threading
import time
from collections import deque
from typing import Literal

import streamlit as st

from mlops.settings import Settings
from ui.common import load_settings as current_settings

PLACEHOLDER = "change-me"
"""The default secret: accepted in development only."""

ROLE_KEY = "mlops_auth_role"
FINGERPRINT_KEY = "mlops_auth_fingerprint"

Role = Literal["viewer", "manager"]

FAILURE_WINDOW_S = 300.0
MAX_DELAY_S = 30.0


class LoginFailures:
    """The failed logins of this console process, all sessions together, over the last
    :data:`FAILURE_WINDOW_S` seconds: each one waits twice as long as the one before."""

    def __init__(self) -> None:
        self._times: deque[float] = deque()
        self._lock = threading.Lock()

    def record(self) -> int:
        """Count a failure now; the failures in the window, this one included."""
        now = time.monotonic()
        with self._lock:
            while self._times and self._times[0] <= now - FAILURE_WINDOW_S:
                self._times.popleft()
            self._times.append(now)
            return len(self._times)

    def clear(self) -> None:
        with self._lock:
            self._times.clear()


FAILURES = LoginFailures()


def failure_delay(failures: int, base_s: float) -> float:
    """Seconds the ``failures``-th failure of the window waits: ``base_s`` doubled for
    each earlier one, at most :data:`MAX_DELAY_S`."""
    if failures <= 0 or base_s <= 0:
        return 0.0
    return min(MAX_DELAY_S, base_s * 2.0 ** min(failures - 1, 30))


def _refused(settings: Settings) -> str:
    """Count a wrong secret, wait its delay, and say so (for the error shown)."""
    failures = FAILURES.record()
    delay = failure_delay(failures, settings.console.login_delay_s)
    if delay:
        with st.spinner("Checking …"):
            time.sleep(delay)
    if failures < 2:
        return ""
    following = failure_delay(failures + 1, settings.console.login_delay_s)
    return (
        f" {failures} failed attempts in the last {FAILURE_WINDOW_S / 60:.0f} minutes: "
        f"the next wrong one waits {following:.1f} s."
    )


def _fingerprint(secret: str) -> str:
    return hashlib.sha256(b"mlops-console:" + secret.encode()).hexdigest()


def _secrets(settings: Settings) -> tuple[str, str]:
    """(console password, management token)."""
    return (
        settings.console.password.get_secret_value(),
        settings.serving.api_token.get_secret_value(),
    )


def role_for(secret: str, settings: Settings) -> Role | None:
    """The role ``secret`` grants: ``manager`` for the management token, ``viewer`` for
    the console password, None for anything else (compared in constant time)."""
    password, token = _secrets(settings)
    given = secret.encode()
    if token and hmac.compare_digest(given, token.encode()):
        return "manager"
    if password and hmac.compare_digest(given, password.encode()):
        return "viewer"
    return None


def login_state(secret: str, settings: Settings) -> dict[str, str]:
    """The session-state entries of a session logged in with ``secret`` (for tests, and
    what the login form stores). Empty when the secret grants nothing."""
    role = role_for(secret, settings)
    if role is None:
        return {}
    return {ROLE_KEY: role, FINGERPRINT_KEY: _fingerprint(_granting_secret(role, settings))}


def _granting_secret(role: Role, settings: Settings) -> str:
    password, token = _secrets(settings)
    return token if role == "manager" else password


def current_role() -> Role | None:
    """The role of this session, if it is logged in with a secret the settings still hold."""
    stored = st.session_state.get(ROLE_KEY)
    if stored not in ("viewer", "manager"):
        return None
    role: Role = stored
    settings = current_settings()
    expected = _fingerprint(_granting_secret(role, settings))
    if not hmac.compare_digest(str(st.session_state.get(FINGERPRINT_KEY, "")), expected):
        return None
    return role


def placeholder_refusal(settings: Settings) -> str | None:
    """Why the console must not start with these settings, or None."""
    if settings.environment == "development":
        return None
    if settings.console.password.get_secret_value() == PLACEHOLDER:
        return (
            f"MLOPS_CONSOLE__PASSWORD is the placeholder {PLACEHOLDER!r} outside development "
            f"(MLOPS_ENVIRONMENT={settings.environment}): set a real password and restart "
            "the console."
        )
    if not settings.console.password.get_secret_value():
        return (
            "MLOPS_CONSOLE__PASSWORD is empty outside development: set a password and restart "
            "the console."
        )
    return None


def _store(secret: str, settings: Settings) -> Role | None:
    entries = login_state(secret, settings)
    for key, value in entries.items():
        st.session_state[key] = value
    return role_for(secret, settings)


def ensure_logged_in() -> None:
    """Stop the script with a login form unless this session is logged in (draws nothing
    once it is). Refuses to go on at all (an error naming the setting) when the password
    is a placeholder outside development. :func:`ui.common.settings` calls it, so every
    page is gated."""
    settings = current_settings()
    refusal = placeholder_refusal(settings)
    if refusal:
        st.error(f"The console refuses to start: {refusal}", icon=":material/lock:")
        st.stop()
    if current_role() is not None:
        return

    st.title("mlops console")
    with st.form("login"):
        secret = st.text_input(
            "Password or management token",
            type="password",
            help="The console password (MLOPS_CONSOLE__PASSWORD) lets you look; the "
            "management token (MLOPS_SERVING__API_TOKEN) also lets you change state.",
        )
        submitted = st.form_submit_button("Log in", type="primary")
    if settings.environment == "development" and (
        settings.console.password.get_secret_value() == PLACEHOLDER
    ):
        st.caption(
            f"Development: the password is the placeholder {PLACEHOLDER!r}; set "
            "MLOPS_CONSOLE__PASSWORD (and MLOPS_SERVING__API_TOKEN) for anything shared."
        )
    if submitted:
        if _store(secret, settings) is not None:
            st.rerun()
        waits = _refused(settings)
        st.error(
            "Wrong password or token: enter MLOPS_CONSOLE__PASSWORD to look, or "
            f"MLOPS_SERVING__API_TOKEN to also change state.{waits}"
        )
    st.stop()


def require_login() -> None:
    """The console's gate, before any page runs: :func:`ensure_logged_in`, then the
    sidebar (who is logged in, unlock changes, log out)."""
    ensure_logged_in()
    _sidebar(current_settings())


def _sidebar(settings: Settings) -> None:
    """Who is logged in, a way to unlock changes, and log out."""
    with st.sidebar:
        if current_role() == "manager":
            st.caption(":material/lock_open: logged in with the management token")
        else:
            st.caption(":material/visibility: logged in to look (no state changes)")
            with st.popover("Unlock changes"):
                token = st.text_input(
                    "Management token (MLOPS_SERVING__API_TOKEN)", type="password", key="unlock"
                )
                if st.button("Unlock", key="unlock_button"):
                    if role_for(token, settings) == "manager":
                        _store(token, settings)
                        st.rerun()
                    waits = _refused(settings)
                    st.error(f"That is not the management token (MLOPS_SERVING__API_TOKEN).{waits}")
        if st.button("Log out", key="logout"):
            for key in (ROLE_KEY, FINGERPRINT_KEY):
                st.session_state.pop(key, None)
            st.rerun()


def can_change_state() -> bool:
    """True when this session logged in with the management token (MLOPS_SERVING__API_TOKEN),
    the secret that the management API asks for every change."""
    return current_role() == "manager"


def require_write(action: str) -> bool:
    """Whether this session may ``action`` (a phrase: "start a run of train/fraud_detector").

    False, with an error saying what to do, unless it logged in with the management token.
    """
    if can_change_state():
        return True
    if current_role() is None:
        st.error(f"Cannot {action}: log in first (the console's login page).")
    else:
        st.error(
            f"Cannot {action}: changes need the management token. Unlock changes in the "
            "sidebar with MLOPS_SERVING__API_TOKEN (the same token as the management API)."
        )
    return False
