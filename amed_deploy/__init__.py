"""amed-deploy: turn an EDM-style diffusion checkpoint into a deployable ~5-NFE AMED sampler."""

__version__ = "0.1.0"
