"""serving/code/score.py in-process: the 200 response it builds for a scored request.

(Everything else score.py does is tested over HTTP under the real azmlinfsrv:
test_serving_http.py, test_serving_limits.py, test_hostile_requests.py.)
"""

from __future__ import annotations


def test_a_scored_response_is_what_amlresponse_would_answer():
    """_JsonResponse skips AMLResponse's header juggling, not its headers: the same status,
    body and headers, x-ms-run-function-failed included (the server flips it on a failure)."""
    from azureml_inference_server_http.api.aml_response import AMLResponse

    from serving.code.score import _JsonResponse

    body = b'{"predictions":[7],"probabilities":[[0.1]]}'
    ours = _JsonResponse(body)
    theirs = AMLResponse(body, 200, {"Content-Type": "application/json"})
    assert isinstance(ours, AMLResponse)
    assert (
        (ours.status_code, ours.get_data())
        == (200, body)
        == (
            theirs.status_code,
            theirs.get_data(),
        )
    )
    expected = [
        ("Content-Length", "43"),
        ("Content-Type", "application/json"),
        ("x-ms-run-function-failed", "False"),
    ]
    assert sorted(ours.headers.items()) == sorted(theirs.headers.items()) == expected
