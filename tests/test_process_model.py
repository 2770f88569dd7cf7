"""How many processes `serve` runs is predictable from the settings: one worker per CPU the
bridge may use (affinity, cgroup quota), and a render process only for a large fleet."""
import os

import pytest

from bridge.config import ConfigError, Settings
from bridge.cpus import MAX_DEFAULT_WORKERS, available_cpus, cgroup_quota, default_workers
from bridge.renderer import SizedRenderer


def _cgroup(tmp_path, v2=None, v1=None):
    if v2 is not None:
        (tmp_path / "cpu.max").write_text(v2 + "\n")
    if v1 is not None:
        (tmp_path / "cpu").mkdir()
        (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text(f"{v1[0]}\n")
        (tmp_path / "cpu" / "cpu.cfs_period_us").write_text(f"{v1[1]}\n")
    return str(tmp_path)


def test_a_cgroup_quota_lowers_the_workers_rounded_up(tmp_path):
    affinity = len(os.sched_getaffinity(0))
    assert cgroup_quota(_cgroup(tmp_path, v2="150000 100000")) == 1.5
    assert available_cpus(str(tmp_path)) == min(affinity, 2)
    assert default_workers(str(tmp_path)) == min(affinity, 2)


def test_a_quota_below_one_cpu_still_gets_one_worker(tmp_path):
    assert default_workers(_cgroup(tmp_path, v2="20000 100000")) == 1


def test_cgroup_v1_quota_is_read_and_minus_one_is_unlimited(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    assert cgroup_quota(_cgroup(tmp_path / "a", v1=(100000, 100000))) == 1.0
    assert cgroup_quota(_cgroup(tmp_path / "b", v1=(-1, 100000))) is None


def test_without_a_quota_every_cpu_of_the_affinity_counts_up_to_the_cap(tmp_path):
    unlimited = _cgroup(tmp_path, v2="max 100000")
    assert cgroup_quota(unlimited) is None
    affinity = len(os.sched_getaffinity(0))
    assert available_cpus(unlimited) == affinity
    assert default_workers(unlimited) == min(affinity, MAX_DEFAULT_WORKERS)


def test_workers_default_to_the_cpus_and_can_be_set():
    assert Settings.from_env({}).workers == default_workers()
    assert Settings.from_env({"HEARTBEAT_WORKERS": "3"}).workers == 3


def test_the_removed_threaded_worker_is_refused_by_name():
    assert Settings.from_env({"HEARTBEAT_WORKER_CLASS": "uvicorn"})  # what it always was
    with pytest.raises(ConfigError, match="HEARTBEAT_WORKER_CLASS.*removed"):
        Settings.from_env({"HEARTBEAT_WORKER_CLASS": "gthread"})


def test_render_process_threshold_is_a_setting():
    assert Settings.from_env({}).render_process_from == 20000
    assert Settings.from_env({"HEARTBEAT_RENDER_PROCESS_FROM": "0"}).render_process_from == 0
    with pytest.raises(ConfigError, match="HEARTBEAT_RENDER_PROCESS_FROM"):
        Settings.from_env({"HEARTBEAT_RENDER_PROCESS_FROM": "-1"})


class _Named:
    def __init__(self, name):
        self.name, self.closed = name, False

    def metrics(self, accept, accept_encoding):
        return [], self.name.encode()

    def status(self, args, if_none_match):
        return self.name, None

    def close(self):
        self.closed = True


def test_the_fleet_size_picks_the_renderer_and_is_recounted_after_a_while():
    sizes, now = [10], [0.0]
    sized = SizedRenderer(_Named("small"), _Named("large"), threshold=1000,
                          count=lambda: sizes[0], recount=30.0, clock=lambda: now[0])
    assert sized.metrics("", "")[1] == b"small"
    sizes[0] = 1000
    now[0] = 29.0
    assert sized.status({}, "")[0] == "small"  # counted 29 s ago: not yet asked again
    now[0] = 30.0
    assert sized.metrics("", "")[1] == b"large" and sized.status({}, "")[0] == "large"
    sizes[0] = 999
    now[0] = 61.0
    assert sized.metrics("", "")[1] == b"small"  # a fleet that shrank comes back
    sized.close()
    assert sized.small.closed and sized.large.closed
