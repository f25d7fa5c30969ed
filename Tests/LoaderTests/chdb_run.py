"""Runs SQL statements in chDB (current ClickHouse, in process) for ChDBTests.

Usage: chdb_run.py DATA_DIR [CONFIG_FILE] < statements.json
Reads a JSON list of statements; prints one JSON object per statement:
{"ok": true, "result": "<TabSeparated>"} or {"ok": false, "error": "<message>"}.
"""
import json
import sys

from chdb import session

path = sys.argv[1]
if len(sys.argv) > 2:
    path += "?config-file=" + sys.argv[2]
s = session.Session(path)
for statement in json.load(sys.stdin):
    try:
        print(json.dumps({"ok": True, "result": str(s.query(statement, "TSV"))}))
    except Exception as error:  # chDB raises its own exception type per version
        print(json.dumps({"ok": False, "error": str(error)}))
    sys.stdout.flush()
