"""A local Label Studio server for tests, demos and the docs' screenshot script.

Label Studio is installed into its *own* virtual environment (``~/.cache/alframe/
label-studio-<version>``, or ``$ALFRAME_LABEL_STUDIO_VENV``), never into alframe's: its
dependencies (Django, an older OpenCV through label-studio-sdk, ...) conflict with alframe's
pinned stack. The pins of that environment are in ``constraints-label-studio.txt`` at the
repository root (used when present). alframe itself only talks HTTP to the server.

:class:`LocalLabelStudio` starts ``label-studio start --no-browser`` on a free port with a
temporary data folder and an admin user, waits for it, and switches on legacy API tokens the way
the web page does (a logged-in session posting to ``/api/jwt/settings``); stop it with
:meth:`LocalLabelStudio.stop` (the whole process group). :class:`BrowserSession` is a person
using the web interface: it signs up or logs in through the HTML forms and calls the API with
the session cookie and CSRF token, exactly as the browser's front end does.
"""

from __future__ import annotations

import http.cookiejar
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

LABEL_STUDIO_VERSION = "1.23.2"
VENV_ENV = "ALFRAME_LABEL_STUDIO_VENV"
_CONSTRAINTS = "constraints-label-studio.txt"
_MARKER = ".alframe-complete"


def server_venv() -> Path:
    """Where the server's virtual environment lives (may not exist yet)."""
    value = os.environ.get(VENV_ENV)
    if value:
        return Path(value)
    return Path.home() / ".cache" / "alframe" / f"label-studio-{LABEL_STUDIO_VERSION}"


def server_executable(venv: Path | None = None) -> Path:
    """The ``label-studio`` command inside the server's environment."""
    return (venv or server_venv()) / "bin" / "label-studio"


