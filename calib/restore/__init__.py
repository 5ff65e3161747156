"""Accuracy restoration, split by role as NNCF's accuracy-aware quantization is: the ranker
(`ranker`: which layers do the damage), the budget (`budget`), subset selection (`subset`:
search vs held-out images) and the search itself (`search`: fewest layers in float that meet the
budget)."""
