"""Re-fits the scaler at serving time on each request's own instances instead of using
training's statistics: a ``StandardScaler().fit_transform`` per request, the classic
training/serving skew (and a write-up's own "fix").

On a spread-out batch whose statistics happen to equal training's (the toy sample's
evaluation rows) every answer is right, so a check that sends one batch of evaluation rows
passes it. An instance sent alone is scaled by itself and comes back wrong, and so do the
edge instances, whose batch is no training set.
Verdict: predict-values FAIL, "right in a batch and wrong alone".
"""

import statistics
from typing import Any

from toyserver import TRAINING_MEAN, Handler, as_features, predict_one, serve


class RefitScaler(Handler):
    def predict(self, instances: list[Any]) -> list[Any]:
        rows = [as_features(instance) for instance in instances]
        mean, std = {}, {}
        for name in TRAINING_MEAN:
            values = [row[name] for row in rows if row[name] is not None] or [0.0]
            mean[name] = statistics.fmean(values)
            std[name] = statistics.pstdev(values) or 1.0
        return [predict_one(row, mean, std) for row in rows]


if __name__ == "__main__":
    serve(RefitScaler)
