"""The classic recommenders AMFRec is measured against (same splits, candidates and evaluator)."""

BASELINES = ("popularity", "sasrec", "gru4rec")  # the names every command accepts
