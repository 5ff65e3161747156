"""Accuracy restoration, split by role as NNCF's accuracy-aware quantization is: the ranker
(`ranker`: which layers do the damage), the scorer (`score`: what the ranker and the search read of
a model, a classifier's logits or every output of a detector, a segmenter, a generic model, and
the figures a budget is checked on), subset selection (`subset`: search vs held-out images) and
the search itself (`search`: fewest layers in float that meet the budget); the budget's rules are
statistics (`calib.stats.budget`)."""
