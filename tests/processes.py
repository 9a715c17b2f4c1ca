"""Finding the processes a test run started, by a tag in their environment."""

from __future__ import annotations

import os

import psutil


def tagged_processes(tag: str) -> list[psutil.Process]:
    """Live processes whose environment carries NETWRAP_TEST_TAG=tag."""
    found = []
    for proc in psutil.process_iter(["pid"]):
        try:
            if proc.pid == os.getpid() or proc.status() == psutil.STATUS_ZOMBIE:
                continue
            if proc.environ().get("NETWRAP_TEST_TAG") == tag:
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found
