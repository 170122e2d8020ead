"""Pools and target tasks (``types``), their file formats (``formats``) and tokenization (``tokenize``),
the bundled sources (``bundled``) and the synthetic testbed (``synthetic``)."""
