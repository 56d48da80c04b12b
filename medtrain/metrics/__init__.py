"""Metrics, one family per file: `classification` (AUC, accuracy, sensitivity ... and decision
thresholds), `regression` (MAE, RMSE, R^2, kappa) and `segmentation` (Dice, IoU, HD95 per case).
Each is computed with scikit-learn, scipy or scikit-image and checked against them in the tests."""
