"""The Python client against a real `zos stor daemon` over six real `zdb` servers (4+2).

Binaries: ZDB_BIN and ZOS_BIN, or built with cargo from this repository when unset.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import subprocess
import time
import tomllib
from pathlib import Path
from typing import Iterator, List

import pytest

from zstor_client import Client, ZstorError

REPO = Path(__file__).resolve().parents[4]


def _binaries() -> "tuple[str, str]":
    zdb, zos = os.environ.get("ZDB_BIN"), os.environ.get("ZOS_BIN")
    if zdb and zos:
        return zdb, zos
    cargo = shutil.which("cargo")
    assert cargo, "cargo is needed to build zdb and zos (or set ZDB_BIN and ZOS_BIN)"
    subprocess.run(
        [cargo, "build", "-p", "dataplane", "--bin", "zdb", "-p", "control", "--bin", "zos"],
        cwd=REPO,
        check=True,
    )
    metadata = subprocess.run(
        [cargo, "metadata", "--format-version", "1", "--no-deps"], cwd=REPO, check=True, capture_output=True
    )
    target = Path(json.loads(metadata.stdout)["target_directory"]) / "debug"
    return str(target / "zdb"), str(target / "zos")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait(predicate, what: str, seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


class Cluster:
    def __init__(self, root: Path) -> None:
        self.zdb_bin, self.zos_bin = _binaries()
        self.root = root
        self.zdbs: List[subprocess.Popen] = []
        self.ports: List[int] = []
        for index in range(6):
            port = _free_port()
            folder = root / f"zdb{index}"
            folder.mkdir()
            process = subprocess.Popen(
                [self.zdb_bin, "--listen", "127.0.0.1", "--port", str(port),
                 "--data", str(folder / "data"), "--index", str(folder / "index")],
                stdout=subprocess.DEVNULL, stderr=open(folder / "zdb.log", "wb"),
            )
            self.zdbs.append(process)
            self.ports.append(port)
            _wait(lambda: _port_open(port), f"zdb on port {port}")
        self.config = root / "stor.toml"
        backends: List[str] = []
        for port in self.ports:
            backends += ["--backend", f"zdb://127.0.0.1:{port}/default"]
        subprocess.run(
            [self.zos_bin, "stor", "init", "--data-shards", "4", "--parity-shards", "2",
             "--chunk-size", "1048576", "--config", str(self.config), *backends],
            check=True, capture_output=True,
        )
        with open(self.config, "rb") as file:
            self.token = tomllib.load(file)["daemon"]["token"]
        self.socket = root / "zstor.sock"
        environment = dict(os.environ, XDG_STATE_HOME=str(root / "state"))
        self.daemon = subprocess.Popen(
            [self.zos_bin, "stor", "daemon", "--config", str(self.config), "--socket", str(self.socket)],
            stdout=subprocess.DEVNULL, stderr=open(root / "daemon.log", "wb"), env=environment,
        )
        _wait(self.socket.exists, "the daemon's socket")

    def client(self, token: "str | None" = None) -> Client:
        return Client(token=token or self.token, socket_path=str(self.socket), timeout=60)

    def kill_zdb(self, index: int) -> None:
        self.zdbs[index].kill()
        self.zdbs[index].wait()

    def stop(self) -> None:
        for process in [self.daemon, *self.zdbs]:
            if process.poll() is None:
                process.terminate()
        for process in [self.daemon, *self.zdbs]:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()


@pytest.fixture()
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    running = Cluster(tmp_path)
    try:
        yield running
    finally:
        running.stop()


def test_objects_round_trip_list_head_delete(cluster: Cluster) -> None:
    client = cluster.client()
    data = os.urandom(3 * 1024 * 1024 + 17)
    report = client.put("photos/cat.jpg", data)
    assert report["size"] == len(data)
    assert report["chunks"] == 4
    assert report["degraded_chunks"] == 0
    assert client.get("photos/cat.jpg") == data
    head = client.head("photos/cat.jpg")
    assert head is not None and head.size == len(data) and head.blake3 == report["blake3"]
    client.put("empty", b"")
    assert client.get("empty") == b""
    assert [entry.name for entry in client.list()] == ["empty", "photos/cat.jpg"]
    client.delete("photos/cat.jpg")
    assert client.head("photos/cat.jpg") is None
    with pytest.raises(ZstorError) as error:
        client.get("photos/cat.jpg")
    assert error.value.status == 404


def test_streams_files_both_ways(cluster: Cluster, tmp_path: Path) -> None:
    client = cluster.client()
    source = tmp_path / "source.bin"
    source.write_bytes(os.urandom(5 * 1024 * 1024))
    with open(source, "rb") as file:
        client.put("big", file)
    # A pipe-like stream without a length goes chunked.
    client.put("piped", io.BufferedReader(io.BytesIO(b"streamed without a length" * 1000)))
    target = io.BytesIO()
    assert client.get_to("big", target) == source.stat().st_size
    assert target.getvalue() == source.read_bytes()
    assert client.get("piped") == b"streamed without a length" * 1000


def test_wrong_token_is_refused(cluster: Cluster) -> None:
    with pytest.raises(ZstorError) as error:
        cluster.client(token="not-the-token").list()
    assert error.value.status == 401


def test_survives_two_dead_backends_and_fails_clearly_with_three(cluster: Cluster) -> None:
    client = cluster.client()
    data = os.urandom(2 * 1024 * 1024 + 5)
    client.put("precious", data)
    cluster.kill_zdb(1)
    cluster.kill_zdb(4)
    assert client.get("precious") == data
    status = client.status()
    assert sum(1 for backend in status if not backend["reachable"]) == 2
    cluster.kill_zdb(0)
    with pytest.raises(ZstorError) as error:
        client.get("precious")
    assert error.value.status == 503
    assert str(cluster.ports[0]) in error.value.message or "ended early" in error.value.message


def test_check_repair_metrics_and_low_level_access(cluster: Cluster) -> None:
    client = cluster.client()
    client.put("doc", b"x" * 100_000)
    checks = client.check()
    assert checks[0]["name"] == "doc" and checks[0]["problems"] == []
    assert client.repair("doc")[0]["failures"] == []
    client.put_chunk(bytes.fromhex("abcd"), b"chunk bytes")
    assert client.get_chunk(bytes.fromhex("abcd")) == b"chunk bytes"
    assert client.delete_chunk(bytes.fromhex("abcd"))
    assert client.get_chunk(bytes.fromhex("abcd")) is None
    record = client.get_raw(0, b"zs:m:doc")
    assert record is not None and record[:4] == b"ZSMR"
    assert "zstor_objects_stored_total 1" in client.metrics()
