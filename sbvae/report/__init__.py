"""sbvae-report: a sweep's tables (mean ± std over seeds, beside the paper's numbers) and figures.

``collect`` reads the sweep's manifest, run states and sbvae-eval JSON files, ``tables`` aggregates and
formats them beside the paper's numbers (``sbvae.paper``), ``probes`` encodes images with a run's model
(traversals, latent geometry) and ``figures`` draws everything with matplotlib.
"""
