"""Checkpoints: the project's own file format and everything built on it.

- :mod:`.format`: the :class:`~.format.Checkpoint` record, its ``.pt`` / ``.safetensors`` files
  (save, read, verify) and the model hash predictors are bound to;
- :mod:`.edm_pickle`: official EDM snapshot pickles, read without executing anything in them;
- :mod:`.load`: ``load_checkpoint``, which picks one of the two from a file's first bytes;
- :mod:`.build`: the network a checkpoint describes, with its weights loaded;
- :mod:`.describe`: the summary ``amed-deploy info`` prints.

Imports flow one way: format <- edm_pickle <- load; build and describe use format only.
"""
