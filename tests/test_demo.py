"""The README's main job: `streamrnn demo` in a fresh virtualenv, after the README's install command."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_demo_in_a_fresh_virtualenv_shows_forecasts_within_30_seconds(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "torch==2.13.0", f"{ROOT}[demo]"]  # the README's command
    subprocess.run(pip, check=True, timeout=600, capture_output=True)
    env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": str(tmp_path), "LANG": "C.UTF-8"}
    assert shutil.which("mosquitto", path=env["PATH"]) is None  # no broker installed on this path
    out = subprocess.run([str(venv / "bin" / "streamrnn"), "demo", "--streams", "2", "--duration", "30"], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    text = out.stdout
    assert "metrics: http://127.0.0.1:" in text
    final = text[text.rindex("done") :]
    received = int(re.search(r"forecasts received (\d+)", final).group(1))
    assert received > 20, text[-2000:]
    for stream in ("reactor-01", "reactor-02"):
        assert re.search(rf"^{stream}\s+2026-\S+ \S+\s+v\d+\s+\S+\s+now [\d.]+ \| \+1 [\d.]+", final, re.M), final
    left = subprocess.run(["pgrep", "-f", str(venv)], capture_output=True, text=True).stdout.split()
    assert not [p for p in left if int(p) != os.getpid()], "demo left processes behind"
