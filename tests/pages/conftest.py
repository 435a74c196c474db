"""Headless Chromium for the page tests: Debian's ``chromium`` (installed with
apt-get when missing; the tests skip, saying why, only when it cannot be), and
Graphviz's ``dot`` for the lineage graph's Graphviz layout.

``Browser.screenshot`` renders a page at 1400x2000 as a person's window would;
``Browser.measure`` loads a copy of the page with a small script appended that
writes the boxes of the elements asked for (``getBoundingClientRect``) into the DOM,
which ``--dump-dom`` then prints: the pages themselves carry no script."""
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

WIDTH, HEIGHT = 1400, 2000
TIMEOUT = 120


def _installed(program: str, package: str) -> str:
    """The program's path, installing its Debian package first if needed; "" with the
    reason in ``_installed.why`` when it cannot be installed."""
    found = shutil.which(program)
    if found:
        return found
    if not shutil.which("apt-get"):
        _installed.why[program] = f"{program} is not installed and there is no apt-get to install {package}"
        return ""
    prefix = []
    if os.geteuid() != 0:
        if not shutil.which("sudo"):
            _installed.why[program] = f"{program} is not installed; installing {package} needs root (no sudo)"
            return ""
        prefix = ["sudo", "-n"]
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(prefix + ["apt-get", "update"], capture_output=True, timeout=900, env=env)
    install = prefix + ["apt-get", "install", "-y", package]
    done = subprocess.run(install, capture_output=True, text=True, timeout=900, env=env)
    if done.returncode != 0:
        _installed.why[program] = f"`{' '.join(install)}` failed: {done.stderr.strip()[-300:]}"
        return ""
    return shutil.which(program) or ""


_installed.why = {}


class Browser:
    def __init__(self, program: str, work: Path):
        self.program, self.work = program, work

    def _run(self, *args: str) -> str:
        command = [self.program, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                   f"--user-data-dir={self.work / 'profile'}", f"--window-size={WIDTH},{HEIGHT}", *args]
        done = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT)
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stdout

    def screenshot(self, page: Path, png: Path) -> Path:
        png.parent.mkdir(parents=True, exist_ok=True)
        self._run(f"--screenshot={png}", page.resolve().as_uri())
        assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        return png

    def dump_dom(self, page: Path) -> str:
        return self._run("--dump-dom", page.resolve().as_uri())

    def measure(self, page: Path, selectors: dict) -> dict:
        """{name: [left, top, right, bottom] of the first element matching the CSS
        selector (None if none)} and "viewport": [width, height], as laid out."""
        probe = page.with_name(f".measure-{page.name}")
        script = ("<script>const q=%s;const out={viewport:[innerWidth,innerHeight]};for(const k in q){"
                  "const e=document.querySelector(q[k]);if(!e){out[k]=null;continue}const r=e.getBoundingClientRect();"
                  "out[k]=[r.left,r.top,r.right,r.bottom]}const p=document.createElement('pre');p.id='measured';"
                  "p.textContent=JSON.stringify(out);document.body.appendChild(p)</script>") % json.dumps(selectors)
        probe.write_text(page.read_text().replace("</body>", script + "</body>"))
        try:
            dom = self.dump_dom(probe)
        finally:
            probe.unlink()
        found = re.search(r'<pre id="measured">(.*?)</pre>', dom, re.S)
        assert found, dom[-2000:]
        return json.loads(found.group(1).replace("&quot;", '"'))


@pytest.fixture(scope="session")
def browser(tmp_path_factory) -> Browser:
    program = _installed("chromium", "chromium")
    if not program:
        pytest.skip(f"headless Chromium unavailable: {_installed.why['chromium']}")
    return Browser(program, tmp_path_factory.mktemp("chromium"))


@pytest.fixture(scope="session")
def graphviz_dot() -> str:
    program = _installed("dot", "graphviz")
    if not program:
        pytest.skip(f"Graphviz unavailable: {_installed.why['dot']}")
    return program
