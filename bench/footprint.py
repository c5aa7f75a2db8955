"""The tray's footprint: memory and idle CPU over 30 s, and the time from launch to icon.

    python bench/footprint.py [--seconds 30] [--platform offscreen|xcb]

Launches the real tray (`python -m app.tray`) in a private config/data folder, waits for
the icon (the app writes BARNRAISE_TRAY_READY_FILE when it is shown), then samples the
tray process's RSS and CPU time with psutil. The engine's training child process (which
imports torch) is reported apart: the aim (< 150 MB, < 1 % CPU) is for the tray process,
which never imports torch. Under Xvfb + trayer pass --platform xcb with DISPLAY set.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
RSS_AIM_MB = 150
CPU_AIM_PERCENT = 1.0


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--platform", default=os.environ.get("QT_QPA_PLATFORM", "offscreen"))
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="barnraise-footprint-") as tmp:
        folder = Path(tmp)
        ready = folder / "ready.json"
        env = dict(
            os.environ,
            QT_QPA_PLATFORM=args.platform,
            BARNRAISE_CONFIG_DIR=str(folder / "config"),
            BARNRAISE_DATA_DIR=str(folder / "data"),
            BARNRAISE_TRAY_READY_FILE=str(ready),
            XDG_CONFIG_HOME=str(folder / "xdg"),
        )
        started = time.monotonic()
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "app.tray",
                "--minimized",
                "--credentials",
                str(folder / "credentials.json"),
            ],
            cwd=REPO,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            while not ready.exists():
                if proc.poll() is not None:
                    print(f"the tray exited with status {proc.returncode} before showing its icon")
                    return 1
                if time.monotonic() - started > 60:
                    print("the tray did not show its icon within 60 s")
                    return 1
                time.sleep(0.01)
            to_icon = time.monotonic() - started
            report = json.loads(ready.read_text())
            tray = psutil.Process(proc.pid)
            time.sleep(3.0)  # let start-up settle (the engine starts its trainer child)
            cpu_before = tray.cpu_times()
            wall_before = time.monotonic()
            peak_rss = 0
            while time.monotonic() - wall_before < args.seconds:
                peak_rss = max(peak_rss, tray.memory_info().rss)
                time.sleep(0.5)
            cpu_after = tray.cpu_times()
            wall = time.monotonic() - wall_before
            cpu_seconds = (cpu_after.user + cpu_after.system) - (
                cpu_before.user + cpu_before.system
            )
            cpu_percent = 100.0 * cpu_seconds / wall
            rss_mb = tray.memory_info().rss / 2**20
            children = tray.children(recursive=True)
            child_rss = sum(c.memory_info().rss for c in children if c.is_running()) / 2**20
            torch_loaded = "torch" in " ".join(
                m.path for m in tray.memory_maps() if "torch" in m.path
            )
        finally:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()

    print(f"platform: {args.platform}; tray available: {report['tray_available']}")
    print(
        f"launch to tray icon:      {to_icon:.2f} s (the app's own count: {report['seconds_to_icon']:.2f} s)"
    )
    print(
        f"tray process RSS:         {rss_mb:.1f} MB now, {peak_rss / 2**20:.1f} MB peak (aim < {RSS_AIM_MB} MB)"
    )
    print(
        f"tray process idle CPU:    {cpu_percent:.2f} % over {wall:.0f} s (aim < {CPU_AIM_PERCENT:g} %)"
    )
    print(f"torch mapped in the tray: {'yes (BUG)' if torch_loaded else 'no'}")
    print(
        f"engine child processes:   {len(children)}, {child_rss:.1f} MB RSS (the trainer; imports torch)"
    )
    ok = rss_mb < RSS_AIM_MB and cpu_percent < CPU_AIM_PERCENT and not torch_loaded
    print("result: " + ("within the aims" if ok else "OUTSIDE the aims"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
