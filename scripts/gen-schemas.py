#!/usr/bin/env python3
"""Writes schemas/<event type>.json: one JSON Schema (draft 2020-12) per event type.

The common blocks are inlined so each file stands alone for a SIEM to load. Run this after
changing an event's fields; the test suite validates every event it produces against these.
"""
import json
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent / "schemas"
UUID = "^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$"
TIME = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$"
S = {"type": "string"}
STRS = {"type": "array", "items": {"type": "string"}}
U32 = {"type": "integer", "minimum": 0, "maximum": 4294967295}

COMMON = {
    "ei": {"type": "integer", "minimum": 0, "description": "Event index within the session: 0, then strictly increasing."},
    "uid": {"type": "string", "pattern": UUID, "description": "UUIDv4, unique per event."},
    "time": {"type": "string", "pattern": TIME, "description": "RFC 3339, UTC, milliseconds."},
    "cluster_name": S,
    "user": {"type": "string", "description": "The person or program dbtape identified."},
    "aws_role_arn": S,
    "sid": {"type": "string", "pattern": UUID, "description": "Session id."},
    "db_service": {"type": "string", "description": "The database's name in dbtape's config."},
    "db_protocol": {"enum": ["postgres", "mongodb", "dynamodb", "review", "dbtape"]},
    "db_uri": S,
    "db_name": S,
    "db_user": S,
    "db_labels": {"type": "object", "additionalProperties": {"type": "string"}},
    "db_aws_region": S,
    "db_type": S,
    "redacted": {"const": True, "description": "dbtape: secrets in the captured text were masked before recording."},
    "truncated": {
        "type": "array",
        "description": "dbtape: captured text stored cut at recording.max_query_bytes, with the full text's length and SHA-256.",
        "items": {
            "type": "object",
            "properties": {"field": S, "bytes": {"type": "integer", "minimum": 0},
                           "sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"}},
            "required": ["field", "bytes", "sha256"],
            "additionalProperties": False,
        },
    },
}
CLASS = {"enum": ["READ", "WRITE", "FUNCTION", "ROLE", "DDL", "MISC", "MISC_SET"]}
# Derived from the recorded statement when the event is exported (not stored; `export --raw`
# leaves them out), so they always agree with the signed statement.
DERIVED = {
    "db_statement_class": {**CLASS, "description": "dbtape, derived on export: the statement's pgaudit class; of several statements, the strongest (ROLE, DDL, WRITE, FUNCTION, READ, MISC_SET, MISC)."},
    "db_statement_classes": {"type": "array", "items": CLASS, "minItems": 2,
                             "description": "dbtape, derived on export: every class, strongest first, when the text held statements of several classes."},
    "db_tables": {**STRS, "description": "dbtape, derived on export: the tables (PostgreSQL, DynamoDB) or collection (MongoDB) the statement touched; unquoted PostgreSQL names lower-cased."},
    "db_query_fingerprint": {"type": "string", "pattern": "^[0-9a-f]{16}$",
                             "description": "dbtape, derived on export: libpg_query's fingerprint, equal for statements of one shape with different constants (PostgreSQL only)."},
}
REQUIRED = ["ei", "event", "uid", "code", "time", "sid", "db_protocol", "db_uri"]
STATUS = {"success": {"type": "boolean"}, "error": S, "message": S}

