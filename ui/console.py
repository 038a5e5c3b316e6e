"""The Streamlit console: the platform in one place, one page per concern.

Run it with ``streamlit run ui/console.py`` (``mlops up`` does, with the stack's
settings in the environment). The login gate (:mod:`ui.auth`) runs first, on every
rerun, so no page renders for a session that has not logged in; then ``st.navigation``
runs the chosen page from ``ui/pages/``. Pages read MLflow, the feature store, the
request log and the Prefect API through the ``mlops`` library and the settings
(``MLOPS_*``, :mod:`ui.common`); nothing is kept in the console itself.
"""

import os
import sys
from pathlib import Path

# Pages import ``ui.common`` / ``ui.auth``: the checkout must be importable whatever the
# working directory (Streamlit puts only this script's folder on the path).
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# A person waits on each page: an MLflow server that is down should be an error within
# seconds, not after the client's retries for rate limits (minutes). Set them to override.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "15")

import streamlit as st  # noqa: E402

from ui.auth import current_role, ensure_logged_in, require_login  # noqa: E402

PAGES_DIR = Path(__file__).resolve().parent / "pages"

# (file under ui/pages/, title, icon); the first is the default page.
PAGES = [
    ("overview.py", "Overview", ":material/dashboard:"),
    ("datasets.py", "Datasets", ":material/dataset:"),
    ("features.py", "Features", ":material/table_chart:"),
    ("training.py", "Training", ":material/model_training:"),
    ("models.py", "Models", ":material/deployed_code:"),
    ("experiments.py", "Experiments", ":material/science:"),
    ("monitoring.py", "Monitoring", ":material/monitoring:"),
    ("retraining.py", "Retraining", ":material/autorenew:"),
]


def _missing(file: str) -> st.Page:
    """A page that says its file is missing (a broken checkout), instead of no console."""

    def render() -> None:
        st.error(
            f"The page file ui/pages/{file} is missing from this checkout: restore it "
            "(git checkout ui/pages) or reinstall the platform."
        )

    return st.Page(render, title=file.removesuffix(".py").title(), url_path=file[:-3])


def pages() -> list[st.Page]:
    found = []
    for index, (file, title, icon) in enumerate(PAGES):
        path = PAGES_DIR / file
        if not path.is_file():
            found.append(_missing(file))
            continue
        found.append(st.Page(str(path), title=title, icon=icon, default=index == 0))
    return found


st.set_page_config(page_title="mlops console", page_icon=":material/hub:", layout="wide")
if current_role() is None:
    # Until the session logs in, the login form is the only page: whatever URL was asked
    # for, nothing else runs (a page file run on its own is gated too: ui.common.settings).
    login = st.Page(ensure_logged_in, title="Log in", icon=":material/lock:", url_path="login")
    st.navigation([login], position="hidden").run()
else:
    require_login()  # the placeholder refusal, then the sidebar: who, unlock, log out
    st.navigation(pages()).run()
