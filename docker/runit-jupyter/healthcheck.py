"""HEALTHCHECK: healthy when Jupyter answers HTTP (its login page needs no token), on its Unix
socket in relay mode, on port 8888 otherwise."""
import http.client
import os
import socket
import sys

runtime = os.environ["JUPYTER_RUNTIME_DIR"]


def read(name, default):
    try:
        with open(os.path.join(runtime, name), encoding="utf-8") as f:
            return f.read().strip() or default
    except OSError:
        sys.exit(1)


class UnixConnection(http.client.HTTPConnection):
    def __init__(self, path):
        super().__init__("127.0.0.1", 8888, timeout=2)
        self.path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(2)
        self.sock.connect(self.path)


base = read("runit-base-url", "/")
sock = read("runit-socket", "")
try:
    conn = UnixConnection(sock) if sock else http.client.HTTPConnection("127.0.0.1", 8888, timeout=2)
    conn.request("GET", f"{base}login")
    conn.getresponse()  # an HTTP answer of any status means the server is up
except Exception:
    sys.exit(1)
sys.exit(0)
