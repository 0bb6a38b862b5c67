"""The evaluation report's parts: calibration and figures."""
