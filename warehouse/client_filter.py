"""What a remote client's catalog filter may say (`groundex serve`'s `where`): a condition over the image's own
columns, built from comparisons, AND / OR / NOT, IN, BETWEEN, IS NULL, LIKE, CASE, casts and a short list of
functions whose cost grows with their input (no `repeat`, no `range`, no subquery, window or aggregate).

Every connection already refuses writes, other files and settings changes; what it cannot refuse is an expression
that allocates without bound (`length(repeat(key, 100000000))` takes all of a machine's memory, and DuckDB's
`memory_limit` does not cover strings being built). A person's own `--where` and the app's console keep DuckDB's
whole language; a server's clients get this one. The condition is parsed by DuckDB itself (`json_serialize_sql`),
so what is checked is exactly what would run.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import duckdb

from .errors import InputError

__all__ = ["check_client_condition", "CLIENT_FUNCTIONS"]

CLIENT_FUNCTIONS = frozenset({
    "~~", "!~~", "~~*", "!~~*",                                    # LIKE, NOT LIKE, ILIKE, NOT ILIKE
    "+", "-", "*", "/", "//", "%", "||",
    "lower", "upper", "lcase", "ucase", "trim", "ltrim", "rtrim", "length", "strlen", "len",
    "starts_with", "ends_with", "prefix", "suffix", "contains", "substring", "substr", "left", "right",
    "regexp_matches", "regexp_full_match",                         # RE2: time linear in the text
    "list_value", "list_has", "list_contains", "list_has_all", "list_has_any",
    "array_has", "array_contains", "array_has_all", "array_has_any",
    "abs", "round", "floor", "ceil", "least", "greatest", "ifnull", "nullif",
    "year", "month", "day", "date_part", "epoch",
})
_CLASSES = frozenset({"CONSTANT", "PARAMETER", "COLUMN_REF", "COMPARISON", "CONJUNCTION", "OPERATOR", "BETWEEN",
                      "CASE", "CAST", "TYPE", "FUNCTION"})


def check_client_condition(con: duckdb.DuckDBPyConnection, condition: str, columns: Iterable[str]) -> None:
    """Raises InputError unless `condition` (with `?` placeholders allowed) reads only `columns` through the
    constructs above. `con`: any connection (the parse runs no query)."""
    columns = {c.lower() for c in columns}
    statement = f"SELECT 1 FROM images WHERE ({condition})"
    try:
        parsed = json.loads(con.execute("SELECT json_serialize_sql(?)", [statement]).fetchall()[0][0])
    except duckdb.Error as e:
        raise InputError(f"bad filter {condition!r}: {str(e).splitlines()[0]}") from None
    if parsed.get("error"):
        raise InputError(f"bad filter {condition!r}: {parsed.get('error_message', 'not one condition')}")
    statements = parsed.get("statements") or []
    node = statements[0].get("node", {}) if len(statements) == 1 else {}
    if (node.get("type") != "SELECT_NODE" or node.get("modifiers") or node.get("group_expressions")
            or node.get("having") or node.get("qualify") or node.get("sample")
            or (node.get("cte_map") or {}).get("map") or node.get("where_clause") is None):
        raise InputError(f"a filter is one condition over the image's columns, not a query: {condition!r}")
    _check(node["where_clause"], columns, condition)


def _check(node: Any, columns: set[str], condition: str) -> None:
    if isinstance(node, list):
        for item in node:
            _check(item, columns, condition)
        return
    if not isinstance(node, dict):
        return
    kind = node.get("class")
    if kind is not None:
        if kind not in _CLASSES:
            what = {"SUBQUERY": "a subquery", "WINDOW": "a window function"}.get(kind, kind.lower())
            raise InputError(f"a filter here may not use {what}: {condition!r}")
        if kind == "COLUMN_REF":
            names = [n.lower() for n in node.get("column_names", [])]
            if len(names) != 1 or names[0] not in columns:
                raise InputError(f"a filter here reads these columns only: {', '.join(sorted(columns))} "
                                 f"(not {'.'.join(names)!r})")
        if kind == "FUNCTION":
            name = str(node.get("function_name", "")).lower()
            if name not in CLIENT_FUNCTIONS or node.get("schema") or node.get("catalog"):
                raise InputError(f"a filter here may not call {name}(); it may call: "
                                 f"{', '.join(sorted(f for f in CLIENT_FUNCTIONS if f.isidentifier()))}")
            if node.get("filter") is not None or node.get("distinct") or (node.get("order_bys") or {}).get("orders"):
                raise InputError(f"a filter here may not aggregate: {condition!r}")
    for value in node.values():
        _check(value, columns, condition)
