"""The Streamlit app (`groundex ui`). `main.py` is the entry point streamlit runs; the pages call only the
public APIs of warehouse/, indexer/, grounding/ and heads/. Logic that needs no Streamlit lives in
`console.py` (the read-only SQL console) and `data.py` (thumbnails, overlays, statistics), so tests
reach it directly."""
