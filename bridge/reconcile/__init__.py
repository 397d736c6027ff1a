"""Comparing what the bridge delivered with what the Metriqo API reports: the registry view
(:mod:`bridge.reconcile.registry`, for ``devices``) and the proof of landed points
(:mod:`bridge.reconcile.landed`, for ``verify``). Pure: the commands fetch, these decide."""
