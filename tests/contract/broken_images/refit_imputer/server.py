"""Re-fits the imputer at serving time: a missing number is filled with the mean of the
request's other values of that feature (0 when it has none) instead of training's mean.

Instances without a missing value are right whatever the request (the penguins split had
none among the 10 rows checked before), and a batch of evaluation rows whose means equal
training's fills its missing values right: a check that sends one batch of evaluation rows
passes it. The edge instances with a feature missing come back wrong.
Verdict: predict-values FAIL, naming the "missing:x1" kind.
"""

import statistics
from typing import Any

from toyserver import TRAINING_MEAN, TRAINING_STD, Handler, as_features, predict_one, serve


class RefitImputer(Handler):
    def predict(self, instances: list[Any]) -> list[Any]:
        rows = [as_features(instance) for instance in instances]
        fill = {}
        for name in TRAINING_MEAN:
            values = [row[name] for row in rows if row[name] is not None]
            fill[name] = statistics.fmean(values) if values else 0.0
        filled = [{**row, **{n: fill[n] for n in fill if row[n] is None}} for row in rows]
        return [predict_one(row, TRAINING_MEAN, TRAINING_STD) for row in filled]


if __name__ == "__main__":
    serve(RefitImputer)
