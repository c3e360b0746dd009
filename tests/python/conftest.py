"""End-to-end fixtures: a real `sluice run` subprocess on free loopback ports.

`start_gateway(config)` writes a config to a tmp dir, starts Sluice, waits (bounded) until the
admin `/readyz` answers 200 and the public port accepts, and returns a `Gateway`. Every gateway
a test started is stopped at teardown: SIGTERM, then SIGKILL after a bound.

`config` is either TOML text (a whole config) or a dict deep-merged over `base_config()`
(nested dicts merge, lists replace). Either way `server.listen` and `server.admin_listen` are
replaced by free loopback ports.

The binary is `$SLUICE_BIN`, else `<repo>/target/debug/sluice`.
"""

from __future__ import annotations

import copy
import json
import os
import re
import signal
import socket
import subprocess
import time
import tomllib
from pathlib import Path
from typing import Any, Callable

import openai
import pytest
import requests

REPO = Path(__file__).resolve().parents[2]

START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 20.0
KILL_TIMEOUT_S = 5.0
HTTP_TIMEOUT_S = 30.0


# --------------------------------------------------------------------------------------------
# The binary, ports, TOML
# --------------------------------------------------------------------------------------------


def sluice_bin() -> Path:
    env = os.environ.get("SLUICE_BIN")
    path = Path(env) if env else REPO / "target" / "debug" / "sluice"
    if not path.is_file() or not os.access(path, os.X_OK):
        pytest.fail(
            f"Sluice binary not found at {path}: run `cargo build` in {REPO} "
            "(or point $SLUICE_BIN at a built `sluice`).",
            pytrace=False,
        )
    return path


_GIVEN_PORTS: set[int] = set()


def free_port() -> int:
    """A free loopback port, never one this session handed out before (the kernel may offer a
    just-released port again)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _GIVEN_PORTS:
            _GIVEN_PORTS.add(port)
            return port


def closed_port() -> int:
    """A loopback port nothing listens on (bound then released)."""
    return free_port()


def base_config() -> dict[str, Any]:
    """The quick-start config (built-in mock, model `mock-echo` → `echo`, agent `daily-scan`),
    without filters. Kept here rather than read from conf/ so the suite does not depend on
    the demo file's current filters."""
    return {
        "server": {
            "listen": "127.0.0.1:0",
            "admin_listen": "127.0.0.1:0",
            "threads": 2,
            "max_request_body_bytes": 4194304,
            "shutdown_grace_seconds": 10,
        },
        "upstreams": [{"name": "mock", "builtin": "mock"}],
        "models": [{"name": "mock-echo", "upstream": "mock", "upstream_model": "echo"}],
        "agents": [
            {
                "id": "daily-scan",
                "model": "mock-echo",
                "instructions": "You are a security analyst. Summarise the findings.",
                "max_tokens": 512,
            }
        ],
    }


def deep_merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _toml_key(k: str) -> str:
    return k if re.fullmatch(r"[A-Za-z0-9_-]+", k) else json.dumps(k)


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)  # JSON string escapes are valid TOML basic-string escapes
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{_toml_key(k)} = {_toml_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(f"cannot write {type(v).__name__} as TOML")


def _is_aot(v: Any) -> bool:
    return isinstance(v, list) and len(v) > 0 and all(isinstance(x, dict) for x in v)


def to_toml(d: dict[str, Any]) -> str:
    lines: list[str] = []

    def table(t: dict, path: list[str], aot: bool) -> None:
        if path:
            name = ".".join(_toml_key(p) for p in path)
            lines.append("")
            lines.append(f"[[{name}]]" if aot else f"[{name}]")
        for k, v in t.items():
            if not isinstance(v, dict) and not _is_aot(v):
                lines.append(f"{_toml_key(k)} = {_toml_value(v)}")
        for k, v in t.items():
            if isinstance(v, dict):
                table(v, path + [k], False)
            elif _is_aot(v):
                for item in v:
                    table(item, path + [k], True)

    table(d, [], False)
    return "\n".join(lines).lstrip("\n") + "\n"


def config_dict(config: str | dict | None) -> dict[str, Any]:
    if config is None:
        return base_config()
    if isinstance(config, str):
        return tomllib.loads(config)
    return deep_merge(base_config(), config)


# --------------------------------------------------------------------------------------------
# Metrics text
# --------------------------------------------------------------------------------------------

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_metrics(text: str) -> list[tuple[str, dict[str, str], float]]:
    out = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line.strip())
        if not m:
            continue
        labels = dict(_LABEL.findall(m.group(3) or ""))
        out.append((m.group(1), labels, float(m.group(4))))
    return out


