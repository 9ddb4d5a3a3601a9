"""Reads one cached token entry (stdin) the way Dify does, with the standard library only.

Dify (langgenius/dify, api/services/api_token_service.py) reads `api_token:{scope}:{token}` with
`ApiTokenCache._deserialize_token`: the bytes `null` are "no such token"; anything else goes to
`CachedApiToken.model_validate_json`, a pydantic v2 model with default settings, and a validation
error makes the entry count as absent. This script reproduces what that model accepts:

- a JSON object (anything else fails);
- seven required fields (no defaults: a missing one fails, even when it could be null):
  id, type, token: str; app_id, tenant_id: str or null; last_used_at, created_at: datetime or null;
- str fields take JSON strings only (pydantic v2 does not turn numbers into strings);
- datetimes: an ISO-8601 string (fraction and `Z` or offset allowed) or a number of Unix seconds;
- every other field is ignored (pydantic's default `extra='ignore'`).

Prints one JSON line: {"result": "negative"}, {"result": "invalid", "error": "..."} or
{"result": "token", "token": {the seven fields, datetimes in isoformat()}}.
"""
import json
import sys
from datetime import datetime, timezone

STRINGS = ("id", "type", "token")
NULLABLE_STRINGS = ("app_id", "tenant_id")
DATETIMES = ("last_used_at", "created_at")


class Invalid(Exception):
    pass


def as_datetime(name, value):
    if value is None:
        return None
    if isinstance(value, bool):
        raise Invalid(f"{name}: not a datetime")
    if isinstance(value, (int, float)):
        return datetime.fromtimestamp(value, tz=timezone.utc)
    if not isinstance(value, str):
        raise Invalid(f"{name}: not a datetime")
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as error:
        raise Invalid(f"{name}: {error}") from None


def validate(raw):
    try:
        data = json.loads(raw)
    except ValueError as error:
        raise Invalid(f"not JSON: {error}") from None
    if not isinstance(data, dict):
        raise Invalid("not an object")
    for name in STRINGS + NULLABLE_STRINGS + DATETIMES:
        if name not in data:
            raise Invalid(f"{name}: field required")
    token = {}
    for name in STRINGS:
        if not isinstance(data[name], str):
            raise Invalid(f"{name}: not a string")
        token[name] = data[name]
    for name in NULLABLE_STRINGS:
        if data[name] is not None and not isinstance(data[name], str):
            raise Invalid(f"{name}: not a string")
        token[name] = data[name]
    for name in DATETIMES:
        value = as_datetime(name, data[name])
        token[name] = None if value is None else value.isoformat()
    return token


def main():
    raw = sys.stdin.buffer.read().decode("utf-8")
    if raw == "null":
        print(json.dumps({"result": "negative"}))
        return
    try:
        print(json.dumps({"result": "token", "token": validate(raw)}))
    except Invalid as error:
        print(json.dumps({"result": "invalid", "error": str(error)}))


if __name__ == "__main__":
    main()
