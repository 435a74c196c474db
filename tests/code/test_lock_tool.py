"""tools/lock.py (`make lock`): an index it cannot read is a message naming the URL
and the fix, exit non-zero, never a traceback; it reads pip's default index from
no private pip module."""
import http.server
import socket
import subprocess
import sys
import threading

from tests.conftest import REPO

LOCK = REPO / "tools" / "lock.py"


def _lock(tmp_path, index_url):
    freeze = tmp_path / "freeze.txt"
    freeze.write_text("requests==2.32.3\n")
    return subprocess.run([sys.executable, str(LOCK), str(freeze), str(tmp_path / "lock.txt"),
                           "--index-url", index_url], capture_output=True, text=True, timeout=120)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_index_is_named_with_the_fix_not_a_traceback(tmp_path):
    url = f"http://127.0.0.1:{_closed_port()}/simple"
    done = _lock(tmp_path, url)
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert f"cannot read {url}/requests/" in done.stderr and "--index-url" in done.stderr
    assert not (tmp_path / "lock.txt").exists()


def test_an_index_without_the_package_or_the_json_api_is_named(tmp_path):
    """A real HTTP server: 404 for the package, then an HTML page instead of PEP 691 JSON."""
    class Index(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if "404" in self.server.mode:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.end_headers()
            self.wfile.write(b"<html>not json</html>")

        def log_message(self, *args):
            pass
    server = http.server.HTTPServer(("127.0.0.1", 0), Index)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/simple"
    try:
        server.mode = "404"
        done = _lock(tmp_path, url)
        assert done.returncode != 0 and "Traceback" not in done.stderr
        assert f"{url}/requests/ answered HTTP 404" in done.stderr
        server.mode = "html"
        done = _lock(tmp_path, url)
        assert done.returncode != 0 and "Traceback" not in done.stderr
        assert "did not answer with the JSON simple API" in done.stderr
    finally:
        server.shutdown()


def test_lock_imports_no_private_pip_module():
    assert "pip._internal" not in LOCK.read_text()
