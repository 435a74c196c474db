"""The compose file's monitor service reads the proxy's request logs and the pipeline's
outputs at the paths core.config's defaults give (no Docker engine needed)."""
import yaml

from tests.conftest import REPO
from core import config


def test_monitor_service_matches_settings():
    s = config.load({}, environ={})
    services = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]
    monitor, proxy = services["monitor"], services["proxy"]
    command = monitor["command"]
    assert command[:2] == ["tfxops", "monitor"] and "--watch" in command
    home = command[command.index("--home") + 1]
    assert home == s.home
    mounts = dict(v.split(":")[:2] for v in monitor["volumes"])
    inside = mounts["./" + s.home]
    assert inside == f"{monitor['working_dir']}/{s.home}"      # relative MLMD URIs resolve
    # the proxy writes its logs where the monitor's default request log dir is
    proxy_logs = {v.split(":")[1]: v.split(":")[0] for v in proxy["volumes"]}
    assert proxy_logs["/logs"] == "./" + str(s.request_logs_path)
    assert monitor["image"] == proxy["image"]
