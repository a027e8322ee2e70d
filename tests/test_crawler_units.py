"""Pure parts of the crawler: tolerant parsing, the retry policy, safetensors headers, error text."""

from __future__ import annotations

import json
import random
import struct
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crawler import stfile
from crawler.client import HTTP_RETRY
from crawler.fields import license_list, trained_words
from crawler.http_errors import (
    CivitaiError,
    classify_status,
    decode_json,
    parse_retry_after,
    safe_url,
)
from crawler.mirror import file_entry, model_entry, tiny_lora, version_entry
from crawler.parse import ApiSchemaError, parse_model

# ---------------------------------------------------------------- parsing

EXAMPLE = {  # the shape of research/civitai-api.md §11 (invented values)
    "id": 4811223,
    "name": "Ink Wash Landscapes",
    "description": "<p>Soft.</p>",
    "type": "LORA",
    "nsfw": False,
    "nsfwLevel": 3,
    "minor": False,
    "poi": False,
    "availability": "Public",
    "allowNoCredit": True,
    "allowCommercialUse": "{Image,RentCivit}",
    "allowDerivatives": True,
    "allowDifferentLicense": False,
    "stats": {"downloadCount": 1834, "thumbsUpCount": 212, "tippedAmountCount": None},
    "creator": {"username": "example_artist", "image": None},
    "tags": ["style", "ink"],
    "modelVersions": [
        {
            "id": 5120001,
            "index": 0,
            "name": "v2.0",
            "description": None,
            "baseModel": "Illustrious",
            "baseModelType": "Standard",
            "trainedWords": ["inkwash style"],
            "publishedAt": "2026-03-02T11:04:51.120Z",
            "availability": "Public",
            "nsfwLevel": 1,
            "stats": {"downloadCount": None},
            "files": [
                {
                    "id": 4977001,
                    "name": "inkwash.safetensors",
                    "sizeKB": 223180.4,
                    "type": "Model",
                    "metadata": {"format": "SafeTensor", "size": "full", "fp": "fp16"},
                    "hashes": {
                        "AutoV2": "9F8E7D6C5B",
                        "SHA256": "9F8E7D6C5B4A39281706F5E4D3C2B1A09F8E7D6C5B4A39281706F5E4D3C2B1A0",
                    },
                    "primary": True,
                },
                {
                    "id": 4977002,
                    "name": "dataset.zip",
                    "sizeKB": 81234.0,
                    "type": "Training Data",
                    "metadata": {"format": "Other"},
                    "hashes": {},
                },
            ],
            "downloadUrl": "https://civitai.com/api/download/models/5120001",
        }
    ],
}


def test_parse_a_full_item():
    m = parse_model(EXAMPLE)
    assert (m.id, m.name, m.type, m.nsfw_level, m.creator_username) == (
        4811223,
        "Ink Wash Landscapes",
        "LORA",
        3,
        "example_artist",
    )
    assert m.allow_commercial_use == ["Image", "RentCivit"] and m.tags == ["style", "ink"]
    assert "modelVersions" not in m.raw and m.raw_hash
    (v,) = m.versions
    assert v.base_model == "Illustrious" and v.is_sdxl and v.trained_words == ["inkwash style"]
    assert v.published_at == datetime(2026, 3, 2, 11, 4, 51, 120000, tzinfo=timezone.utc)
    assert (
        v.air == "urn:air:sdxl:lora:civitai:4811223@5120001"
    )  # Civitai's root ecosystem for Illustrious
    f, zip_ = v.files
    assert f.sha256 == EXAMPLE["modelVersions"][0]["files"][0]["hashes"]["SHA256"].lower()
    assert f.size_bytes == round(223180.4 * 1024) and f.primary is True and zip_.primary is None
    assert zip_.sha256 is None
    assert v.download_choice() == (f, None)


def test_nulls_absent_and_empty_fields():
    m = parse_model(
        {"id": "7", "name": None, "type": "LoCon", "stats": None, "tags": None, "modelVersions": []}
    )
    assert (m.id, m.name, m.description, m.creator_username, m.tags, m.versions) == (
        7,
        "",
        None,
        None,
        [],
        [],
    )
    assert m.download_count is None and m.allow_commercial_use is None
    m = parse_model(
        {"id": 8, "type": "DoRA", "modelVersions": [{"id": 80}]}
    )  # /models/{id} drops empty keys
    (v,) = m.versions
    assert (v.trained_words, v.files, v.base_model, v.published_at) == ([], [], None, None)
    assert v.download_choice() == (None, "the version lists no files")


