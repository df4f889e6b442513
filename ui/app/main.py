"""groundex's Streamlit app: `groundex ui --workdir W` (or `streamlit run ui/app/main.py` with
GROUNDEX_WORKDIR set)."""

import streamlit as st

st.set_page_config(page_title="groundex", page_icon=":material/search:", layout="wide")

PAGES = [
    st.Page("pages/search.py", title="Search", icon=":material/search:", default=True),
    st.Page("pages/image.py", title="Image", icon=":material/image:"),
    st.Page("pages/regions.py", title="Phrase → region", icon=":material/crop_free:"),
    st.Page("pages/upload.py", title="Upload", icon=":material/upload:"),
    st.Page("pages/explore.py", title="Explore", icon=":material/scatter_plot:"),
    st.Page("pages/evaluation.py", title="Evaluation", icon=":material/monitoring:"),
    st.Page("pages/sql.py", title="SQL", icon=":material/database:"),
]
st.navigation(PAGES).run()
