"""ui: the front doors, the `groundex` CLI (`ui/cli`) and the Streamlit app (`ui/app`). They call the other
packages and hold no logic of their own."""
