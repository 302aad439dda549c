#!/bin/sh
# Runs the compiled greet on a spare port and checks both of its answers.
set -eu
GREET_RELEASE=v0-test PORT=18089 dist/greet &
server=$!
trap 'kill $server' EXIT
python3 - <<'PY'
import json, time, urllib.request
for attempt in range(50):
    try:
        health = urllib.request.urlopen("http://127.0.0.1:18089/health").read()
        break
    except OSError:
        time.sleep(0.1)
assert health == b"ok", health
answer = json.load(urllib.request.urlopen("http://127.0.0.1:18089/"))
assert answer == {"app": "greet", "release": "v0-test"}, answer
print("greet answers", answer)
PY