def install_server(venv: Path | None = None, log: Path | None = None) -> Path:
    """Create the server's virtual environment and pip-install Label Studio (about 1 GB, a few
    minutes) unless a complete one is there already (it holds a marker file written last).

    Returns:
        The ``label-studio`` executable.

    Raises:
        RuntimeError: pip failed (the message names the log file).
    """
    venv = venv or server_venv()
    marker = venv / _MARKER
    if marker.is_file():
        return server_executable(venv)
    log = log or venv.with_name(venv.name + ".install.log")
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as out:
        subprocess.run(
            [sys.executable, "-m", "venv", "--clear", str(venv)],
            check=True,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        command = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
        constraints = Path(__file__).resolve().parents[2] / _CONSTRAINTS
        if constraints.is_file():
            command += ["-c", str(constraints)]
        command.append(f"label-studio=={LABEL_STUDIO_VERSION}")
        done = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        raise RuntimeError(
            f"pip could not install label-studio=={LABEL_STUDIO_VERSION} (see {log})"
        )
    marker.write_text(f"label-studio=={LABEL_STUDIO_VERSION}\n", encoding="utf-8")
    return server_executable(venv)


def free_port() -> int:
    """A TCP port nobody listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class BrowserSession:
    """A person in the web interface: session cookie + CSRF token, like the front end.

    Args:
        url: the server.
    """

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar))

    def _csrf(self) -> str:
        return next((c.value or "" for c in self.jar if c.name == "csrftoken"), "")

    def _form(self, path: str, fields: dict[str, str]) -> str:
        page = self.opener.open(self.url + path, timeout=60).read().decode("utf-8", "replace")
        match = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page)
        data = dict(fields, csrfmiddlewaretoken=match.group(1) if match else self._csrf())
        request = urllib.request.Request(
            self.url + path,
            data=urllib.parse.urlencode(data).encode(),
            headers={"Referer": self.url + path},
        )
        with self.opener.open(request, timeout=60) as response:
            return str(response.url)

    def login(self, email: str, password: str) -> BrowserSession:
        """Log in through the login form."""
        landed = self._form("/user/login/", {"email": email, "password": password})
        if "/user/login" in landed:
            raise RuntimeError(f"login as {email} failed")
        return self

    def signup(self, email: str, password: str) -> BrowserSession:
        """Create an account through the sign-up form (and stay logged in)."""
        landed = self._form("/user/signup/", {"email": email, "password": password})
        if "/user/signup" in landed:
            raise RuntimeError(f"sign-up of {email} failed")
        return self

    def api(self, method: str, path: str, payload: Any = None) -> Any:
        """A JSON API call with the session (and CSRF header for changes)."""
        body = None if payload is None else json.dumps(payload).encode()
        request = urllib.request.Request(self.url + path, data=body, method=method)
        request.add_header("Content-Type", "application/json")
        request.add_header("X-CSRFToken", self._csrf())
        request.add_header("Referer", self.url + "/")
        with self.opener.open(request, timeout=60) as response:
            text = response.read()
        return json.loads(text) if text else None


@dataclass
class LocalLabelStudio:
    """A Label Studio server process started by :meth:`start`.

    Attributes:
        url: ``http://127.0.0.1:<port>``.
        data_dir: its data folder (database, uploads).
        email / password: the admin user.
        token: the admin's legacy API token (enabled by :meth:`wait`).
        process: the server process (leader of its own process group).
        log: the server's output file.
        started: ``time.monotonic()`` at start.
    """

    url: str
    data_dir: Path
    email: str
    password: str
    token: str
    process: subprocess.Popen[bytes]
    log: Path
    started: float = field(default_factory=time.monotonic)
    ready_after: float | None = None

    @classmethod
    def start(cls, data_dir: Path, port: int | None = None) -> LocalLabelStudio:
        """Start the server in the background (returns at once; :meth:`wait` for it)."""
        executable = install_server()
        port = port or free_port()
        data_dir.mkdir(parents=True, exist_ok=True)
        email, password = "admin@alframe.local", secrets.token_hex(12)
        token = secrets.token_hex(20)
        env = dict(
            os.environ,
            LABEL_STUDIO_BASE_DATA_DIR=str(data_dir),
            LABEL_STUDIO_USERNAME=email,
            LABEL_STUDIO_PASSWORD=password,
            LABEL_STUDIO_USER_TOKEN=token,
            LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK="false",
            DJANGO_DB="sqlite",
            LATEST_VERSION_CHECK="false",
            COLLECT_ANALYTICS="false",
            PYTHONUNBUFFERED="1",
        )
        log = data_dir / "server.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [str(executable), "start", "--no-browser", "--port", str(port)],
                cwd=data_dir,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: stop() ends all of it
            )
        return cls(f"http://127.0.0.1:{port}", data_dir, email, password, token, process, log)

    def wait(self, timeout: float = 600.0) -> LocalLabelStudio:
        """Block until the server answers, then enable legacy tokens as the admin.

        Raises:
            RuntimeError: the server exited or did not answer in time (names the log).
        """
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"label-studio exited with {self.process.returncode}; see {self.log}"
                )
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=5) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"label-studio did not answer in {timeout:.0f} s; see {self.log}"
                )
            time.sleep(1.0)
        admin = BrowserSession(self.url).login(self.email, self.password)
        admin.api(
            "POST",
            "/api/jwt/settings",
            {"api_tokens_enabled": True, "legacy_api_tokens_enabled": True},
        )
        if self.ready_after is None:
            self.ready_after = time.monotonic() - self.started
        return self

    def stop(self) -> None:
        """End the server and every process it started."""
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=20)
            except ProcessLookupError:
                pass


def main(argv: list[str] | None = None) -> int:
    """``python -m alframe.annotate.labelstudio_server DATA_DIR [PORT]``: run a local server
    until Ctrl-C, printing its URL and an API token for ``$LABEL_STUDIO_API_KEY``."""
    args = sys.argv[1:] if argv is None else argv
    if not args:
        print(__doc__)
        return 2
    server = LocalLabelStudio.start(Path(args[0]), int(args[1]) if len(args) > 1 else None)
    try:
        server.wait()
        print(f"Label Studio {server.url}  admin {server.email} / {server.password}")
        print(f"export LABEL_STUDIO_API_KEY={server.token}", flush=True)
        server.process.wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
