"""ui: the `groundex` CLI (and, later, the Streamlit app). Reads only the other packages' public APIs."""
