"""gs:// file identity: the object's generation and CRC32C, read through the real google-cloud-storage
client from a local emulator of the Cloud Storage JSON API (STORAGE_EMULATOR_HOST).

A rewrite that keeps the size (and whatever mtime a tool sets) gets a new generation from the
server, so the values-cache key changes and the file is read again; an object that is gone is an
error naming it.
"""

import base64
import json
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import google_crc32c
import pytest

import stepnorm.sources as sources
from stepnorm.config import load_config
from stepnorm.errors import InputDataError


class _Store:
    def __init__(self):
        self.objects = {}  # (bucket, name) -> (generation, bytes)
        self.requests = []

    def put(self, bucket, name, data):
        gen = self.objects.get((bucket, name), (1000, b""))[0] + 1
        self.objects[(bucket, name)] = (gen, data)


def _handler(store):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            store.requests.append(self.path)
            parts = urllib.parse.urlsplit(self.path).path.split("/")
            # /storage/v1/b/<bucket>/o/<object, URL-encoded>; /storage/v1/b/<bucket> (bucket metadata)
            if len(parts) == 5 and parts[1:4] == ["storage", "v1", "b"]:
                self._reply(200, {"kind": "storage#bucket", "name": parts[4]})
                return
            if len(parts) != 7 or parts[1:4] != ["storage", "v1", "b"] or parts[5] != "o":
                self.send_error(400)
                return
            bucket, name = parts[4], urllib.parse.unquote(parts[6])
            if (bucket, name) not in store.objects:
                self._reply(404, {"error": {"code": 404, "message": "No such object"}})
                return
            gen, data = store.objects[(bucket, name)]
            crc = base64.b64encode(google_crc32c.Checksum(data).digest()).decode()
            self._reply(200, {"kind": "storage#object", "bucket": bucket, "name": name, "size": str(len(data)),
                              "generation": str(gen), "metageneration": "1", "crc32c": crc,
                              "updated": "2026-01-01T00:00:00.000Z"})

        def _reply(self, code, doc):
            body = json.dumps(doc).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return Handler


@pytest.fixture
def gcs(monkeypatch):
    store = _Store()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(store))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{server.server_address[1]}")
    monkeypatch.setattr(sources, "_GCS_CLIENT", None)
    yield store
    server.shutdown()
    server.server_close()


def test_identity_is_generation_and_crc32c(gcs):
    gcs.put("bkt", "rlds/ds/1.0.0/ds-train.tfrecord-00000-of-00001", b"x" * 100)
    ident = sources._file_identity("gs://bkt/rlds/ds/1.0.0/ds-train.tfrecord-00000-of-00001")
    expected_crc = base64.b64encode(google_crc32c.Checksum(b"x" * 100).digest()).decode()
    assert ident == {"file": "gs://bkt/rlds/ds/1.0.0/ds-train.tfrecord-00000-of-00001", "size": 100,
                     "generation": 1001, "crc32c": expected_crc}
    assert any(r.startswith("/storage/v1/b/bkt/o/rlds%2Fds%2F1.0.0%2F") for r in gcs.requests), gcs.requests


def test_same_size_rewrite_changes_the_values_key(gcs, tmp_path, monkeypatch):
    path = "gs://bkt/rlds/ds/1.0.0/ds-train.tfrecord-00000-of-00001"
    gcs.put("bkt", "rlds/ds/1.0.0/ds-train.tfrecord-00000-of-00001", b"a" * 64)
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("horizon: 4\ndatasets:\n  - name: ds\n    format: rlds\n    path: gs://bkt/rlds/ds/1.0.0\n"
                        "    action_key: action\n")
    ds = load_config(cfg_file).datasets[0]
    # The task list and the metadata hash read dataset_info.json through tf.io.gfile: not emulated here.
    monkeypatch.setattr(sources, "read_tasks", lambda d: [sources.ReadTask(d.name, path)])
    monkeypatch.setattr(sources, "_metadata_hash", lambda d: "meta")
    (first,) = sources.task_values_keys(ds)
    assert sources.task_values_keys(ds) == [first]  # stable while the object is unchanged
    gcs.put("bkt", "rlds/ds/1.0.0/ds-train.tfrecord-00000-of-00001", b"a" * 64)  # same bytes, new generation
    (second,) = sources.task_values_keys(ds)
    assert second[1] != first[1]
    gcs.put("bkt", "rlds/ds/1.0.0/ds-train.tfrecord-00000-of-00001", b"b" * 64)  # same size, new content
    (third,) = sources.task_values_keys(ds)
    assert third[1] not in (first[1], second[1])


def test_missing_object_is_an_error_naming_it(gcs):
    with pytest.raises(InputDataError) as err:
        sources._file_identity("gs://bkt/nothing-here")
    assert "gs://bkt/nothing-here" in str(err.value) and "no such object" in str(err.value)


def test_without_the_client_library_the_error_says_what_to_install(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "google.api_core", None)
    with pytest.raises(InputDataError) as err:
        sources._file_identity("gs://bkt/x")
    assert "stepnorm[gcs]" in str(err.value)
