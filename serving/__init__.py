"""Serving: the scoring code that managed online endpoints and ``azmlinfsrv`` run, and its specs.

- ``predictor.py``: the plain predictor class (model loading, request validation, scoring).
- ``score.py``: the ``init()``/``run()`` entry script, a thin adapter over the predictor.
- ``contract.py``: the published API (the JSON schemas ``/swagger.json`` serves).
- ``endpoint.yml``, ``deployment.yml`` (blue and green share it), ``mlflow-deployment.yml``
  (the no-code path), ``environment/``: the Azure ML specs.
- ``specs.py``, ``rollout.py``, ``local_server.py`` and ``gunicorn_local.py``: client-side
  helpers (spec loading and checks, safe rollout, the local server on loopback) for
  ``python -m scripts serve|deploy|invoke``; they are not uploaded (see ``.amlignore``).

Nothing here imports ``training/`` or ``scripts/``: the contract with training is the saved
``model/`` folder.
"""
