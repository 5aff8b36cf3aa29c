"""Applying a trained run to patients it never saw: predictions by the fold ensemble
(`persam_lib.predict.ensemble`) and the calibration of their probabilities
(`persam_lib.predict.calibration`)."""