def metric_sum(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels` (0 when none)."""
    return sum(
        v
        for n, ls, v in parse_metrics(text)
        if n == name and all(ls.get(k) == want for k, want in labels.items())
    )


# --------------------------------------------------------------------------------------------
# The gateway process
# --------------------------------------------------------------------------------------------


class Gateway:
    def __init__(self, workdir: Path, cfg: dict, env: dict[str, str] | None):
        self.workdir = workdir
        self.config_path = workdir / "sluice.toml"
        self.log_path = workdir / "sluice.log"
        self.env = env or {}
        self.cfg = cfg
        self.port = 0
        self.admin_port = 0
        self.proc: subprocess.Popen | None = None
        self._log = None

    # -- addresses
    @property
    def public_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.public_url}/v1"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def client(self, **kw: Any) -> openai.OpenAI:
        kw.setdefault("api_key", "unused")
        kw.setdefault("max_retries", 0)
        kw.setdefault("timeout", HTTP_TIMEOUT_S)
        return openai.OpenAI(base_url=self.base_url, **kw)

    # -- config
    def render(self, config: str | dict | None) -> str:
        """Config text for this gateway's ports (same contract as `start_gateway`)."""
        cfg = config_dict(config)
        cfg.setdefault("server", {})
        cfg["server"]["listen"] = f"127.0.0.1:{self.port}"
        cfg["server"]["admin_listen"] = f"127.0.0.1:{self.admin_port}"
        return to_toml(cfg)

    def write_config(self, config: str | dict | None, raw: bool = False) -> None:
        """Rewrites the config file (raw=True writes `config` text exactly as given)."""
        text = config if raw else self.render(config)
        assert isinstance(text, str)
        tmp = self.config_path.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(self.config_path)

    # -- process
    def start(self) -> None:
        last_log = ""
        for _attempt in range(3):
            self.port, self.admin_port = free_port(), free_port()
            self.config_path.write_text(self.render(self.cfg))
            env = dict(os.environ)
            env.setdefault("RUST_LOG", "info")
            env.update(self.env)
            self._log = open(self.log_path, "ab")
            self.proc = subprocess.Popen(
                [str(sluice_bin()), "run", "-c", str(self.config_path)],
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                env=env,
            )
            if self._wait_ready():
                return
            last_log = self.log_text()
            self._kill()
            if "in use" not in last_log.lower():
                break
        pytest.fail(
            f"Sluice did not become ready within {START_TIMEOUT_S}s.\n"
            f"config:\n{self.config_path.read_text()}\nlog:\n{last_log}",
            pytrace=False,
        )

    def _wait_ready(self) -> bool:
        assert self.proc is not None
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                r = requests.get(f"{self.admin_url}/readyz", timeout=1)
                if r.status_code == 200:
                    with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                        return True
            except (requests.RequestException, OSError):
                pass
            time.sleep(0.05)
        return False

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_log(self, needle: str, timeout: float = 10.0) -> bool:
        """Waits (bounded) until the log holds `needle`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if needle in self.log_text():
                return True
            time.sleep(0.05)
        return needle in self.log_text()

    def wait_serving(self) -> None:
        """Waits for `sluice run`'s own "serving" line: startup is complete (signal handlers
        included). Signal tests use it so that they test draining, not the startup window."""
        assert self.wait_log("sluice is serving"), self.log_text()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait_exit(self, timeout: float = STOP_TIMEOUT_S) -> int | None:
        assert self.proc is not None
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL after a bound. Returns the exit code of the SIGTERM path
        (None when it had to be killed)."""
        if self.proc is None:
            return None
        rc: int | None = self.proc.poll()
        if rc is None:
            self.proc.send_signal(signal.SIGTERM)
            rc = self.wait_exit(STOP_TIMEOUT_S)
            if rc is None:
                self._kill()
        self._close_log()
        return rc

    def _kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            try:
                self.proc.wait(timeout=KILL_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                pass
        self._close_log()

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    # -- admin helpers
    def metrics(self) -> str:
        r = requests.get(f"{self.admin_url}/metrics", timeout=HTTP_TIMEOUT_S)
        assert r.status_code == 200, r.text
        return r.text

    def reload(self) -> requests.Response:
        return requests.post(f"{self.admin_url}/admin/reload", timeout=HTTP_TIMEOUT_S)


class GatewayPool:
    """Starts gateways and stops every one of them at the end."""

    def __init__(self, tmp_factory: Callable[[], Path]):
        self._tmp = tmp_factory
        self.gateways: list[Gateway] = []

    def start(self, config: str | dict | None = None, env: dict[str, str] | None = None) -> Gateway:
        gw = Gateway(self._tmp(), config_dict(config), env)
        self.gateways.append(gw)
        gw.start()
        return gw

    def stop_all(self) -> None:
        for gw in reversed(self.gateways):
            gw.stop()


@pytest.fixture
def start_gateway(tmp_path_factory):
    """`start_gateway(config=None, env=None) -> Gateway`; all stopped at teardown."""
    pool = GatewayPool(lambda: tmp_path_factory.mktemp("sluice"))
    yield pool.start
    pool.stop_all()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    """A gateway with the quick-start config, shared by a module's read-only tests."""
    pool = GatewayPool(lambda: tmp_path_factory.mktemp("sluice-shared"))
    gw = pool.start()
    yield gw
    pool.stop_all()


@pytest.fixture
def client(gateway) -> openai.OpenAI:
    return gateway.client()
