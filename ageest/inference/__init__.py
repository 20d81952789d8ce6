"""A finished run on new photos: `ageest predict` (predict), ONNX export (export) and the face
crop of `predict --detect-faces` (face_crop)."""
