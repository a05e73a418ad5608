"""Blob storage, where azure-ai-ml uploads local folders (code, models, data) and from where it
downloads job outputs and logs: put, head, get (with ranges), metadata and listing, for any
storage account (``blobs`` is keyed by the URL path: ``/container/name``)."""

from __future__ import annotations

import re
from typing import Any
from xml.sax.saxutils import escape

from tests.azure_fakes.base import ACCOUNT, BLOB, Route, Workspace
from tests.azure_fakes.http import Answer, Call

_LAST_MODIFIED = "Mon, 01 Jan 2024 00:00:00 GMT"
_HEADERS = {
    "Content-Type": "application/octet-stream",
    "ETag": '"0x1"',
    "Last-Modified": _LAST_MODIFIED,
    "x-ms-version": "2025-01-05",
}
_MISSING = Answer(404, b"", {**_HEADERS, "x-ms-error-code": "BlobNotFound"})


class BlobStorage(Workspace):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.blobs: dict[str, bytes] = {}
        self.blob_metadata: dict[str, dict[str, str]] = {}

    def put_blob(self, container: str, name: str, data: bytes) -> None:
        self.blobs[f"/{container}/{name}"] = data
        self.blob_metadata[f"/{container}/{name}"] = {}

    def _list_blobs(self, call: Call, match: re.Match[str]) -> Answer | None:
        if call.query.get("comp") != "list":
            return None
        container = call.path.strip("/")
        prefix, delimiter = call.query.get("prefix", ""), call.query.get("delimiter")
        items, prefixes = [], set()
        for key, data in sorted(self.blobs.items()):
            name = key.removeprefix(f"/{container}/")
            if name == key or not name.startswith(prefix):
                continue
            rest = name[len(prefix) :]
            if delimiter and delimiter in rest:
                prefixes.add(prefix + rest.split(delimiter)[0] + delimiter)
                continue
            meta = "".join(f"<{k}>{escape(v)}</{k}>" for k, v in self.blob_metadata[key].items())
            items.append(
                f"<Blob><Name>{escape(name)}</Name><Properties>"
                f"<Last-Modified>{_LAST_MODIFIED}</Last-Modified><Etag>0x1</Etag>"
                f"<Content-Length>{len(data)}</Content-Length>"
                "<Content-Type>application/octet-stream</Content-Type><BlobType>BlockBlob</BlobType>"
                f"</Properties><Metadata>{meta}</Metadata></Blob>"
            )
        items += [f"<BlobPrefix><Name>{escape(p)}</Name></BlobPrefix>" for p in sorted(prefixes)]
        listing = (
            '<?xml version="1.0" encoding="utf-8"?>'
            f'<EnumerationResults ServiceEndpoint="https://{ACCOUNT}{BLOB}/" '
            f'ContainerName="{container}"><Prefix>{escape(prefix)}</Prefix>'
            f"<Blobs>{''.join(items)}</Blobs><NextMarker /></EnumerationResults>"
        )
        return Answer(200, listing.encode(), {**_HEADERS, "Content-Type": "application/xml"})

    def _put_blob(self, call: Call, match: re.Match[str]) -> Answer | None:
        metadata = {
            name[len("x-ms-meta-") :]: value
            for name, value in call.headers.items()
            if name.lower().startswith("x-ms-meta-")
        }
        if call.query.get("comp") == "metadata":
            if call.path not in self.blobs:
                return _MISSING
            self.blob_metadata[call.path] = metadata
            return Answer(200, b"", _HEADERS)
        self.blobs[call.path], self.blob_metadata[call.path] = call.body, metadata
        return Answer(201, b"", _HEADERS)

    def _read_blob(self, call: Call, match: re.Match[str]) -> Answer | None:
        if call.path not in self.blobs:
            return _MISSING
        data = self.blobs[call.path]
        headers = {
            **_HEADERS,
            "Content-Length": str(len(data)),
            "x-ms-blob-type": "BlockBlob",
            **{f"x-ms-meta-{k}": v for k, v in self.blob_metadata[call.path].items()},
        }
        wanted = call.headers.get("x-ms-range")
        if call.method == "GET" and wanted and data:
            start_text, _, end_text = wanted.split("=")[1].partition("-")
            start = int(start_text)
            end = min(int(end_text or len(data) - 1), len(data) - 1)
            headers["Content-Length"] = str(end - start + 1)
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            return Answer(206, data[start : end + 1], headers)
        return Answer(200, data if call.method == "GET" else b"", headers)

    ROUTES = (
        Route("GET", BLOB, r"/[^/]+", _list_blobs),
        Route("PUT", BLOB, r"/.+", _put_blob),
        Route("HEAD", BLOB, r"/.+", _read_blob),
        Route("GET", BLOB, r"/.+", _read_blob),
    )
