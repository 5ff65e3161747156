"""Statistics of evaluations, below the passes: pure numpy/scipy (paired intervals, the verdict,
class changes, SQNR), so that the pass layer and every report can use them."""
