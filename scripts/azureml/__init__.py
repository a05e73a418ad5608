"""Azure ML from the command line, one concern per module:

- ``workspace``: which workspace and cluster (the Pulumi stack's outputs, or flags), and an
  ``MLClient`` for it;
- ``errors``: Azure's errors that users hit, in one sentence that says what to do;
- ``jobs``: submitting a job spec (compute, the assets it needs, its code), following it and
  downloading its outputs;
- ``assets``: the data asset and the registered model.

Import what you use from the module that defines it (``from scripts.azureml.workspace import
connect``); this package exports nothing itself.
"""
