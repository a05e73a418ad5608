"""Binary batches over real HTTP: ``Content-Type: application/x-npy`` bodies under azmlinfsrv.

score.py reads a ``.npy`` body (what ``numpy.save`` writes) of shape (n, 784) or (n, 28, 28),
float32 in [0, 1] or uint8 0-255, for the DNN and the CNN alike, and answers what it answers for
the same images sent as JSON. Every malformed body gets a 4xx that says what is wrong; an object
array (pickled Python objects) is refused without being unpickled; the server keeps serving.
"""

from __future__ import annotations

import builtins
import io
import json
from pathlib import Path

import numpy as np
import pytest

from tests.serving.server_fixtures import RunningServer

NPY = {"Content-Type": "application/x-npy"}


def npy(array: np.ndarray, **kwargs: bool) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, **kwargs)
    return buffer.getvalue()


def _post_npy(server: RunningServer, body: bytes, content_type: str = NPY["Content-Type"]):
    return server.client.request("POST", "/score", body, {"Content-Type": content_type})


def _still_serving(server: RunningServer) -> None:
    reply = _post_npy(server, npy(np.zeros((1, 28, 28), np.uint8)))
    assert reply.status == 200, reply.body[:300]
    assert len(reply.json()["probabilities"][0]) == 10


@pytest.mark.slow
def test_npy_bodies_score_exactly_like_json(each_server, mnist_test):
    """float32 and uint8, flat and as rows: the same predictions as the JSON of the images."""
    images, _ = mnist_test
    pixels = images[:64]  # uint8 (64, 28, 28)
    scaled = pixels.astype(np.float32) / 255
    expected = each_server.client.score({"data": scaled.reshape(64, 784).tolist()})
    assert expected.status == 200, expected.body[:300]
    for body in (
        npy(scaled.reshape(64, 784)),
        npy(scaled),
        npy(pixels.reshape(64, 784)),
        npy(pixels),
        npy(np.asfortranarray(scaled.reshape(64, 784))),  # column-major, as numpy.save keeps it
    ):
        reply = _post_npy(each_server, body)
        assert reply.status == 200, reply.body[:300]
        assert reply.headers["Content-Type"] == "application/json"
        answer = reply.json()
        assert answer["predictions"] == expected.json()["predictions"]
        np.testing.assert_allclose(
            answer["probabilities"], expected.json()["probabilities"], rtol=0, atol=1e-6
        )


def _header(text: str, version: bytes = b"\x01\x00") -> bytes:
    """A .npy header holding ``text`` as its dictionary, padded as numpy pads it."""
    header = text.encode("latin-1")
    header += b" " * (63 - (10 + len(header)) % 64) + b"\n"
    return b"\x93NUMPY" + version + len(header).to_bytes(2, "little") + header


GOOD = npy(np.full((2, 784), 0.5, np.float32))
NAN = np.full((2, 784), 0.5, np.float32)
NAN[1, 7] = np.nan
INF = np.full((1, 28, 28), 0.5, np.float32)
INF[0, 1, 2] = np.inf
OVER = np.full((1, 784), 0.5, np.float32)
OVER[0, 9] = 1.5
NEGATIVE = np.full((1, 784), 0.5, np.float32)
NEGATIVE[0, 3] = -0.25

REFUSED = [  # name, body, status, code, a fragment of the message
    ("float64", npy(np.zeros((2, 784))), 400, "InvalidDtype", "float64"),
    ("int32", npy(np.zeros((2, 784), np.int32)), 400, "InvalidDtype", "float32 (values in [0, 1])"),
    ("structured", npy(np.zeros((2, 784), [("a", "<f4")])), 400, "InvalidDtype", "dtype '|V4'"),
    ("object", npy(np.array([0.5, None], object), allow_pickle=True), 400, "InvalidDtype",
     "never unpickles"),
    ("json-body", b'{"data": [[0.5]]}', 400, "NotNpy", "Content-Type: application/json"),
    ("empty", b"", 400, "NotNpy", "starts with nothing"),
    ("magic-only", b"\x93NUMPY", 400, "InvalidNpy", "version nothing"),
    ("version-3", b"\x93NUMPY\x03\x00" + GOOD[8:], 400, "InvalidNpy", "version 3.0"),
    ("header-not-a-dict", _header("[1, 2]"), 400, "InvalidNpy", "header cannot be read"),
    ("header-code", _header("{'descr': __import__('os').system('true')}"), 400, "InvalidNpy",
     "header cannot be read"),
    ("header-no-shape", _header("{'descr': '<f4', 'fortran_order': False}"), 400, "InvalidNpy",
     "correct keys"),
    ("flat-783", npy(np.zeros((2, 783), np.float32)), 400, "InvalidShape", "shape (2, 783)"),
    ("rows-27", npy(np.zeros((2, 28, 27), np.uint8)), 400, "InvalidShape", "(n, 28, 28)"),
    ("one-image", npy(np.zeros(784, np.float32)), 400, "InvalidShape", "reshape it to (1, 784)"),
    ("4-d", npy(np.zeros((2, 28, 28, 1), np.float32)), 400, "InvalidShape", "(n, 784)"),
    ("no-images", npy(np.zeros((0, 784), np.float32)), 400, "EmptyBatch", "no images"),
    ("truncated", GOOD[:-10], 400, "IncompleteBody", "ends after 6,262 bytes"),
    ("header-only", GOOD[:128], 400, "IncompleteBody", "announces 6,272"),
    ("trailing-bytes", GOOD + b"\0" * 4, 400, "InvalidNpy", "nothing after it"),
    ("nan", npy(NAN), 400, "InvalidValue", "Pixel 7 of image 1 of the .npy array is nan"),
    ("inf", npy(INF), 400, "InvalidValue", "Pixel 30 of image 0 of the .npy array is inf"),
    ("over-1", npy(OVER), 400, "InvalidValue", "is 1.5: outside [0, 1]"),
    ("negative", npy(NEGATIVE), 400, "InvalidValue", "is -0.25: outside [0, 1]"),
    ("batch-513", npy(np.zeros((513, 784), np.uint8)), 413, "BatchTooLarge",
     "batch of 513 images"),
    ("header-claims-a-million", _header("{'descr': '|u1', 'fortran_order': False, "
     "'shape': (1000000, 784), }"), 413, "BatchTooLarge", "batch of 1000000 images"),
]  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize(
    ("body", "status", "code", "fragment"),
    [pytest.param(*case[1:], id=case[0]) for case in REFUSED],
)
def test_each_bad_npy_body_gets_its_4xx_and_message(scoring_server, body, status, code, fragment):
    reply = _post_npy(scoring_server, body)
    assert reply.status == status, reply.body[:500]
    error = reply.json()["error"]
    assert error["code"] == code, error
    assert fragment in error["message"], error["message"]
    assert len(error["message"]) < 1000
    _still_serving(scoring_server)


