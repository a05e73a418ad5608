"""The Pulumi program that provisions the Azure ML platform (``pulumi up`` at the root).

One ComponentResource per concern: ``workspace.WorkspaceCore`` (storage, key vault, monitoring,
registry, workspace), ``access.AccessControl`` (compute identity and RBAC),
``compute.ComputeClusters`` and ``network.PrivateNetwork``; ``program`` composes them from the
validated ``config``; ``outputs`` is the contract with the commands that read the stack;
``preflight`` checks quota and SKU availability before ``pulumi up``.
"""
