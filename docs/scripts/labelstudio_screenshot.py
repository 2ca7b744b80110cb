"""Screenshot of a Label Studio task page showing alframe's pre-annotation (headless Chromium).

What it does, end to end, offline on CPU (about 3–5 minutes, most of it Label Studio's first
start):

1. starts a throw-away Label Studio (``alframe.annotate.labelstudio_server``; its own venv);
2. builds a labelling project on synthetic data (128², ellipses), labels round 1 with the
   ground truth through ``round import``, trains a small model (``round train``);
3. connects the project and runs ``round next``: the tasks are pushed with the model's
   prediction as a pre-annotation;
4. opens the first task's page in Debian's headless Chromium (``apt-get install chromium``) and
   saves ``docs/images/labelstudio_pre_annotation.png``.

Chromium needs a logged-in session: a small local proxy forwards every request to Label Studio
with the admin's session cookie (obtained through the login form), so the page loads exactly as
it does for a person in the browser.

Run from the repository root::

    python docs/scripts/labelstudio_screenshot.py [--out docs/images/labelstudio_pre_annotation.png]
"""

from __future__ import annotations

import argparse
import http.server
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parent))
import _browser as browser  # noqa: E402  (beside this script)


def _proxy(target: str, cookie: str) -> http.server.ThreadingHTTPServer:
    """A local HTTP proxy to ``target`` that adds ``cookie`` to every request."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def _forward(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else None
            request = urllib.request.Request(target + self.path, data=body, method=self.command)
            for key, value in self.headers.items():
                if key.lower() not in ("host", "cookie", "accept-encoding", "connection"):
                    request.add_header(key, value)
            request.add_header("Cookie", cookie)
            try:
                response = urllib.request.urlopen(request, timeout=120)
                status, headers, payload = response.status, response.headers, response.read()
            except urllib.error.HTTPError as err:
                status, headers, payload = err.code, err.headers, err.read()
            self.send_response(status)
            for key, value in headers.items():
                if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                    self.send_header(key, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _forward

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(REPO / "docs/images/labelstudio_pre_annotation.png"))
    parser.add_argument("--epochs", type=int, default=8)
    args = parser.parse_args()

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    from PIL import Image

    from alframe.annotate import open_project
    from alframe.annotate.labelstudio_server import BrowserSession, LocalLabelStudio
    from alframe.cli.main import main as alframe
    from alframe.config import recipe_from_dict
    from alframe.data.synthetic import synthetic_recipe_dict, write_synthetic_dataset

    chromium = browser.chromium()
    work = Path(tempfile.mkdtemp(prefix="alframe-ls-shot-"))
    server = LocalLabelStudio.start(work / "label-studio")
    try:
        write_synthetic_dataset(work / "data", n_images=24, image_size=128, seed=1)
        raw = synthetic_recipe_dict(work / "data", image_size=128)
        raw["select"] = {"strategy": "random"}
        raw["train"].update(max_epochs=args.epochs, batch_size=4, progress=False)
        raw["tracking"] = {"enabled": False}
        raw["output_dir"] = str(work / "runs")
        recipe_file = work / "recipe.yaml"
        import yaml

        recipe_from_dict(raw)  # validate before use
        recipe_file.write_text(yaml.safe_dump(raw))
        project = work / "project"
        assert alframe(["project", "init", str(project), "--recipe", str(recipe_file)]) == 0
        assert alframe(["round", "next", str(project), "--budget", "8"]) == 0
        with open_project(project, write=False) as opened:
            samples = opened.samples()
            cases = opened.case_of()
            ids = [r["id"] for r in opened.store.query("SELECT id FROM selections")]
        masks = work / "masks"
        masks.mkdir()
        for item in ids:
            mask_path = samples[item].mask_path
            assert mask_path is not None
            Image.open(mask_path).save(masks / f"{cases[item]}.png")
        assert alframe(["round", "import", str(project), "--from", str(masks)]) == 0
        assert alframe(["round", "train", str(project), "--no-track"]) == 0

        server.wait()
        os.environ["LABEL_STUDIO_API_KEY"] = server.token
        assert alframe(["project", "connect", str(project), "--label-studio", server.url]) == 0
        assert alframe(["round", "next", str(project), "--budget", "4"]) == 0
        with open_project(project, write=False) as opened:
            link = opened.store.get_json("labelstudio")
            task_id = opened.store.query(
                "SELECT task_id FROM ls_tasks WHERE round = 2 ORDER BY task_id LIMIT 1"
            )[0]["task_id"]

        session = BrowserSession(server.url).login(server.email, server.password)
        cookie = "; ".join(f"{c.name}={c.value}" for c in session.jar)
        proxy = _proxy(server.url, cookie)
        page = (
            f"http://127.0.0.1:{proxy.server_address[1]}/projects/{link['project_id']}/data"
            f"?task={task_id}"
        )
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        subprocess.run(
            [
                chromium,
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--hide-scrollbars",
                "--window-size=1400,900",
                "--virtual-time-budget=30000",
                f"--user-data-dir={work / 'chromium'}",
                f"--screenshot={out}",
                page,
            ],
            check=True,
            capture_output=True,
            timeout=300,
        )
        # A 128-colour palette keeps the picture legible at a third of the size.
        with Image.open(out) as shot:
            small = shot.convert("RGB").quantize(colors=128, method=Image.Quantize.MEDIANCUT)
        small.save(out, optimize=True)
        print(f"{out} ({time.monotonic() - started:.0f} s in Chromium) from {page}")
        proxy.shutdown()
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