@pytest.mark.slow
def test_the_cnn_server_refuses_bad_npy_bodies_with_its_own_shapes(cnn_server):
    reply = _post_npy(cnn_server, npy(np.zeros((2, 28, 27), np.uint8)))
    assert reply.status == 400, reply.body[:300]
    assert "(n, 784) or (n, 28, 28)" in reply.json()["error"]["message"]
    _still_serving(cnn_server)


class _OpensAFile:
    """Unpickling this calls ``open(path, "w")``: the file's existence tells it happened."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return builtins.open, (str(self.path), "w")


def _bait(path: Path) -> bytes:
    return npy(np.array([_OpensAFile(path)] * 2, dtype=object), allow_pickle=True)


@pytest.mark.slow
def test_a_pickled_array_is_refused_and_never_unpickled(each_server, tmp_path):
    proof = tmp_path / "unpickled-here"
    np.load(io.BytesIO(_bait(proof)), allow_pickle=True)  # the bait works: loading it opens
    assert proof.exists()
    target = tmp_path / "unpickled-by-the-server"
    for content_type in ("application/x-npy", "application/json", "application/octet-stream"):
        reply = _post_npy(each_server, _bait(target), content_type)
        assert reply.status in (400, 415), reply.body[:300]
        assert not target.exists(), f"the server unpickled the body ({content_type})"
    message = _post_npy(each_server, _bait(target)).json()["error"]["message"]
    assert "never unpickles" in message
    _still_serving(each_server)


@pytest.mark.slow
def test_a_npy_body_sent_as_json_gets_415_naming_the_content_type(scoring_server):
    for content_type in ("application/json", "text/plain", "application/octet-stream"):
        reply = _post_npy(scoring_server, GOOD, content_type)
        assert reply.status == 415, (content_type, reply.body[:300])
        error = reply.json()["error"]
        assert error["code"] == "UnsupportedMediaType"
        assert "Content-Type: application/x-npy" in error["message"]
        assert repr(content_type) in error["message"]
    _still_serving(scoring_server)


@pytest.mark.slow
def test_content_type_parameters_and_case_are_accepted(scoring_server):
    for content_type in ("application/x-npy; charset=binary", "Application/X-NPY"):
        reply = _post_npy(scoring_server, GOOD, content_type)
        assert reply.status == 200, (content_type, reply.body[:300])
        assert len(reply.json()["predictions"]) == 2


@pytest.mark.slow
def test_invoke_sends_npy_bodies_end_to_end(scoring_server, mnist_test, tmp_path, capsys):
    """``invoke --format npy``: the same digits as the JSON request, 1,100 images in pieces."""
    import scripts.__main__ as entry

    images, labels = mnist_test
    path = tmp_path / "digits.npy"
    np.save(path, images[:1100])
    url = f"{scoring_server.server.url}/score"
    outputs = {}
    for fmt in ("npy", "json"):
        assert entry.main(["invoke", str(path), "--url", url, "--format", fmt]) == 0
        outputs[fmt] = capsys.readouterr().out
    assert outputs["npy"] == outputs["json"]
    assert "... 1080 more" in outputs["npy"]
    digits = [int(line.split(":")[1].split()[0]) for line in outputs["npy"].splitlines()[:20]]
    direct = scoring_server.client.score({"data": (images[:20] / 255).tolist()}).json()
    assert digits == direct["predictions"]
    assert (np.asarray(digits) == labels[:20]).mean() >= 0.85


@pytest.mark.parametrize("flags", [["--endpoint", "ep"], ["--no-code"]], ids=["endpoint", "code"])
def test_invoke_refuses_npy_where_it_cannot_be_sent(tmp_path, capsys, flags):
    import scripts.__main__ as entry

    path = tmp_path / "digits.json"
    path.write_text(json.dumps({"data": [[0.5] * 784]}))
    assert entry.main(["invoke", str(path), "--format", "npy", *flags]) == 2
    assert "--format npy cannot be used with" in capsys.readouterr().err
