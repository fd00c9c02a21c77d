"""Flowscope's dashboard: navigation and the shared controls only; each page is in app_pages/.

Run it with `flowscope dashboard`.
"""

import streamlit as st

from dashboard import controls, queries

st.set_page_config(page_title="Flowscope", page_icon=":material/hub:", layout="wide")
queries.read_settings()  # once per run, for every query of it (see queries.read_settings)
PAGES = [  # (file, title, icon, url path)
    ("flow_map", "Flow map", "account_tree", ""),
    ("lag", "Lag", "hourglass_top", "lag"),
    ("retries", "Retries & dead letters", "replay", "retries"),
    ("flows", "Flow explorer", "search", "flows"),
    ("latency", "Latency", "timer", "latency"),
    ("propagation", "Propagation", "conversion_path", "propagation"),
]
page = st.navigation([
    st.Page(f"app_pages/{name}.py", title=title, icon=f":material/{icon}:",
            url_path=path or None, default=not path)
    for name, title, icon, path in PAGES])
controls.render_sidebar()
page.run()
