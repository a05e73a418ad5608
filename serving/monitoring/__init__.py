"""Operating the online endpoint (client side, not uploaded): Azure Monitor settings for each
deployment the rollout creates (``azure_monitor``) and the model-monitoring schedule over the
data collector's output (``schedule``, ``prediction-drift.yml``)."""
