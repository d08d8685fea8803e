"""AP at IoU thresholds (DSB 2018 / StarDist) on hand-made label images."""

import numpy as np
import pytest

from pasam_plugins.instance_metrics import match


def test_ap_counts_matches_misses_and_false_objects():
    true = np.zeros((20, 20), int)
    true[0:10, 0:10] = 1  # found well
    true[0:10, 10:20] = 2  # found at IoU 0.6
    true[12:18, 0:6] = 3  # missed
    pred = np.zeros((20, 20), int)
    pred[0:10, 0:10] = 7
    pred[0:10, 14:20] = 8  # 60 of 100 pixels: IoU 0.6
    pred[15:20, 15:20] = 9  # nothing there
    m50, m75 = match(true, pred, (0.5, 0.75))
    assert (m50.tp, m50.fp, m50.fn) == (2, 1, 1) and m50.ap == pytest.approx(2 / 4)
    assert (m75.tp, m75.fp, m75.fn) == (1, 2, 2) and m75.ap == pytest.approx(1 / 5)
    assert match(true, true, (0.5,))[0].ap == 1.0
    assert match(np.zeros((4, 4), int), np.zeros((4, 4), int), (0.5,))[0].ap == 1.0
    # one prediction covering two objects matches at most one of them
    merged = (true > 0).astype(int)
    assert match(true[:10], merged[:10], (0.3,))[0].tp == 1
