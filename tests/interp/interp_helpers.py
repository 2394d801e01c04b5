"""A fixed set of four windows of a made-up feature, shared by the scorer and prompt tests."""
from saefw.interp.examples import Example, ExampleSets

# two windows where the feature fires (token " cat": 5.0, " sat": 1.0; " ran": 4.0, "A": 0.5), two where it never does
E1 = Example(("The", " cat", " sat"), (0.0, 5.0, 1.0), 0, 1, "quantile")
E2 = Example(("A", " dog", " ran"), (0.5, 0.0, 4.0), 1, 2, "top")
N1 = Example(("It", " is", " red"), (0.0, 0.0, 0.0), 2, 1, "random")
N2 = Example(("We", " go", " home"), (0.0, 0.0, 0.0), 3, 2, "random")
SETS = ExampleSets(explain=[], positives=[E1, E2], negatives=[N1, N2], simulation=[E1, N1])
THRESHOLD = 2.0  # marks " cat" (5.0) and " ran" (4.0), not " sat" (1.0) nor "A" (0.5)
