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

__all__ = ["check_client_condition", "CLIENT_FUNCTIONS", "MAX_CHARS"]

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
# Cast targets: scalars, and lists of them (a fixed-size ARRAY type allocates its size for every row up front).
CAST_TYPES = frozenset({"varchar", "text", "string", "bigint", "int8", "integer", "int", "int4", "smallint", "int2",
                        "tinyint", "hugeint", "ubigint", "uinteger", "double", "float8", "float", "float4", "real",
                        "decimal", "numeric", "boolean", "bool", "date", "time", "timestamp", "timestamptz",
                        "interval", "list"})
MAX_CHARS = 2000       # a filter's length
MAX_NODES = 400        # expressions in it
MAX_ARGUMENTS = 64     # arguments of one function, items of one IN list (a list literal of 50,000 keys is memory)


def check_client_condition(con: duckdb.DuckDBPyConnection, condition: str, columns: Iterable[str],
                           parameters: bool = True) -> None:
    """Raises InputError unless `condition` reads only `columns` through the constructs above, within the size
    limits. `parameters`: whether `?` placeholders may appear (the server's own bound parts; never a client's
    text). `con`: any connection (the parse runs no query)."""
    shown = condition if len(condition) <= 120 else condition[:117] + "..."
    if len(condition) > MAX_CHARS:
        raise InputError(f"a filter here is at most {MAX_CHARS:,} characters, not {len(condition):,}")
    columns = {c.lower() for c in columns}
    statement = f"SELECT 1 FROM images WHERE ({condition})"
    try:
        parsed = json.loads(con.execute("SELECT json_serialize_sql(?)", [statement]).fetchall()[0][0])
    except duckdb.Error as e:
        raise InputError(f"bad filter {shown!r}: {str(e).splitlines()[0][:200]}") from None
    if parsed.get("error"):
        raise InputError(f"bad filter {shown!r}: {str(parsed.get('error_message', 'not one condition'))[:200]}")
    statements = parsed.get("statements") or []
    node = statements[0].get("node", {}) if len(statements) == 1 else {}
    if (node.get("type") != "SELECT_NODE" or node.get("modifiers") or node.get("group_expressions")
            or node.get("having") or node.get("qualify") or node.get("sample")
            or (node.get("cte_map") or {}).get("map") or node.get("where_clause") is None):
        raise InputError(f"a filter is one condition over the image's columns, not a query: {shown!r}")
    count = [0]
    _check(node["where_clause"], columns, shown, parameters, count)


def _check(node: Any, columns: set[str], condition: str, parameters: bool, count: list[int]) -> None:
    if isinstance(node, list):
        if len(node) > MAX_ARGUMENTS:
            raise InputError(f"a filter here takes at most {MAX_ARGUMENTS} items in one list or call: {condition!r}")
        for item in node:
            _check(item, columns, condition, parameters, count)
        return
    if not isinstance(node, dict):
        return
    kind = node.get("class")
    if kind is not None:
        count[0] += 1
        if count[0] > MAX_NODES:
            raise InputError(f"a filter here has at most {MAX_NODES} terms: {condition!r}")
        if kind not in _CLASSES or (kind == "PARAMETER" and not parameters):
            what = {"SUBQUERY": "a subquery", "WINDOW": "a window function",
                    "PARAMETER": "placeholders"}.get(kind, kind.lower())
            raise InputError(f"a filter here may not use {what}: {condition!r}")
        if kind == "TYPE" and str(node.get("type_name", "")).lower() not in CAST_TYPES:
            raise InputError(f"a filter here may cast to scalar types and lists only, not {node.get('type_name')}: "
                             f"{condition!r}")
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
        _check(value, columns, condition, parameters, count)
