"""A hostile API client (issue #12, item 5): image bombs are refused from their header, with a
JSON 413 or 400 that names no server path, before any pixel is decoded."""

from __future__ import annotations

import struct
import zlib

import pytest

from signer.query_encoder import MAX_IMAGE_PIXELS, ImageRejected, ImageTooLarge, load_images
from tests.service_support import Server, multipart


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares width x height pixels in a few dozen bytes (its pixel data never comes)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def test_an_image_bomb_is_refused_from_its_header(tmp_path):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_header(13000, 13000))  # under Pillow's own bomb limit
    with pytest.raises(ImageTooLarge, match="13000x13000"):
        load_images([bomb])


def test_the_pixels_of_one_query_are_capped_together(tmp_path):
    side = int(MAX_IMAGE_PIXELS**0.5)
    paths = []
    for i in range(5):  # each one allowed, all five together not: refused before decoding any
        paths.append(tmp_path / f"{i}.png")
        paths[-1].write_bytes(png_header(side, side))
    with pytest.raises(ImageTooLarge, match="together"):
        load_images(paths)


def test_garbage_is_a_clear_rejection_naming_only_the_file(tmp_path):
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not an image")
    with pytest.raises(ImageRejected) as info:
        load_images([junk])
    assert str(tmp_path) not in str(info.value) and "'junk.png' is not a readable image" in str(
        info.value
    )


def test_bad_and_oversized_uploads_are_json_4xx_without_server_paths(small_registry):
    server = Server.start("--db", small_registry, serve_args=("--schedule", "off"))
    try:
        body, ctype = multipart({"k": "3"}, [("image", "a.png", png_header(13000, 13000))] * 3)
        status, doc = server.post("/api/search", body, ctype)
        assert status == 413 and "13000x13000" in doc["error"]
        body, ctype = multipart({"k": "3"}, [("image", "../../etc/passwd", b"not an image")])
        status, doc = server.post("/api/search", body, ctype)
        assert status == 400 and "not a readable image" in doc["error"]
        for text in (doc["error"],):
            assert "/tmp" not in text and "carlos-upload" not in text and "passwd" not in text
    finally:
        server.stop()
