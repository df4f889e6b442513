"""groundex's Streamlit app: `groundex ui --workdir W` (or `streamlit run ui/app/main.py` with
GROUNDEX_WORKDIR set)."""

import streamlit as st

st.set_page_config(page_title="groundex", page_icon="🔎", layout="wide")

PAGES = [
    st.Page("pages/search.py", title="Search", icon="🔎", default=True),
    st.Page("pages/image.py", title="Image", icon="🖼️"),
    st.Page("pages/regions.py", title="Phrase → region", icon="🎯"),
    st.Page("pages/upload.py", title="Upload", icon="📤"),
    st.Page("pages/explore.py", title="Explore", icon="🗺️"),
    st.Page("pages/evaluation.py", title="Evaluation", icon="📈"),
    st.Page("pages/sql.py", title="SQL", icon="🗄️"),
]
st.navigation(PAGES).run()
