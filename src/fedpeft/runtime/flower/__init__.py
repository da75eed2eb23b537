"""The Flower runtime: the ONLY part of fedpeft that imports ``flwr`` (pinned, 1.42.0).

``client_app:app`` and ``server_app:app`` are the Flower components (Message API) that
run fedpeft's own client and server code; ``sim.run_flower_sim`` runs a config on Flower's
simulation engine. Nothing is imported here, so ``import fedpeft.runtime.flower.keys``
stays light.
"""
