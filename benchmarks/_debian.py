"""The real collections the sound benchmarks use: Debian music packages, apt-get installed when
missing (music nobody here made, under free licences)."""

from __future__ import annotations

import glob
import os
import subprocess

# name: (Debian package, where its Ogg files land, what it is)
COLLECTIONS: dict[str, tuple[str, str, str]] = {
    "drascula": (
        "drascula-music",
        "/usr/share/scummvm/drascula/audio/*.ogg",
        "drascula-music: 31 tracks, 47 min, a point-and-click game's score (synths, guitar, drums)",
    ),
    "wesnoth": (
        "wesnoth-1.16-music",
        "/usr/share/games/wesnoth/1.16/data/core/music/*.ogg",
        "wesnoth-1.16-music: 41 tracks, 2 h 08 min, orchestral (strings, brass, choir, percussion)",
    ),
}


def collection_songs(name: str) -> list[str]:
    """The Ogg files of collection ``name`` (sorted), installing its package when none is there."""
    package, pattern, _ = COLLECTIONS[name]
    if not glob.glob(pattern):
        sudo = [] if os.geteuid() == 0 else ["sudo"]
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run([*sudo, "apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run([*sudo, "apt-get", "install", "-y", "-qq", package], check=True, env=env)
    paths = sorted(glob.glob(pattern))
    if not paths:
        raise SystemExit(f"{package} installed no .ogg under {pattern}")
    return paths
