"""Framework-agnostic MovieLens 100k data layer (numpy/pandas only, no torch or tensorflow).

- :mod:`data.download`  where the raw files come from (flag, env, cache, checksum-verified download)
- :mod:`data.movielens` parse the GroupLens raw layout into TFDS-identical records
- :mod:`data.features`  the fitted feature spec (Keras StringLookup/Discretization/Normalization/
  TextVectorization rules reproduced in numpy) and the encoded feature arrays
- :mod:`data.split`     the deterministic train/test split and seeded per-epoch batch orders
- :mod:`data.synthetic` a seeded generator of small data in the same raw layout
"""
