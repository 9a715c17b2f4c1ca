"""A PATH for netwrap runs in the test world with some tools missing.

Used to check how netwrap behaves where pasta, slirp4netns or nft are not
installed (backend choice, doctor fixes), without touching the machine's own
directories: the usual tools are symlinked into a directory of the test's own.
"""

from __future__ import annotations

import os

from world.harness import World

# What netwrap and the tests' commands run; /bin is /usr/bin on the test machines.
TOOLS = ("sh", "true", "id", "curl", "ip", "nft", "pasta", "passt", "slirp4netns", "dpkg-query")


def path_without(world: World, *missing: str, user: bool = True) -> str:
    """A PATH value holding TOOLS less `missing`: in a directory of the test
    user's, or root's own when netwrap runs as root (user=False), which
    --helper-path requires (see World.helpers_from)."""
    bindir = world.program_dir("bin", user=user)
    for name in TOOLS:
        for d in ("/usr/sbin", "/usr/bin", "/sbin", "/bin"):
            if name not in missing and os.path.exists(f"{d}/{name}") and not (bindir / name).exists():
                (bindir / name).symlink_to(f"{d}/{name}")
    return str(bindir)
