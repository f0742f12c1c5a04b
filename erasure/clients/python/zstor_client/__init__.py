"""Client for the zstor daemon (``zos stor daemon``): erasure-coded objects over zdb.

The daemon listens on a unix socket (and optionally TCP); every request carries the bearer
token from the zstor config. Object bodies stream both ways::

    from zstor_client import Client

    client = Client.from_config("~/.config/zos/stor.toml")      # socket and token from the config
    client.put("backups/db.tar", open("db.tar", "rb"))          # streamed upload
    with open("restored.tar", "wb") as out:
        client.get_to("backups/db.tar", out)                     # streamed, verified download
    print(client.list(), client.status())

Only the standard library is used. The API is described in ``erasure/docs/openapi.yaml``.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import urllib.parse
from dataclasses import dataclass
from typing import Any, BinaryIO, Dict, List, Optional, Union

__all__ = ["Client", "ZstorError", "ObjectInfo", "ObjectHead"]

#: Bytes read from the response per step when streaming an object to a file.
STREAM_STEP_BYTES = 1 << 20


class ZstorError(Exception):
    """The daemon refused or failed a request.

    ``status`` is the HTTP status (401 bad token, 404 no such object, 503 too few backends),
    ``message`` the daemon's explanation, which names the backends involved.
    """

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message


@dataclass(frozen=True)
class ObjectInfo:
    """An object as listed by the daemon."""

    name: str
    size: int
    chunks: int
    data_shards: int
    parity_shards: int
    blake3: str
    generation: int


@dataclass(frozen=True)
class ObjectHead:
    """Size and content hash (hex blake3) of an object."""

    size: int
    blake3: str


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("zstor", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self._path)
        self.sock = sock


class Client:
    """A connection factory for one daemon; each call uses a fresh HTTP connection."""

    def __init__(
        self,
        token: str,
        socket_path: Optional[str] = None,
        url: Optional[str] = None,
        timeout: float = 300.0,
    ) -> None:
        """Talk to the daemon on ``socket_path`` (a unix socket) or ``url`` (``http://host:port``)."""
        if (socket_path is None) == (url is None):
            raise ValueError("give exactly one of socket_path and url")
        self._token = token
        self._socket_path = os.path.expanduser(socket_path) if socket_path else None
        self._url = urllib.parse.urlsplit(url) if url else None
        self._timeout = timeout

    @classmethod
    def from_config(cls, config_path: str, timeout: float = 300.0) -> "Client":
        """Reads the socket and token from a zstor config (``[daemon]`` table)."""
        try:
            import tomllib  # Python 3.11+
        except ImportError as error:  # pragma: no cover
            raise RuntimeError("from_config needs Python 3.11 (tomllib)") from error
        path = os.path.expanduser(config_path)
        with open(path, "rb") as file:
            config = tomllib.load(file)
        daemon = config.get("daemon", {})
        socket_path = daemon.get("socket")
        if socket_path is None:
            state = config.get("state_dir") or os.path.join(
                os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state"), "zos", "stor"
            )
            socket_path = os.path.join(state, "zstor.sock")
        return cls(token=daemon["token"], socket_path=socket_path, timeout=timeout)

    # ------------------------------------------------------------------ plumbing

    def _connection(self) -> http.client.HTTPConnection:
        if self._socket_path is not None:
            return _UnixConnection(self._socket_path, self._timeout)
        assert self._url is not None
        if self._url.scheme == "https":
            return http.client.HTTPSConnection(self._url.netloc, timeout=self._timeout)
        return http.client.HTTPConnection(self._url.netloc, timeout=self._timeout)

    def _open(
        self,
        method: str,
        path: str,
        body: Union[bytes, BinaryIO, None] = None,
        length: Optional[int] = None,
    ) -> "tuple[http.client.HTTPConnection, http.client.HTTPResponse]":
        connection = self._connection()
        headers = {"Authorization": f"Bearer {self._token}"}
        if isinstance(body, (bytes, bytearray)):
            headers["Content-Length"] = str(len(body))
            connection.request(method, path, body=body, headers=headers)
        elif body is not None:
            if length is not None:
                headers["Content-Length"] = str(length)
                connection.request(method, path, body=body, headers=headers)
            else:
                headers["Transfer-Encoding"] = "chunked"
                connection.request(method, path, body=body, headers=headers, encode_chunked=True)
        else:
            connection.request(method, path, headers=headers)
        response = connection.getresponse()
        if response.status >= 400:
            text = response.read().decode("utf-8", "replace")
            connection.close()
            try:
                message = json.loads(text)["error"]
            except (ValueError, KeyError, TypeError):
                message = text or response.reason
            raise ZstorError(response.status, message)
        return connection, response

    def _call(self, method: str, path: str, body: Union[bytes, BinaryIO, None] = None, length: Optional[int] = None) -> bytes:
        connection, response = self._open(method, path, body, length)
        try:
            return response.read()
        finally:
            connection.close()

    def _json(self, method: str, path: str) -> Any:
        return json.loads(self._call(method, path))

    @staticmethod
    def _object_path(key: str) -> str:
        if not key:
            raise ValueError("object keys are 1 to 200 bytes")
        return "/v1/objects/" + urllib.parse.quote(key, safe="/")

    @staticmethod
    def _key_query(key: Optional[str]) -> str:
        return "" if key is None else "?" + urllib.parse.urlencode({"key": key})

    # ------------------------------------------------------------------ objects

    def put(self, key: str, data: Union[bytes, BinaryIO], length: Optional[int] = None) -> Dict[str, Any]:
        """Stores ``data`` (bytes or a binary file, streamed) as ``key``; returns the put report.

        For a regular file the length is taken from the file; other streams are sent chunked.
        """
        if not isinstance(data, (bytes, bytearray)) and length is None:
            try:
                length = os.fstat(data.fileno()).st_size - data.tell()
            except (AttributeError, OSError, ValueError):
                length = None
        return json.loads(self._call("PUT", self._object_path(key), data, length))

    def get(self, key: str) -> bytes:
        """Reads a whole object into memory."""
        connection, response = self._open("GET", self._object_path(key))
        try:
            expected = int(response.getheader("Content-Length", "-1"))
            data = response.read()
        except http.client.IncompleteRead as error:
            raise ZstorError(503, f"object {key!r} ended early: {len(error.partial)} bytes received") from error
        finally:
            connection.close()
        if expected >= 0 and len(data) != expected:
            raise ZstorError(503, f"object {key!r} ended early: {len(data)} of {expected} bytes")
        return data

    def get_to(self, key: str, output: BinaryIO) -> int:
        """Streams an object into ``output``; returns the bytes written. Raises
        :class:`ZstorError` when the daemon could not deliver all of it."""
        connection, response = self._open("GET", self._object_path(key))
        expected = int(response.getheader("Content-Length", "-1"))
        written = 0
        try:
            while True:
                try:
                    block = response.read(STREAM_STEP_BYTES)
                except http.client.IncompleteRead as error:
                    output.write(error.partial)
                    written += len(error.partial)
                    break
                if not block:
                    break
                output.write(block)
                written += len(block)
        finally:
            connection.close()
        if expected >= 0 and written != expected:
            raise ZstorError(503, f"object {key!r} ended early: {written} of {expected} bytes")
        return written

    def head(self, key: str) -> Optional[ObjectHead]:
        """Size and hash of an object, or ``None`` when there is none."""
        try:
            connection, response = self._open("HEAD", self._object_path(key))
        except ZstorError as error:
            if error.status == 404:
                return None
            raise
        try:
            response.read()
            return ObjectHead(
                size=int(response.getheader("Content-Length", "0")),
                blake3=(response.getheader("ETag") or "").strip('"'),
            )
        finally:
            connection.close()

    def delete(self, key: str) -> None:
        """Deletes an object (raises :class:`ZstorError` 404 when there is none)."""
        self._call("DELETE", self._object_path(key))

    def list(self) -> List[ObjectInfo]:
        """Every object."""
        return [ObjectInfo(**entry) for entry in self._json("GET", "/v1/objects")]

    # ------------------------------------------------------------------ operations

    def check(self, key: Optional[str] = None) -> List[Dict[str, Any]]:
        """Verifies every shard of ``key`` (or of all objects); one report per object."""
        return self._json("POST", "/v1/check" + self._key_query(key))

    def repair(self, key: Optional[str] = None) -> List[Dict[str, Any]]:
        """Rebuilds missing or corrupt shards; one report per object."""
        return self._json("POST", "/v1/repair" + self._key_query(key))

    def status(self) -> List[Dict[str, Any]]:
        """Health and usage of every backend."""
        return self._json("GET", "/v1/status")

    def metrics(self) -> str:
        """Prometheus metrics text."""
        return self._call("GET", "/metrics").decode()

    # ------------------------------------------------------------------ low level

    def put_chunk(self, chunk_id: bytes, data: bytes) -> None:
        """Stores a chunk under its id (the ChunkStore interface flists use)."""
        self._call("PUT", "/v1/chunks/" + chunk_id.hex(), data)

    def get_chunk(self, chunk_id: bytes) -> Optional[bytes]:
        """A chunk, or ``None`` when absent."""
        try:
            return self._call("GET", "/v1/chunks/" + chunk_id.hex())
        except ZstorError as error:
            if error.status == 404:
                return None
            raise

    def delete_chunk(self, chunk_id: bytes) -> bool:
        """Deletes a chunk; ``False`` when there was none."""
        try:
            self._call("DELETE", "/v1/chunks/" + chunk_id.hex())
            return True
        except ZstorError as error:
            if error.status == 404:
                return False
            raise

    def get_raw(self, backend: int, key: bytes) -> Optional[bytes]:
        """The raw value under ``key`` on backend number ``backend`` (a shard frame or a
        metadata record), or ``None``."""
        try:
            return self._call("GET", f"/v1/shards/{backend}/{key.hex()}")
        except ZstorError as error:
            if error.status == 404:
                return None
            raise
