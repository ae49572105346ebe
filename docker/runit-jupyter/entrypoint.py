"""Session entrypoint: read the session config from stdin, write Jupyter's config, exec Jupyter.

The agent writes ONE JSON line on the container's stdin (attach, then close):
  {"token": "...", "baseUrl": "/s/<id>/", "allowOrigin": "http://...", "socket": "/run/runit/jupyter.sock"}
The token therefore never appears in `docker inspect` (Env, Args, Cmd) nor in `ps`.
With "socket" (relay mode) Jupyter listens on that Unix socket only, in the directory the agent
mounts at /run/runit, and on no TCP port; without it, on port 8888 (cloudflared mode).
"""
import json
import os
import pwd
import re
import sys

print(f"Running as: {pwd.getpwuid(os.getuid()).pw_name}", flush=True)

line = sys.stdin.readline()
try:
    cfg = json.loads(line)
except ValueError:
    print("runit: no session config on stdin", file=sys.stderr, flush=True)
    sys.exit(64)

token = cfg.get("token", "")
base_url = cfg.get("baseUrl", "/")
allow_origin = cfg.get("allowOrigin", "")
socket_path = cfg.get("socket", "")
if not re.fullmatch(r"[A-Za-z0-9_-]{16,256}", token):
    print("runit: invalid token", file=sys.stderr, flush=True)
    sys.exit(64)
if not re.fullmatch(r"/(s/[0-9a-f-]{36}/)?", base_url):
    print("runit: invalid base url", file=sys.stderr, flush=True)
    sys.exit(64)
if allow_origin and not re.fullmatch(r"https?://[A-Za-z0-9.:\[\]-]+", allow_origin):
    print("runit: invalid allow_origin", file=sys.stderr, flush=True)
    sys.exit(64)
if socket_path not in ("", "/run/runit/jupyter.sock"):
    print("runit: invalid socket", file=sys.stderr, flush=True)
    sys.exit(64)

os.umask(0o077)
for var in ("JUPYTER_CONFIG_DIR", "JUPYTER_DATA_DIR", "JUPYTER_RUNTIME_DIR", "IPYTHONDIR"):
    os.makedirs(os.environ[var], exist_ok=True)

config = {
    "NotebookApp": {
        "token": token,
        "password": "",
        "ip": "0.0.0.0",
        "port": 8888,
        "port_retries": 0,
        "open_browser": False,
        "base_url": base_url,
        "allow_origin": allow_origin,
        "allow_remote_access": True,
        "notebook_dir": "/workspace",
        "trust_xheaders": False,
        "quit_button": False,
    }
}
if socket_path:
    # Only the agent (the directory's other side) can reach it: mode 0600, owned by jupyteruser.
    config["NotebookApp"]["sock"] = socket_path
    config["NotebookApp"]["sock_mode"] = "0600"
path = os.path.join(os.environ["JUPYTER_CONFIG_DIR"], "jupyter_notebook_config.json")
with open(path, "w", encoding="utf-8") as f:
    json.dump(config, f)
with open(os.path.join(os.environ["JUPYTER_RUNTIME_DIR"], "runit-base-url"), "w", encoding="utf-8") as f:
    f.write(base_url)
with open(os.path.join(os.environ["JUPYTER_RUNTIME_DIR"], "runit-socket"), "w", encoding="utf-8") as f:
    f.write(socket_path)

devnull = os.open(os.devnull, os.O_RDONLY)
os.dup2(devnull, 0)
os.execvp("python3", ["python3", "-m", "notebook"])
