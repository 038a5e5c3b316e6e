"""The Streamlit console: one page per concern under ``ui/pages/``.

Run it with ``streamlit run ui/console.py`` (``mlops up`` does, with the stack's
settings in the environment). Pages read MLflow and the Prefect API through the
``mlops`` library and the settings (``MLOPS_*``); nothing is kept in the console itself.
"""

import streamlit as st

st.set_page_config(page_title="mlops console", page_icon=":material/hub:", layout="wide")

pages = [
    st.Page("pages/models.py", title="Models", icon=":material/model_training:", default=True),
]
st.navigation(pages).run()
