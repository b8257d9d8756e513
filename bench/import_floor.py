"""What importing the controller's chosen dependencies costs before any fleetroll code runs (bench/REPORT.md, issue 24).

Each case is a fresh `python -c` of this checkout's venv, spawned from an empty directory (a busy cwd on sys.path
slows every import), 11 times; min and median printed. Run with PYTHONDONTWRITEBYTECODE unset:

    env -u PYTHONDONTWRITEBYTECODE .venv/bin/python bench/import_floor.py
"""

import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
env["PYTHONPATH"] = str(ROOT)
py = str(ROOT / ".venv" / "bin" / "python")
empty = tempfile.mkdtemp(prefix="frl-import-floor-")
cases = {"pass": "pass", "invoke": "import invoke", "paramiko": "import paramiko", "pydantic": "import pydantic",
         "yaml": "import yaml", "all4": "import invoke, paramiko, pydantic, yaml",
         "pydantic+model": "from pydantic import BaseModel\nclass A(BaseModel):\n  x: int\nA(x=1)",
         "inventory+render+transport": "import playbooks.render, playbooks.transport, playbooks.inventory"}
for name, code in cases.items():
    ts = []
    for _ in range(11):
        t = time.perf_counter()
        subprocess.run([py, "-c", code], env=env, check=True, cwd=empty)
        ts.append(time.perf_counter() - t)
    print(f"{name:28s} min {min(ts)*1000:6.1f} ms  median {statistics.median(ts)*1000:6.1f} ms")
os.rmdir(empty)  # made above, empty