def test_ids_are_required_where_they_identify_something():
    for bad in (
        {},
        {"id": None},
        {"id": True},
        {"id": -3},
        {"id": "x"},
        {"id": 2**40},
        [],
        "model",
        None,
    ):
        with pytest.raises(ApiSchemaError):
            parse_model(bad)
    m = parse_model(
        {"id": 1, "modelVersions": [{"name": "no id"}, "junk", {"id": 2, "files": [{"name": "x"}]}]}
    )
    assert [v.id for v in m.versions] == [2] and m.versions[0].files == []
    assert len(m.skipped) == 3 and all("skipped" not in s for s in m.skipped)


@pytest.mark.parametrize(
    "value, expected",
    [
        ("{Image,RentCivit}", ["Image", "RentCivit"]),
        ("Rent", ["Rent"]),
        (["Image", "Sell"], ["Image", "Sell"]),
        ("{}", []),
        ('{"Image","Sell"}', ["Image", "Sell"]),
        (None, None),
        (5, None),
        ([1, "Sell", None], ["Sell"]),
    ],
)
def test_license_field_shapes(value, expected):
    assert license_list(value) == expected


@pytest.mark.parametrize(
    "value, expected",
    [
        (["a", "b"], ["a", "b"]),
        ("one, two,three", ["one, two,three"]),
        (["x, y", "z", "x"], ["x, y", "z", "x"]),
        ([], []),
        (None, []),
        ([None, 3, " "], [" "]),
        ({"a": 1}, []),
        (
            ["(hands on own chest, deep skin:1.2)", " spaced ", "", "ünï"],
            ["(hands on own chest, deep skin:1.2)", " spaced ", "", "ünï"],
        ),
    ],
)
def test_trained_words_are_stored_verbatim(value, expected):
    """Entries as Civitai gives them: not split on commas, not stripped, not de-duplicated (issue #11)."""
    assert trained_words(value) == expected


def test_primary_absent_follows_civitai_scoring_and_pickles_are_never_chosen():
    def version(files):
        return parse_model(model_entry(1, versions=[version_entry(2, files=files)])).versions[0]

    pt = file_entry(3, b"p", name="x.pt", format="PickleTensor", primary=None)
    st_ = file_entry(4, b"s", name="x.safetensors", primary=None)
    v = version([pt, st_])
    assert v.primary_file().civitai_file_id == 4 and v.download_choice()[0].civitai_file_id == 4
    v = version([file_entry(3, b"p", name="x.pt", format="PickleTensor", primary=True), st_])
    assert v.primary_file().civitai_file_id == 3 and v.download_choice()[0].civitai_file_id == 4
    chosen, why = version(
        [file_entry(3, b"p", name="model.ckpt", format=None, primary=True)]
    ).download_choice()
    assert chosen is None and "pickle" in why
    # a pickle that claims to be SafeTensor by its format but is named .bin is still treated as pickle
    assert version([file_entry(5, b"b", name="weights.bin")]).download_choice()[0] is None


# hypothesis: whatever JSON arrives, the parser returns a model or raises ApiSchemaError
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=5)
    ),
    max_leaves=25,
)
KEYS = [
    "id",
    "name",
    "type",
    "nsfw",
    "stats",
    "creator",
    "tags",
    "modelVersions",
    "allowCommercialUse",
    "baseModel",
    "trainedWords",
    "files",
    "hashes",
    "primary",
    "sizeKB",
    "metadata",
    "publishedAt",
    "SHA256",
]


