"""The classic recommenders AMFRec is measured against (same splits, candidates and evaluator)."""

# The names every command accepts.
BASELINES = ("popularity", "sasrec", "gru4rec", "bert4rec", "sasrec_content", "content_knn")
# Those that read a feature folder (text, image vectors): `--features` is required for them.
CONTENT_BASELINES = ("sasrec_content", "content_knn")