EVENTS = [
    ("db.session.start", ["TDB00I", "TDB00W"], "A session was opened (TDB00I) or refused (TDB00W).",
     {**STATUS, "namespace": S, "server_id": S, "server_hostname": S, "server_addr": S, "server_version": S,
      "addr.local": S, "addr.remote": S, "user_agent": S, "postgres_pid": U32,
      "upstream_reused": {"type": "boolean", "description": "dbtape, on a pooled PostgreSQL database only: whether the upstream connection (backend postgres_pid) served an earlier client session."}},
     ["server_id", "success"]),
    ("db.session.end", ["TDB01I"], "A session ended.",
     {"addr.local": S, "addr.remote": S,
      "session_start": {"type": "string", "pattern": TIME}, "session_stop": {"type": "string", "pattern": TIME},
      "rebuilt": {"const": True, "description": "dbtape: the proxy died before it could record this end; crash recovery rebuilt it from the session's last recorded event, and it is signed in the manifest, not chained in the recording."}},
     ["session_start", "session_stop"]),
    ("db.session.query", ["TDB02I"], "A query or command the client sent.",
     {"success": {"const": True}, "error": S, "message": S, "db_query": S, "db_query_parameters": STRS, **DERIVED},
     ["db_query", "success"]),
    ("db.session.query.failed", ["TDB02W"], "A query or command the proxy refused.",
     {"success": {"const": False}, "error": S, "message": S, "db_query": S, "db_query_parameters": STRS, **DERIVED},
     ["db_query", "success"]),
    ("db.session.result", ["TDB10I"], "The database's answer to a query: success with rows affected, or its error.",
     {**STATUS, "affected_records": {"type": "integer", "minimum": 0},
      "query_ei": {"type": "integer", "minimum": 0, "description": "dbtape: ei of the query this result answers."}},
     ["success"]),
    ("db.session.malformed_packet", ["TDB06I"], "A packet the proxy could not parse; the connection was closed.",
     {"payload": {"type": "string", "contentEncoding": "base64"}}, []),
    ("db.session.postgres.statements.parse", ["TPG00I"], "Extended protocol Parse.",
     {"statement_name": S, "query": S, **DERIVED}, ["statement_name", "query"]),
    ("db.session.postgres.statements.bind", ["TPG01I"], "Extended protocol Bind.",
     {"statement_name": S, "portal_name": S, "parameters": STRS,
      "parameter_formats": {"type": "array", "items": {"type": "integer", "minimum": -32768, "maximum": 32767},
                            "description": "dbtape: each parameter's format: 0 text, 1 binary (recorded as base64), -1 NULL; any other is a format code the client sent and the server refuses. Absent when every parameter is text and none is NULL."},
      "parameter_types": {"type": "array", "items": U32,
                          "description": "dbtape: the statement's parameter type OIDs when it was bound, as the driver declared them in Parse or the server described them (0: not known). Absent when the proxy saw neither."},
      "parameter_values": {**STRS, "description": "dbtape, derived on export: each parameter as psql would show the literal, binary values decoded by their type (`42`, `'O''Brien'`, `'\\x00ff'`, NULL); a value that does not decode is shown as `[base64 <type>] <base64>`."}},
     ["statement_name", "portal_name", "parameters"]),
    ("db.session.postgres.statements.execute", ["TPG02I"], "Extended protocol Execute.",
     {"portal_name": S}, ["portal_name"]),
    ("db.session.postgres.statements.close", ["TPG03I"], "Extended protocol Close of a statement or portal.",
     {"statement_name": S, "portal_name": S}, ["statement_name", "portal_name"]),
    ("db.session.postgres.function", ["TPG04I"], "Legacy FunctionCall.",
     {"function_oid": U32, "function_args": STRS}, ["function_oid"]),
    ("db.session.dynamodb.request", ["TDY01I", "TDY01E"], "A DynamoDB HTTP request (TDY01E: it never round-tripped).",
     {"status_code": U32, "path": S, "raw_query": S, "method": S, "target": S, "body": {"type": "object"}, **DERIVED},
     ["status_code"]),
    ("dbtape.recording.gap", ["DTP01W"], "best_effort mode: events that could not be recorded.",
     {"success": {"const": False}, "error": S, "lost_events": {"type": "integer", "minimum": 1},
      "lost_from": {"type": "string", "pattern": TIME, "description": "When the first lost event happened."},
      "lost_until": {"type": "string", "pattern": TIME, "description": "When the last lost event happened."}},
     ["lost_events", "success"]),
    ("session.recording.access", ["T2012I"],
     "The review console: a reviewer looked at recordings. Written to a reviewer-access recording (db_protocol \"review\", user: the reviewer), signed and chained like any session.",
     {"success": {"type": "boolean"}, "error": S, "addr.remote": S,
      "action": {"enum": ["login", "logout", "sessions.list", "session.view", "session.steps", "session.event", "session.follow", "search", "export"],
                 "description": "dbtape: what the reviewer did."},
      "session_id": {"type": "string", "description": "The session looked at; absent for a list or a search."},
      "message": {"type": "string", "description": "dbtape: the filters, search or event range asked for."}},
     ["action", "success"]),
    ("dbtape.config.reload", ["DTP02I", "DTP02W"],
     "dbtape: the proxy read its configuration again (SIGHUP, `dbtape reload`). DTP02I: applied to new connections; DTP02W: rejected whole, the running configuration stays. Written to a recording of its own (db_protocol \"dbtape\"), signed and chained like any session.",
     {"success": {"type": "boolean"},
      "message": {"type": "string", "description": "dbtape: what changed and what waits for a restart, or every error found."}},
     ["success", "message"]),
]


def main():
    ROOT.mkdir(exist_ok=True)
    for event, codes, description, extra, required in EVENTS:
        props = dict(COMMON)
        props["event"] = {"const": event}
        props["code"] = {"enum": codes}
        props.update(extra)
        schema = {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "$id": f"https://dbtape.dev/schemas/{event}.json",
            "title": event,
            "description": description,
            "type": "object",
            "properties": props,
            "required": REQUIRED + required,
            "additionalProperties": False,
        }
        (ROOT / f"{event}.json").write_text(json.dumps(schema, indent=2) + "\n")


if __name__ == "__main__":
    main()
