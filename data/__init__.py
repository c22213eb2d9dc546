"""Framework-agnostic MovieLens data layer (numpy/pandas only, no torch or tensorflow).

Every release TFDS knows (100k, 1m, 20m, 25m, latest-small), selected by ``config.data.dataset``:

- :mod:`data.registry`  per release: official archive, size, SHA-256, folder, file layout, rules
- :mod:`data.download`  where the raw files come from (flag, env, cache, checksum-verified download)
- :mod:`data.movielens` TFDS-identical records (and the 100k reader); errors name file and line
- :mod:`data.readers`   the vectorised 1m ('::') and CSV (20m, 25m, latest-small) readers
- :mod:`data.features`  the fitted feature spec (Keras StringLookup/Discretization/Normalization/
  TextVectorization rules reproduced in numpy) and the encoded feature arrays
- :mod:`data.split`     the deterministic train/test split (random or temporal) and seeded
  per-epoch batch orders
- :mod:`data.synthetic` a seeded generator of data in each raw layout, at any size
  (:mod:`data.synthetic_realistic`: the realistic, vectorised one)
"""
