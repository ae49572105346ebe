"""HEALTHCHECK: healthy when Jupyter answers HTTP on port 8888 (its login page needs no token)."""
import os
import sys
import urllib.error
import urllib.request

try:
    with open(os.path.join(os.environ["JUPYTER_RUNTIME_DIR"], "runit-base-url"), encoding="utf-8") as f:
        base = f.read().strip() or "/"
except OSError:
    sys.exit(1)
try:
    urllib.request.urlopen(f"http://127.0.0.1:8888{base}login", timeout=2)
except urllib.error.HTTPError:
    pass  # an HTTP answer of any status means the server is up
except Exception:
    sys.exit(1)
sys.exit(0)
