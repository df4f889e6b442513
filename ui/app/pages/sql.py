"""SQL: a read-only console on the catalog (no writes, no ATTACH, no file access, time and row limits)."""

import streamlit as st

from ui.app import resources
from ui.app.console import MAX_ROWS, TIME_LIMIT_S

workdir = resources.workdir()
st.title("SQL")
st.caption(f"Read-only queries on the catalog (DuckDB). No writes, ATTACH or file access; at most {MAX_ROWS:,} rows "
           f"and {TIME_LIMIT_S:g} s per query. Tables: images, captions, phrases, boxes, entities, tags, regions, "
           "models, indexes, embeddings, runs, rejects.")
sql = st.text_area("query", key="sql_query", height=140,
                   value="SELECT split, count(*) AS images FROM images GROUP BY split ORDER BY images DESC")
if st.button("Run", type="primary", key="sql_run") or sql:
    try:
        result = resources.console(str(workdir.root)).run(sql)
    except (ValueError, TimeoutError) as e:
        st.error(str(e))
    else:
        st.dataframe([dict(zip(result.columns, row, strict=True)) for row in result.rows], hide_index=True,
                     width="stretch")
        st.caption(f"{len(result.rows):,} rows{' (cut at the limit)' if result.truncated else ''} in "
                   f"{result.seconds * 1000:.0f} ms")
