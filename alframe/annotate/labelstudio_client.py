"""A thin HTTP client for Label Studio's REST API (standard library only).

Why not ``label-studio-sdk``: its 2.x releases pin ``opencv-python-headless<4.13`` while alframe's
stack pins a 5.x build (see ``constraints.txt``), so pip cannot install both; and the handful of
calls alframe needs (who am I, projects, file upload, task import, export, users) are plain JSON
over HTTP. Nothing here imports anything beyond the standard library.

Authentication: a *legacy* API token (40 hex characters) is sent as ``Authorization: Token …``; a
*personal access token* (a JWT refresh token, Label Studio >= 1.14) is exchanged once for an
access token at ``/api/token/refresh`` and sent as ``Authorization: Bearer …``. The token is held
in memory only and never appears in an error message.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
import uuid
from typing import Any

from alframe.errors import AlframeError


class LabelStudioError(AlframeError):
    """Label Studio cannot be reached, refuses the token, or rejects a request."""


class LabelStudioNotFound(LabelStudioError):
    """The server answered 404 (a project or task that no longer exists)."""


def _detail(body: bytes) -> str:
    try:
        data = json.loads(body.decode("utf-8", "replace"))
    except json.JSONDecodeError:
        return " ".join(body.decode("utf-8", "replace").split())[:200]
    if isinstance(data, dict):
        for key in ("detail", "validation_errors", "message", "error"):
            if key in data:
                return " ".join(json.dumps(data[key])[:300].split())
    return " ".join(json.dumps(data)[:300].split())


class LabelStudioClient:
    """Calls to one Label Studio server with one token.

    Args:
        url: the server, e.g. ``http://localhost:8080``.
        token: a legacy API token or a personal access token.
        token_source: how the user gave the token (e.g. ``$LABEL_STUDIO_API_KEY``), for errors.
        timeout: seconds per request.
    """

    def __init__(
        self, url: str, token: str, token_source: str = "the token", timeout: float = 60.0
    ) -> None:
        parsed = urllib.parse.urlparse(url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise LabelStudioError(
                f"--label-studio {url!r} is not an http(s) URL; give the address Label Studio "
                "prints at start, e.g. http://localhost:8080"
            )
        self.url = url.rstrip("/")
        self._token = token
        self.token_source = token_source
        self.timeout = timeout
        self._authorization: str | None = None

    # ------------------------------------------------------------------------------ transport
    def _auth_header(self) -> str:
        if self._authorization is None:
            if self._token.count(".") == 2:  # a JWT: personal access token → access token
                answer = self._send(
                    "POST",
                    "/api/token/refresh",
                    json.dumps({"refresh": self._token}).encode(),
                    "application/json",
                    authorization=None,
                )
                access = answer.get("access") if isinstance(answer, dict) else None
                if not isinstance(access, str):
                    raise LabelStudioError(
                        f"Label Studio at {self.url} did not accept {self.token_source} as a "
                        "personal access token; create a new one under Account & Settings"
                    )
                self._authorization = f"Bearer {access}"
            else:
                self._authorization = f"Token {self._token}"
        return self._authorization

    def _send(
        self,
        method: str,
        path: str,
        body: bytes | None,
        content_type: str | None,
        authorization: str | None,
    ) -> Any:
        request = urllib.request.Request(self.url + path, data=body, method=method)
        if content_type:
            request.add_header("Content-Type", content_type)
        if authorization:
            request.add_header("Authorization", authorization)
        request.add_header("Accept", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                payload = response.read()
        except urllib.error.HTTPError as err:
            detail = _detail(err.read())
            if err.code in (401, 403):
                raise LabelStudioError(
                    f"Label Studio at {self.url} refused {self.token_source} (HTTP {err.code}: "
                    f"{detail}); put a valid access token from Account & Settings there (legacy "
                    "tokens must be enabled under Organization → API Tokens)"
                ) from None
            if err.code == 404:
                raise LabelStudioNotFound(
                    f"Label Studio at {self.url} has no {path.split('?')[0]} (HTTP 404)"
                ) from None
            raise LabelStudioError(
                f"Label Studio at {self.url} rejected {method} {path.split('?')[0]} (HTTP "
                f"{err.code}: {detail}); check the Label Studio project and try again"
            ) from None
        except (urllib.error.URLError, ConnectionError, TimeoutError) as err:
            reason = getattr(err, "reason", err)
            raise LabelStudioError(
                f"Label Studio at {self.url} cannot be reached ({reason}); start it "
                "(`label-studio start`) or fix the URL (`alframe project connect DIR "
                "--label-studio URL`)"
            ) from None
        if not payload:
            return None
        try:
            return json.loads(payload.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise LabelStudioError(
                f"{self.url}{path.split('?')[0]} did not answer JSON; is {self.url} a Label "
                "Studio server?"
            ) from None

    def request(self, method: str, path: str, payload: Any = None) -> Any:
        """One JSON request; returns the decoded answer (None when empty).

        Raises:
            LabelStudioError: unreachable, token refused, or the request was rejected.
            LabelStudioNotFound: HTTP 404.
        """
        body = None if payload is None else json.dumps(payload).encode("utf-8")
        return self._send(
            method, path, body, "application/json" if body else None, self._auth_header()
        )

    # ------------------------------------------------------------------------------ API calls
    def whoami(self) -> dict[str, Any]:
        """The token's user (checks that the server is there and accepts the token)."""
        answer = self.request("GET", "/api/current-user/whoami")
        if not isinstance(answer, dict) or "id" not in answer:
            raise LabelStudioError(f"{self.url} does not answer like a Label Studio server")
        return answer

    def project(self, project_id: int) -> dict[str, Any]:
        """One project (title, label_config, ...)."""
        return dict(self.request("GET", f"/api/projects/{int(project_id)}"))

    def create_project(self, title: str, label_config: str, description: str) -> dict[str, Any]:
        """A new project with the given labelling config."""
        return dict(
            self.request(
                "POST",
                "/api/projects",
                {"title": title, "label_config": label_config, "description": description},
            )
        )

    def update_project(self, project_id: int, fields: dict[str, Any]) -> dict[str, Any]:
        """Change project settings (e.g. which prediction ``model_version`` pre-labels tasks)."""
        return dict(self.request("PATCH", f"/api/projects/{int(project_id)}", fields))

    def upload_file(self, project_id: int, name: str, data: bytes) -> str:
        """Upload a file to the project's storage without creating a task.

        Returns:
            The URL tasks use for it (``/data/upload/<project>/<prefix>-<name>``).
        """
        boundary = uuid.uuid4().hex
        body = (
            (
                f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
                f'filename="{name}"\r\nContent-Type: application/octet-stream\r\n\r\n'
            ).encode()
            + data
            + f"\r\n--{boundary}--\r\n".encode()
        )
        answer = self._send(
            "POST",
            f"/api/projects/{int(project_id)}/import?commit_to_project=false",
            body,
            f"multipart/form-data; boundary={boundary}",
            self._auth_header(),
        )
        ids = answer.get("file_upload_ids") if isinstance(answer, dict) else None
        if not ids:
            raise LabelStudioError(f"Label Studio at {self.url} did not store the file {name}")
        upload = self.request("GET", f"/api/import/file-upload/{int(ids[0])}")
        return "/data/" + str(upload["file"]).lstrip("/")

    def import_tasks(self, project_id: int, tasks: list[dict[str, Any]]) -> list[int]:
        """Create tasks (with their predictions); returns the new task ids in order."""
        answer = self.request(
            "POST", f"/api/projects/{int(project_id)}/import?return_task_ids=true", tasks
        )
        ids = answer.get("task_ids") if isinstance(answer, dict) else None
        if not isinstance(ids, list) or len(ids) != len(tasks):
            raise LabelStudioError(
                f"Label Studio at {self.url} created {len(ids or [])} of {len(tasks)} tasks; "
                "run the command again (tasks already there are found, not duplicated)"
            )
        return [int(i) for i in ids]

    def tasks(self, project_id: int) -> list[dict[str, Any]]:
        """Every task of a project (ids, data and counters; not the full predictions or
        annotations), page by page."""
        out: list[dict[str, Any]] = []
        page = 1
        while True:
            try:
                answer = self.request(
                    "GET",
                    f"/api/tasks?project={int(project_id)}&page={page}&page_size=100",
                )
            except LabelStudioNotFound:
                break  # past the last page
            batch = answer.get("tasks", []) if isinstance(answer, dict) else answer
            if not batch:
                break
            out.extend(batch)
            total = answer.get("total") if isinstance(answer, dict) else None
            if isinstance(total, int) and len(out) >= total:
                break
            page += 1
        return out

    def export(self, project_id: int) -> list[dict[str, Any]]:
        """Every task with its annotations, as Label Studio's JSON export."""
        answer = self.request(
            "GET",
            f"/api/projects/{int(project_id)}/export?exportType=JSON&download_all_tasks=true",
        )
        if not isinstance(answer, list):
            raise LabelStudioError(f"Label Studio at {self.url} sent an export that is not a list")
        return answer

    def users(self) -> list[dict[str, Any]]:
        """The users of the token's organisation (id, email, username)."""
        answer = self.request("GET", "/api/users")
        return list(answer) if isinstance(answer, list) else list(answer.get("results", []))
