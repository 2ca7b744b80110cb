"""The headless browser the docs scripts render pages with (Debian's ``chromium`` package)."""

from __future__ import annotations

import shutil


def chromium() -> str:
    """Path of a Chromium (or Chrome) binary; exits with how to install one when there is none."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    raise SystemExit("headless Chromium is needed: apt-get install chromium")