def _mutate(doc, data):
    """Replace, drop or null random keys at every level of a valid item."""
    if isinstance(doc, dict):
        out = {}
        for k, v in doc.items():
            choice = data.draw(st.integers(0, 9))
            if choice == 0:
                continue
            out[k] = (
                None if choice == 1 else data.draw(json_values) if choice == 2 else _mutate(v, data)
            )
        if data.draw(st.booleans()):
            out[data.draw(st.sampled_from(KEYS))] = data.draw(json_values)
        return out
    if isinstance(doc, list):
        return [_mutate(x, data) for x in doc]
    return doc


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_parser_never_crashes_on_mutated_items(data):
    item = model_entry(
        1,
        versions=[
            version_entry(2, files=[file_entry(3, b"abc"), file_entry(4, b"d", primary=None)])
        ],
    )
    doc = _mutate(item, data)
    try:
        m = parse_model(doc)
    except ApiSchemaError:
        return
    for v in m.versions:  # every derived property works on whatever survived
        v.download_choice(), v.primary_file(), v.is_sdxl
        json.dumps(m.raw, default=str)


@settings(max_examples=200, deadline=None)
@given(json_values)
def test_parser_never_crashes_on_arbitrary_json(doc):
    try:
        parse_model(doc)
    except ApiSchemaError:
        pass


@settings(max_examples=100, deadline=None)
@given(
    model_id=st.integers(1, 2**31 - 1),
    name=st.text(max_size=30).filter(lambda s: "\x00" not in s),
    words=st.lists(
        st.text(alphabet="abcxyz ", min_size=1, max_size=8).filter(str.strip), max_size=4
    ),
    base=st.sampled_from(["SDXL 1.0", "Pony", "Illustrious", "SD 1.5"]),
    data=st.binary(max_size=64),
)
def test_parser_reads_back_what_the_catalog_helpers_write(model_id, name, words, base, data):
    item = model_entry(
        model_id,
        name=name,
        versions=[
            version_entry(7, base_model=base, trained_words=words, files=[file_entry(9, data)])
        ],
    )
    m = parse_model(json.loads(json.dumps(item)))
    assert (m.id, m.name) == (model_id, name.encode("utf-8", "replace").decode())
    (v,) = m.versions
    assert v.base_model == base and v.is_sdxl == (base != "SD 1.5")
    assert v.trained_words == words
    assert v.files[0].sha256 == __import__("hashlib").sha256(data).hexdigest()


# ---------------------------------------------------------------- retry policy

NOW = datetime(2026, 11, 26, 12, 0, 0, tzinfo=timezone.utc)


@pytest.mark.parametrize(
    "value, expected",
    [
        ("120", 120.0),
        ("0", 0.0),
        (" 2 ", 2.0),
        ("1.5", 1.5),
        ("-5", 0.0),
        (format_datetime(NOW + timedelta(seconds=30), usegmt=True), 30.0),
        (format_datetime(NOW - timedelta(seconds=30), usegmt=True), 0.0),
        ("garbage", None),
        ("", None),
        (None, None),
        ("Wed, 99 Foo 2026", None),
        ("12abc", None),
    ],
)
def test_parse_retry_after(value, expected):
    assert parse_retry_after(value, NOW) == expected


def test_backoff_is_exponential_capped_and_jittered():
    rng = random.Random(1)
    for attempt in range(1, 12):
        ceiling = min(30.0, 1.0 * 2 ** (attempt - 1))
        waits = [HTTP_RETRY.delay(attempt, rng=rng) for _ in range(200)]
        assert all(ceiling / 2 <= w <= ceiling for w in waits)
        assert len(set(waits)) > 100  # jitter spreads them
    assert HTTP_RETRY.delay(10_000, rng=rng) <= 30.0


def test_retry_after_only_lengthens_the_wait_and_a_too_long_one_stops_retries():
    policy, rng = replace(HTTP_RETRY, initial=1.0, cap=4.0, retry_after_max=60.0), random.Random(0)
    assert policy.delay(1, 10.0, rng) == 10.0
    assert 0.5 <= policy.delay(1, 0.0, rng) <= 1.0
    assert 0.5 <= policy.delay(1, None, rng) <= 1.0
    assert policy.delay(3, 61.0, rng) is None


