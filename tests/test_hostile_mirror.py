"""A hostile client of `mirror serve` (issue #12, item 3 and the mirror's part of item 12): file
bytes only with the token or an unexpired signed URL, no symlinks, URLs never built from the
request's Host header, file names in Content-Disposition reduced to a harmless last part."""

from __future__ import annotations

import http.client
import json
import os
import time
import urllib.parse

import pytest

from crawler.mirror import (
    BackgroundServer,
    _file_url_key,
    file_entry,
    make_app,
    model_entry,
    sign_file_url,
    tiny_lora,
    version_entry,
    write_catalog,
)

TOKEN = "mirror-canary-3b9d2f7e"


def _get(url: str, path: str, headers: dict | None = None) -> tuple[int, dict, bytes]:
    u = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    try:
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


@pytest.fixture
def mirror(tmp_path):
    data = tiny_lora(1)
    models = [
        model_entry(
            1,
            versions=[version_entry(11, files=[file_entry(111, data, name="../../../x/evil.st")])],
        ),
        model_entry(2, versions=[version_entry(21, files=[file_entry(211, data)])]),
    ]
    write_catalog(tmp_path / "m", models, {111: data, 211: data})
    return tmp_path / "m", data


def test_file_bytes_need_the_token_or_a_valid_signed_url(mirror):
    root, data = mirror
    with BackgroundServer(make_app(root, token=TOKEN)) as server:
        listing = json.loads(
            _get(server.url, "/api/v1/models")[2]
        )  # public, as on Civitai: the ids leak
        assert listing["items"][0]["modelVersions"][0]["files"][0]["id"] == 111
        status, _, body = _get(server.url, "/mirror-files/111")
        assert status == 401 and data not in body and json.loads(body)["error"] == "Unauthorized"
        assert (
            _get(
                server.url,
                "/mirror-files/111?X-Amz-Expires=99999999999&X-Amz-Signature=" + "0" * 64,
            )[0]
            == 401
        )
        assert (
            _get(server.url, "/mirror-files/111", {"Authorization": f"Bearer {TOKEN}"})[2] == data
        )
        status, headers, _ = _get(
            server.url, "/api/download/models/11", {"Authorization": f"Bearer {TOKEN}"}
        )
        assert status == 307
        location = urllib.parse.urlsplit(headers["location"])
        assert TOKEN not in headers["location"]
        signed = f"{location.path}?{location.query}"
        assert _get(server.url, signed)[2] == data  # the redirect works without the token
        other = signed.replace("/mirror-files/111", "/mirror-files/211")
        assert _get(server.url, other)[0] == 401  # a signature is for one file only
        past = int(time.time()) - 10
        expired = f"/mirror-files/111?X-Amz-Expires={past}&X-Amz-Signature=" + sign_file_url(
            _file_url_key(TOKEN), 111, past
        )
        assert _get(server.url, expired)[0] == 401
        assert _get(server.url, "/api/download/models/11")[0] == 401


def test_symlinks_in_files_are_not_served(mirror, tmp_path):
    root, _ = mirror
    secret = tmp_path / "secret.txt"
    secret.write_text("not for you")
    os.symlink(secret, root / "files" / "999")
    (root / "files" / "211").unlink()
    os.symlink(
        root / "files" / "111", root / "files" / "211"
    )  # even one pointing inside the mirror
    with BackgroundServer(make_app(root)) as server:
        assert _get(server.url, "/mirror-files/999")[0] == 404
        assert _get(server.url, "/mirror-files/211")[0] == 404
        assert _get(server.url, "/mirror-files/111")[0] == 200


def test_urls_come_from_the_connection_or_the_public_url_never_from_host(mirror):
    root, _ = mirror
    evil = {"Host": "evil.example:666"}
    with BackgroundServer(make_app(root)) as server:
        doc = json.loads(_get(server.url, "/api/v1/models?limit=1", evil)[2])
        assert doc["metadata"]["nextPage"].startswith(server.url + "/api/v1/models?")
        assert doc["items"][0]["modelVersions"][0]["downloadUrl"].startswith(server.url + "/")
        status, headers, _ = _get(server.url, "/api/download/models/11", evil)
        assert status == 307 and headers["location"].startswith(server.url + "/mirror-files/111?")
    with BackgroundServer(make_app(root, public_url="https://mirror.example.org/")) as server:
        doc = json.loads(_get(server.url, "/api/v1/models?limit=1", evil)[2])
        assert doc["metadata"]["nextPage"].startswith("https://mirror.example.org/api/v1/models?")
        assert "evil.example" not in json.dumps(doc)


def test_content_disposition_names_are_reduced_to_a_harmless_last_part(mirror):
    root, _ = mirror
    with BackgroundServer(make_app(root)) as server:
        _, headers, _ = _get(server.url, "/mirror-files/111")
    assert headers["content-disposition"] == 'attachment; filename="evil.st"'
