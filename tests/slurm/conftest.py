"""The SLURM tier's fixture: one single-node cluster per test session (`tests/slurm/cluster.py`).

It fails, never skips, when the cluster cannot start: `make install` (as root) installs what it needs.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.slurm.cluster import Cluster, ClusterError


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A running cluster; `SLURM_CONF` points every SLURM command of this process (and its children) at it."""
    try:
        cluster = Cluster(tmp_path_factory.mktemp("slurm")).__enter__()
    except ClusterError as e:
        pytest.fail(f"the test SLURM cluster did not start: {e}", pytrace=False)
    before = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = cluster.env["SLURM_CONF"]
    try:
        yield cluster
    finally:
        cluster.stop()
        if before is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = before