@pytest.mark.parametrize(
    "status, body, retryable",
    [
        (429, b'{"error":"Rate limited"}', True),
        (429, b'{"error":"You\'ve requested too many pages, please use cursors instead"}', False),
        (500, b"", True),
        (502, b"", True),
        (503, b"", True),
        (504, b"", True),
        (524, b"", True),
        (408, b"", True),
        (400, b"", False),
        (401, b"", False),
        (403, b"", False),
        (404, b"", False),
        (410, b"", False),
        (451, b"", False),
    ],
)
def test_classify_status(status, body, retryable):
    assert classify_status(status, body)[0] is retryable


def test_html_and_malformed_json_are_retryable():
    for body, ctype in (
        (b"<!DOCTYPE html><html>down</html>", "text/html"),
        (b"  <html>", "application/json"),
        (b'{"items": [', "application/json"),
        (b"\xff\xfe", "application/json"),
    ):
        with pytest.raises(CivitaiError) as info:
            decode_json(body, ctype)
        assert info.value.retryable
    assert decode_json(b'{"items": []}', "application/json") == {"items": []}


def test_error_text_never_holds_a_query_string_or_user_info():
    url = "https://user:pw@storage.example/bucket/f?X-Amz-Signature=SECRETSIG&token=CANARY#frag"
    err = CivitaiError("not found", url=url, status=404)
    for text in (str(err), repr(err), str(err.args)):
        assert "SECRETSIG" not in text and "CANARY" not in text and "pw" not in text
        assert "https://storage.example/bucket/f" in text
    assert safe_url("/api/v1/models?cursor=5") == "/api/v1/models"


# ---------------------------------------------------------------- safetensors


def _header(obj, data=b"", *, length=None):
    raw = json.dumps(obj).encode()
    return struct.pack("<Q", length if length is not None else len(raw)) + raw + data


MALFORMED = {
    "empty": b"",
    "short": b"\x01\x00",
    "huge header": struct.pack("<Q", 2**40) + b"{}",
    "header past the end": struct.pack("<Q", 1000) + b'{"a":1}',
    "not an object": _header([1, 2]),
    "not json": struct.pack("<Q", 5) + b"{abc}",
    "not utf-8": struct.pack("<Q", 4) + b"{\xff\xfe}",
    "no tensors": _header({"__metadata__": {"a": "b"}}),
    "bad dtype": _header({"t": {"dtype": "F7", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4),
    "shape mismatch": _header(
        {"t": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}, b"\0" * 4
    ),
    "offsets past data": _header(
        {"t": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 4
    ),
    "overlap": _header(
        {
            "a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
            "b": {"dtype": "F32", "shape": [1], "data_offsets": [2, 6]},
        },
        b"\0" * 6,
    ),
    "hole": _header({"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, b"\0" * 8),
    "trailing bytes": _header(
        {"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 9
    ),
    "metadata not strings": _header(
        {"__metadata__": {"a": 1}, "t": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}},
        b"\0",
    ),
    "duplicate keys": struct.pack("<Q", 2 * 44 + 1)
    + (
        b'{"t":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},'
        b'"t":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}'
    )
    + b"\0",
    "pickle": b"\x80\x04\x95" + b"\0" * 64,
    "zip (torch)": b"PK\x03\x04" + b"\0" * 64,
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_safetensors_are_rejected(name, tmp_path):
    data = MALFORMED[name]
    path = tmp_path / "f.safetensors"
    path.write_bytes(data)
    with pytest.raises(stfile.InvalidSafetensors):
        stfile.validate_file(path)


def test_valid_safetensors_pass(tmp_path):
    path = tmp_path / "ok.safetensors"
    path.write_bytes(tiny_lora(3))
    tensors = stfile.validate_file(path)
    assert any(k.endswith(".lora_down.weight") for k in tensors)
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    assert set(safetensors_numpy.load(path.read_bytes())) == set(
        tensors
    )  # the reference reader agrees


def test_the_crawler_builds_on_registry_only():
    """crawler/ may import registry, never signer or plugins (docs/architecture.md, Packages and dependency rule)."""
    import ast

    from tests.conftest import REPO

    offenders = []
    for path in (REPO / "crawler").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module]
                if isinstance(node, ast.ImportFrom) and node.module and node.level == 0
                else []
            )
            offenders += [
                f"{path.name}: {n}" for n in names if n.split(".")[0] in {"signer", "plugins"}
            ]
    assert offenders == []
