"""An entry script that does nothing: the floor azmlinfsrv itself sets (benchmarks only).

It takes the raw request as serving/code/score.py does (``@rawhttp``), reads the body (as any
scorer must: answering before the upload ends makes the server drop the connection under the
client) and answers a constant, so the time per request is the server's own: gunicorn, Flask,
azmlinfsrv's hooks and logging, and receiving the bytes.
"""

from azureml_inference_server_http.api.aml_request import rawhttp
from azureml_inference_server_http.api.aml_response import AMLResponse


def init():
    pass


@rawhttp
def run(request):
    request.get_data(cache=False)
    return AMLResponse({"predictions": [], "probabilities": []}, 200, json_str=True)
