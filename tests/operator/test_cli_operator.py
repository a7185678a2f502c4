"""`lorafuse operator` refuses bad settings with one line and exit 2, before touching a cluster."""

from __future__ import annotations

import os
import subprocess
import sys


def _operator(*args: str, home: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("KUBECONFIG",)}
    env |= {"HOME": home, "KUBERNETES_SERVICE_HOST": ""}
    return subprocess.run(
        [
            sys.executable,
            "-c",
            "from lorafuse.cli import main; raise SystemExit(main())",
            "operator",
            *args,
        ],
        capture_output=True,
        text=True,
        check=False,
        env=env,
        cwd=home,
        timeout=60,
    )


def test_without_cluster_credentials_it_exits_2_with_one_line(tmp_path):
    proc = _operator("--metrics-port", "0", home=str(tmp_path))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert "no cluster credentials" in proc.stderr


def test_a_port_out_of_range_exits_2_naming_it(tmp_path):
    proc = _operator("--metrics-port", "70000", home=str(tmp_path))
    assert proc.returncode == 2
    assert "--metrics-port 70000" in proc.stderr
