"""The few Label Studio API calls the backend makes, on ``LABEL_STUDIO_URL`` only.

Fine-tuning reads a project's labeling config and annotated tasks; the model-version sync
(:mod:`label_studio_backend.sync`) reads a project's ML backends and renames the one that is
this server. Requests carry the backend's credentials (``LABEL_STUDIO_API_KEY``, or the token
Label Studio sent with ``/setup``), have timeouts, follow no redirects and use no proxies.
"""

import json
from collections.abc import Callable, Iterator
from typing import Any

import requests

from .errors import BackendError


class LabelStudioAPIError(Exception):
    """A Label Studio API call that failed; the message says which and why.

    Attributes:
      status: the HTTP status Label Studio answered (0: no answer).
    """

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


class LabelStudioClient:
    """Label Studio's REST API at ``url``.

    Arguments:
      url: ``LABEL_STUDIO_URL`` (scheme://host:port, no trailing slash).
      auth: ``auth(token) -> Authorization header value`` (the image loader's
        :meth:`~label_studio_backend.images.ImageLoader.auth_header`, which exchanges a personal
        access token for an access token); raises :class:`BackendError` without credentials.
      timeout: seconds for one request.
    """

    page_size = 100

    def __init__(self, url: str, auth: Callable[[str | None], str], *, timeout: float = 30.0):
        self.url = url.rstrip("/")
        self.auth = auth
        self.timeout = float(timeout)

    def request(
        self, method: str, path: str, *, token: str | None = None, params=None, body=None
    ) -> Any:
        """One call; returns the decoded JSON answer or raises :class:`LabelStudioAPIError`."""
        try:
            auth = self.auth(token)
        except BackendError as e:
            raise LabelStudioAPIError(e.message) from None
        with requests.Session() as s:
            s.trust_env = False
            try:
                r = s.request(
                    method,
                    self.url + path,
                    params=params,
                    json=body,
                    headers={"Authorization": auth},
                    timeout=(5.0, self.timeout),
                    allow_redirects=False,
                )
            except requests.RequestException as e:
                raise LabelStudioAPIError(f"cannot reach Label Studio at {self.url}: {e}") from None
        if not 200 <= r.status_code < 300:
            hint = " (check LABEL_STUDIO_API_KEY)" if r.status_code in (401, 403) else ""
            raise LabelStudioAPIError(
                f"Label Studio answered HTTP {r.status_code} for {method} {path}{hint}: "
                f"{r.text[:300]}",
                r.status_code,
            )
        if not r.content:
            return None
        try:
            return r.json()
        except ValueError:
            raise LabelStudioAPIError(f"Label Studio sent no JSON for {method} {path}") from None

    # ------------------------------------------------------------------ projects
    def project(self, project_id: int, *, token: str | None = None) -> dict:
        project = self.request("GET", f"/api/projects/{int(project_id)}/", token=token)
        if not isinstance(project, dict):
            raise LabelStudioAPIError(f"project {project_id}: unexpected answer")
        return project

    def label_config(self, project_id: int, *, token: str | None = None) -> str:
        config = self.project(project_id, token=token).get("label_config")
        if not isinstance(config, str):
            raise LabelStudioAPIError(f"project {project_id}: Label Studio sent no label_config")
        return config

    def set_project_model_version(
        self, project_id: int, version: str, *, token: str | None = None
    ) -> None:
        """The project's model version: the predictions the Data Manager scores and the
        labeling stream shows. Label Studio accepts the title of one of the project's ML
        backends or a version that has predictions."""
        self.request(
            "PATCH",
            f"/api/projects/{int(project_id)}/",
            token=token,
            body={"model_version": version},
        )

    def annotated_tasks(self, project_id: int, *, token: str | None = None) -> list[dict]:
        """All tasks of the project that have annotations (with their annotations), page by
        page (the Data Manager API label-studio-sdk's ``get_labeled_tasks`` uses)."""
        items = [_filter("filter:tasks:total_annotations", 0)]
        pages = self._task_pages(project_id, items, fields="all", token=token)
        return [t for page in pages for t in page if t.get("annotations")]

    def tasks(
        self,
        project_id: int,
        *,
        after: int | None = None,
        limit: int | None = None,
        token: str | None = None,
    ) -> Iterator[dict]:
        """The project's tasks (id and data, no annotations) in task id order, page by page:
        only those with an id above ``after`` when given, at most ``limit`` of them."""
        items = [_filter("filter:tasks:id", int(after))] if after is not None else []
        size = max(1, min(self.page_size, limit)) if limit is not None else self.page_size
        n = 0
        for page in self._task_pages(
            project_id, items, fields="task_only", token=token, page_size=size
        ):
            for task in sorted(page, key=lambda t: _task_id(t) or 0):
                tid = _task_id(task)
                if tid is None or (after is not None and tid <= after):
                    continue
                yield task
                n += 1
                if limit is not None and n >= limit:
                    return

    def _task_pages(
        self,
        project_id: int,
        filters: list[dict],
        *,
        fields: str,
        token: str | None,
        page_size: int | None = None,
    ) -> Iterator[list[dict]]:
        """Pages of the Data Manager's ``/api/tasks`` (filters joined with "and", ordered
        by task id)."""
        size = page_size or self.page_size
        query: dict[str, Any] = {"ordering": ["tasks:id"]}
        if filters:
            query["filters"] = {"conjunction": "and", "items": filters}
        page = 1
        while True:
            body = self.request(
                "GET",
                "/api/tasks",
                token=token,
                params={
                    "project": int(project_id),
                    "fields": fields,
                    "page": page,
                    "page_size": size,
                    "query": json.dumps(query),
                    "resolve_uri": "false",
                },
            )
            items = body.get("tasks") if isinstance(body, dict) else body
            if not isinstance(items, list):
                raise LabelStudioAPIError("unexpected answer of Label Studio's /api/tasks")
            yield [t for t in items if isinstance(t, dict)]
            total = body.get("total", 0) if isinstance(body, dict) else 0
            if not items or page * size >= int(total or 0):
                return
            page += 1

    # ------------------------------------------------------------------ ML backends
    def ml_backends(self, project_id: int, *, token: str | None = None) -> list[dict]:
        """The project's connected ML backends (Label Studio asks each for /health and
        /setup while answering)."""
        items = self.request("GET", "/api/ml", token=token, params={"project": int(project_id)})
        if not isinstance(items, list):
            raise LabelStudioAPIError("unexpected answer of Label Studio's /api/ml")
        return [b for b in items if isinstance(b, dict)]

    def rename_ml_backend(
        self,
        backend: dict,
        title: str,
        *,
        token: str | None = None,
        basic_auth: tuple[str, str] | None = None,
    ) -> dict:
        """Set an ML backend's title (its name on the Settings -> Model card). When the
        project's model version is the old title, Label Studio moves it to the new one.

        Label Studio re-validates the connection on every change (``/health`` and ``/setup``
        of the URL, with basic auth when the backend uses it), so the URL, the project and
        the credentials travel with the new title."""
        body: dict[str, Any] = {
            "title": title,
            "url": backend["url"],
            "project": backend["project"],
        }
        if backend.get("auth_method") == "BASIC_AUTH" and basic_auth is not None:
            body.update(
                auth_method="BASIC_AUTH",
                basic_auth_user=basic_auth[0],
                basic_auth_pass=basic_auth[1],
            )
        answer = self.request("PATCH", f"/api/ml/{int(backend['id'])}", token=token, body=body)
        return answer if isinstance(answer, dict) else {}


def _filter(column: str, above: int) -> dict:
    """A Data Manager filter item: ``column`` greater than ``above``."""
    return {"filter": column, "operator": "greater", "type": "Number", "value": int(above)}


def _task_id(task: dict) -> int | None:
    tid = task.get("id")
    return tid if isinstance(tid, int) and not isinstance(tid, bool) else None
