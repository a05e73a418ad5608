"""The one-time bootstrap stack for CI/CD (``infra/bootstrap/Pulumi.yaml``): the Pulumi state
backend and secrets key, and the GitHub Actions OIDC identities with their roles."""
