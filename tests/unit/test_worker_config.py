from pathlib import Path

import pytest

from expbuild_isolation.worker.config import ConfigError, load_worker_config

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("path", sorted((ROOT / "manifests" / "worker").glob("*.toml")), ids=lambda p: p.name)
def test_shipped_worker_configs_load(path):
    config = load_worker_config(path)
    assert config.executor.backends()


def test_seed_docker_config_shape(tmp_path):
    path = tmp_path / "w.toml"
    path.write_text("""
worker_id = "worker-docker-01"
[executor]
type = "docker"
[executor.docker]
image = "localhost/busybox:latest"
network_mode = "none"
[executor.docker.default_limits]
cpu_cores = 2.0
memory_bytes = 2147483648
max_processes = 128
network = "none"
""")
    config = load_worker_config(path)
    assert config.executor.backends() == ["docker"]
    limits = config.executor.docker.default_limits.to_limits()
    assert (limits.cpu_cores, limits.memory_bytes, limits.max_processes) == (2.0, 2**31, 128)


@pytest.mark.parametrize("body, fragment", [
    ("[executor.docker]\nmemory_limit = 5\n", "executor.docker.memory_limit: unknown key"),
    ("[executor]\ntype = 'lxc'\n", "executor.type"),
    ("[executor.docker.default_limits]\ncpu_cores = -1\n", "executor.docker.default_limits.cpu_cores"),
    ("[executor.docker]\nsecurity_opts = ['seccomp=unconfined']\n", "would weaken every task"),
    ("[executor]\ntype = 'auto'\nchain = []\n", "chain: must name at least one executor"),
    ("max_concurrent_tasks = 0\n", "max_concurrent_tasks"),
    ("this is not toml", "not valid TOML"),
])
def test_bad_config_names_the_file_and_the_key(tmp_path, body, fragment):
    path = tmp_path / "worker.toml"
    path.write_text(body)
    with pytest.raises(ConfigError) as caught:
        load_worker_config(path)
    assert str(caught.value).startswith(f"{path}: ")
    assert fragment in str(caught.value)


def test_missing_file_is_one_clear_line(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        load_worker_config(tmp_path / "absent.toml")
